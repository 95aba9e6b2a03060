"""The 3D & measurements widget on stacks as they come: a voxel size that is unknown, taken from
another layer or typed out of range; layers that do not line up; the view that opens (oblique,
the EM hidden and shown again); the table after its layer is gone; measuring and deleting off
the main thread with progress."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from gui_helpers import wait_for

from napari_mitoseg._widgets._display import camera
from napari_mitoseg.synthetic import make_sample

pytestmark = pytest.mark.gui


@pytest.fixture
def viewer(make_napari_viewer):
    return make_napari_viewer()


def _open(viewer):
    _, w = viewer.window.add_plugin_dock_widget("napari-mitoseg", "Mitochondria 3D & measurements")
    return w


def _run(qtbot, w):
    return wait_for(qtbot, w, w.measured, w.run_button.click)[0]


def _same(a, b) -> bool:
    return getattr(a, "__wrapped__", a) is getattr(b, "__wrapped__", b)


def test_an_unknown_voxel_size_is_said_and_never_taken_from_the_previous_layer(viewer, qtbot):
    _, gt = make_sample(shape=(6, 96, 96), seed=31)
    viewer.add_labels(gt, name="a mitochondria", scale=(30.0, 9.3, 9.3))
    w = _open(viewer)
    w.labels_choice.set_layer("a mitochondria")
    assert w.voxel_size() == pytest.approx((30.0, 9.3, 9.3))
    other = np.zeros((4, 50, 50), np.uint8)
    other[1:3, 10:30, 10:30] = 1
    viewer.add_labels(other, name="b mitochondria")  # a file that records no voxel size
    w.labels_choice.set_layer("b mitochondria")
    assert w.voxel_size() != pytest.approx((30.0, 9.3, 9.3))
    assert "unknown" in w.voxel_note.text().lower()
    assert wait_for(qtbot, w, w.measured, w.run_button.click) == [None]
    assert "voxel size" in w.message.text().lower()
    w.voxel.set_value((40.0, 10.0, 10.0))  # typed
    rows = _run(qtbot, w)
    assert rows and rows[0].volume_um3 == pytest.approx(2 * 20 * 20 * 40 * 10 * 10 / 1e9)


def test_the_voxel_size_of_a_layer_that_belongs_with_it_is_taken_and_said(viewer, qtbot):
    image, gt = make_sample(shape=(6, 96, 96), seed=32)
    viewer.add_image(image, name="em", scale=(30.0, 5.0, 5.0), metadata={"voxel_size_nm": (30.0, 5.0, 5.0)})
    viewer.add_labels(gt, name="em ground truth")  # opened from a file without a pixel size
    w = _open(viewer)
    w.labels_choice.set_layer("em ground truth")
    assert w.voxel_size() == (30.0, 5.0, 5.0)
    note = w.voxel_note.text()
    assert "'em'" in note and "do not line up" in note


def test_voxel_boxes_refuse_absurd_sizes(viewer, qtbot):
    w = _open(viewer)
    for box in w.voxel.boxes:
        assert box.maximum() <= 10_000
        box.setValue(1_000_000)
        assert box.value() <= 10_000


def test_3d_view_is_oblique_hides_the_em_and_other_labels_and_restores_them(viewer, qtbot):
    image, gt = make_sample(shape=(6, 96, 96), seed=33)
    em = viewer.add_image(image, name="em")
    truth = viewer.add_labels(gt.copy(), name="em ground truth")
    viewer.add_labels(gt, name="em mitochondria", scale=(30.0, 8.0, 8.0))
    em.scale = truth.scale = (30.0, 8.0, 8.0)
    w = _open(viewer)
    w.labels_choice.set_layer("em mitochondria")
    rows = _run(qtbot, w)
    inst = viewer.layers["em mitochondria instances"]
    assert viewer.dims.ndisplay == 3
    assert camera(viewer).angles != pytest.approx((0.0, 0.0, 0.0))
    assert inst.visible and not em.visible and not truth.visible
    assert not viewer.layers["em mitochondria"].visible
    # a typed voxel size rescales the layers and fits the view again
    center = camera(viewer).center
    with qtbot.waitSignal(w.table_updated, timeout=30_000):  # measured again at the new size
        w.voxel.boxes[0].setValue(60.0)
    assert inst.scale[0] == 60.0
    assert camera(viewer).center != pytest.approx(center)
    assert w.rows[0].volume_um3 == pytest.approx(2 * rows[0].volume_um3, rel=1e-6)
    viewer.dims.ndisplay = 2
    assert em.visible and truth.visible


def test_the_table_goes_with_its_layer_and_the_source_shows_again(viewer, qtbot):
    _, gt = make_sample(shape=(6, 96, 96), seed=34)
    src = viewer.add_labels(gt, name="em mitochondria", scale=(30.0, 8.0, 8.0))
    w = _open(viewer)  # as a plugin: layers reach it through proxies
    w.labels_choice.set_layer("em mitochondria")
    _run(qtbot, w)
    assert not src.visible and w.table.rowCount() > 0
    w.table.selectRow(0)
    assert w.delete_button.isEnabled()
    viewer.layers.remove("em mitochondria instances")
    assert w.instances_layer is None and w.table.rowCount() == 0
    assert not w.delete_button.isEnabled() and not w.table.isEnabled()
    assert w.summary.text() == ""
    assert src.visible


def test_measure_and_delete_run_off_the_main_thread_with_progress(viewer, qtbot, monkeypatch):
    from napari_mitoseg import morphology, proofread

    on_main = []
    real_measure, real_delete = morphology.iter_objects, proofread.delete

    def iter_objects(*a, **k):
        on_main.append(("measure", threading.current_thread() is threading.main_thread()))
        yield from real_measure(*a, **k)

    def delete(*a, **k):
        on_main.append(("delete", threading.current_thread() is threading.main_thread()))
        return real_delete(*a, **k)

    monkeypatch.setattr(morphology, "iter_objects", iter_objects)
    monkeypatch.setattr(proofread, "delete", delete)
    _, gt = make_sample(shape=(6, 128, 128), seed=35)
    viewer.add_labels(gt, name="em mitochondria", scale=(30.0, 8.0, 8.0))
    w = _open(viewer)
    w.labels_choice.set_layer("em mitochondria")
    seen = []
    w.progress.valueChanged.connect(lambda v: seen.append(w.progress.text()))
    rows = _run(qtbot, w)
    assert any("object" in t for t in seen), seen
    first = rows[0].id
    w.table.select_ids([first])
    w._on_rows_selected([first])
    with qtbot.waitSignal(w.table_updated, timeout=30_000):
        w.delete_button.click()
    assert first not in [r.id for r in w.rows]
    assert {k for k, _ in on_main} == {"measure", "delete"}
    assert not any(main for _, main in on_main), on_main

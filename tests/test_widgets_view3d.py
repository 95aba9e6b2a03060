"""The "Mitochondria 3D & measurements" widget in a real (hidden) napari viewer under Xvfb:
voxel size, table, histogram, selection both ways, meshes, and delete / merge / split / undo."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from gui_helpers import wait_for
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QFileDialog

from napari_mitoseg.morphology import measure
from napari_mitoseg.postprocess import instances
from napari_mitoseg.synthetic import make_sample

pytestmark = pytest.mark.gui


@pytest.fixture
def viewer(make_napari_viewer):
    return make_napari_viewer()


def _widget(viewer):
    from napari_mitoseg._widgets.view3d import View3DWidget

    w = View3DWidget(viewer)
    viewer.window.add_dock_widget(w)
    return w


def _run(qtbot, w):
    return wait_for(qtbot, w, w.measured, w.run_button.click)[0]


def _table(w) -> dict[int, dict[str, str]]:
    """{id: {header: text}} of the widget's table."""
    t = w.table
    heads = [t.horizontalHeaderItem(j).text() for j in range(t.columnCount())]
    return {int(t.item(i, 0).text()): {h: t.item(i, j).text() for j, h in enumerate(heads)}
            for i in range(t.rowCount())}


def test_mask_is_split_measured_in_um_at_the_layer_voxel_size(viewer, qtbot, tmp_path, monkeypatch):

    _, gt = make_sample(shape=(8, 128, 128), seed=7)
    image = viewer.add_image(gt.astype(np.float32), name="em")
    viewer.add_labels(gt, name="em mitochondria", metadata={"voxel_size_nm": (40.0, 8.0, 8.0)})
    w = _widget(viewer)
    assert w.voxel_size() == (40.0, 8.0, 8.0)  # from the layer's metadata
    assert viewer.dims.ndisplay == 2
    rows = _run(qtbot, w)

    expected = measure(instances(gt, min_size=64), (40.0, 8.0, 8.0))
    assert len(expected) >= 2 and rows == expected
    assert viewer.dims.ndisplay == 3
    inst = viewer.layers["em mitochondria instances"]
    np.testing.assert_allclose(inst.scale, (40.0, 8.0, 8.0))  # true proportions in 3D
    np.testing.assert_allclose(image.scale, (40.0, 8.0, 8.0))  # the image stays aligned
    table = _table(w)
    assert sorted(table) == [r.id for r in expected]
    r0 = expected[0]
    assert float(table[r0.id]["volume µm³"]) == pytest.approx(r0.volume_um3, rel=1e-3)
    assert float(table[r0.id]["surface µm²"]) == pytest.approx(r0.surface_um2, rel=1e-3)
    assert f"{len(expected)} objects" in w.summary.text()

    # sorting by volume: largest first
    col = [w.table.horizontalHeaderItem(j).text() for j in range(w.table.columnCount())].index("volume µm³")
    w.table.sortByColumn(col, Qt.SortOrder.DescendingOrder)
    vols = [float(w.table.item(i, col).text()) for i in range(w.table.rowCount())]
    assert vols == sorted(vols, reverse=True) and vols[0] == pytest.approx(max(r.volume_um3 for r in expected),
                                                                           rel=1e-3)
    # histogram of the chosen column
    w.histogram.column.setCurrentIndex(w.histogram.column.findData("sphericity"))
    np.testing.assert_allclose(np.sort(w.histogram.values()), np.sort([r.sphericity for r in expected]))
    assert sum(p.get_height() for p in w.histogram.plot.axes.patches) == len(expected)

    # row -> object, and object -> row
    w.table.selectRow(w.table.row_of(r0.id))
    assert inst.selected_label == r0.id
    w.alone.setChecked(True)
    assert inst.show_selected_label
    other = expected[-1].id
    inst.selected_label = other  # as the picker / a click in the viewer does
    assert w.table.selected_ids() == [other]

    # CSV and meshes
    out = tmp_path / "m.csv"
    monkeypatch.setattr(QFileDialog, "getSaveFileName", lambda *a, **k: (str(out), ""))
    w.save_button.click()
    with open(out, newline="") as f:
        assert [int(r["id"]) for r in csv.DictReader(f)] == [r.id for r in expected]
    meshes = tmp_path / "meshes"
    monkeypatch.setattr(QFileDialog, "getExistingDirectory", lambda *a, **k: str(meshes))
    with qtbot.waitSignal(w.mesh_button.clicked, timeout=1000):
        w.mesh_button.click()
    qtbot.waitUntil(lambda: "Wrote" in w.message.text(), timeout=60_000)
    assert sorted(p.name for p in meshes.iterdir()) == [f"mito_{r.id:06d}.ply" for r in expected]


def test_docked_as_a_plugin_the_new_instances_layer_gets_the_voxel_size(viewer, qtbot):
    """napari gives a plugin's widget a proxy viewer whose layers are new objects at each access."""
    _, gt = make_sample(shape=(8, 128, 128), seed=7)
    viewer.add_labels(gt, name="em mitochondria", scale=(30.0, 8.0, 8.0))  # already at its voxel size
    _, w = viewer.window.add_plugin_dock_widget("napari-mitoseg", "Mitochondria 3D & measurements")
    w.labels_choice.set_layer("em mitochondria")
    assert w.voxel_size() == (30.0, 8.0, 8.0)
    _run(qtbot, w)
    np.testing.assert_allclose(viewer.layers["em mitochondria instances"].scale, (30.0, 8.0, 8.0))
    np.testing.assert_allclose(viewer.layers["em mitochondria"].scale, (30.0, 8.0, 8.0))


def test_a_typed_voxel_size_wins_over_the_layer_scale(viewer, qtbot):
    lab = np.zeros((4, 32, 32), np.int32)
    lab[1:3, 4:12, 4:20] = 3
    viewer.add_labels(lab, name="cells", scale=(50.0, 10.0, 10.0))
    w = _widget(viewer)
    assert w.voxel_size() == (50.0, 10.0, 10.0)  # from the scale
    w.voxel.boxes[0].setValue(20.0)  # the user types 20 nm slices
    viewer.add_labels(lab, name="other", scale=(99.0, 9.0, 9.0))  # a new layer does not undo it
    w.labels_choice.set_layer("cells")
    assert w.voxel_size() == (20.0, 10.0, 10.0)
    (row,) = _run(qtbot, w)
    assert "cells instances" not in viewer.layers  # ids already: measured in place
    assert row.id == 3 and row.volume_um3 == pytest.approx(2 * 8 * 16 * 20 * 10 * 10 / 1e9)
    np.testing.assert_allclose(viewer.layers["cells"].scale, (20.0, 10.0, 10.0))


def _two_balls_and_a_speck():
    zz, yy, xx = np.mgrid[:12, :40, :70]
    lab = np.zeros((12, 40, 70), np.int32)
    for cx in (20, 45):  # two balls touching at a neck: one 3D object
        lab[((zz - 6) * 2) ** 2 + (yy - 20) ** 2 + (xx - cx) ** 2 <= 14**2] = 1
    lab[2:5, 2:6, 62:68] = 1  # a small box of its own
    return lab


def test_delete_merge_split_each_one_undo_step_and_the_table_follows(viewer, qtbot):
    mask = _two_balls_and_a_speck()
    viewer.add_labels(mask, name="em mitochondria", scale=(20.0, 10.0, 10.0))
    w = _widget(viewer)
    w.min_size.setValue(10)
    _run(qtbot, w)
    layer = w.instances_layer
    assert sorted(_table(w)) == [1, 2]
    big = int(layer.data[6, 20, 20])
    small = 3 - big
    original = np.array(layer.data, copy=True)

    def undo_and_wait():
        with qtbot.waitSignal(w.table_updated, timeout=10_000):
            layer.undo()

    # split the two balls at their neck
    w.table.select_ids([big])
    w._on_rows_selected([big])
    assert w.split_button.isEnabled()
    with qtbot.waitSignal(w.table_updated, timeout=30_000):  # edited in a worker
        w.split_button.click()
    table = _table(w)
    assert sorted(table) == [1, 2, 3]
    new = 3
    assert layer.data[6, 20, 20] != layer.data[6, 20, 45]  # one ball each
    assert {int(layer.data[6, 20, 20]), int(layer.data[6, 20, 45])} == {big, new}
    assert float(table[big]["volume µm³"]) == pytest.approx(float(table[new]["volume µm³"]), rel=0.25)
    assert np.array_equal(layer.data > 0, original > 0)
    undo_and_wait()
    np.testing.assert_array_equal(layer.data, original)  # one Ctrl+Z undoes the whole split
    assert sorted(_table(w)) == [1, 2]

    # merge the small box into the big object
    w.table.select_ids([1, 2])
    w._on_rows_selected([1, 2])
    assert w.merge_button.isEnabled() and not w.split_button.isEnabled()
    with qtbot.waitSignal(w.table_updated, timeout=30_000):  # edited in a worker
        w.merge_button.click()
    table = _table(w)
    assert sorted(table) == [1]
    assert int(table[1]["voxels"]) == int(np.count_nonzero(original))
    assert set(np.unique(layer.data)) == {0, 1}
    undo_and_wait()
    np.testing.assert_array_equal(layer.data, original)
    assert sorted(_table(w)) == [1, 2]

    # delete the small one
    w.table.select_ids([small])
    w._on_rows_selected([small])
    with qtbot.waitSignal(w.table_updated, timeout=30_000):  # edited in a worker
        w.delete_button.click()
    assert sorted(_table(w)) == [big]
    assert not np.any(layer.data == small)
    assert "1 objects" in w.summary.text()
    undo_and_wait()
    np.testing.assert_array_equal(layer.data, original)
    assert sorted(_table(w)) == [1, 2]
    # redo comes back too
    with qtbot.waitSignal(w.table_updated, timeout=10_000):
        layer.redo()
    assert sorted(_table(w)) == [big]
    # the layer deleted: the table empties and the edits are off
    viewer.layers.remove(layer)
    assert w.table.rowCount() == 0 and w.instances_layer is None
    assert not w.delete_button.isEnabled() and not w.mesh_button.isEnabled()


def test_a_click_on_an_object_selects_its_row_in_2d_and_3d(viewer, qtbot):
    from napari.utils._test_utils import read_only_mouse_event
    from napari.utils.interactions import mouse_press_callbacks, mouse_release_callbacks

    lab = np.zeros((6, 30, 30), np.int32)
    lab[1:5, 2:10, 2:10] = 4
    lab[1:5, 15:25, 15:25] = 9
    viewer.add_labels(lab, name="objects", scale=(30.0, 8.0, 8.0))
    w = _widget(viewer)
    _run(qtbot, w)
    layer = w.instances_layer
    assert layer.mode == "pan_zoom"

    def click(position, **kw):
        for kind, run in (("mouse_press", mouse_press_callbacks), ("mouse_release", mouse_release_callbacks)):
            run(layer, read_only_mouse_event(type=kind, position=position, **kw))

    viewer.dims.ndisplay = 2
    viewer.dims.set_point(0, 2 * 30.0)
    click((2 * 30.0, 20 * 8.0, 20 * 8.0), dims_displayed=[1, 2])
    assert layer.selected_label == 9 and w.table.selected_ids() == [9]
    click((2 * 30.0, 1 * 8.0, 28 * 8.0), dims_displayed=[1, 2])  # background: nothing changes
    assert w.table.selected_ids() == [9]
    # 3D: a ray along z through object 4
    viewer.dims.ndisplay = 3
    click((0.0, 5 * 8.0, 5 * 8.0), dims_displayed=[0, 1, 2], view_direction=[1.0, 0.0, 0.0])
    assert layer.selected_label == 4 and w.table.selected_ids() == [4]
    # a drag (the camera turning) selects nothing
    mouse_press_callbacks(layer, read_only_mouse_event(type="mouse_press", position=(0.0, 160.0, 160.0),
                                                       dims_displayed=[0, 1, 2], view_direction=[1.0, 0, 0]))
    mouse_release_callbacks(layer, read_only_mouse_event(type="mouse_release", position=(0.0, 40.0, 60.0),
                                                         dims_displayed=[0, 1, 2], view_direction=[1.0, 0, 0]))
    assert w.table.selected_ids() == [4]

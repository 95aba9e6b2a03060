"""Which layers the widgets read and write, and what they say about them: "Segment again" never
writes into a layer the plugin did not make, a mask is refused as the image, the default model is
chosen, Evaluate does not score a layer against itself, units in nm and the scale bar, the four
steps as tabs, and honest messages (Add current, an identical re-run, the expected time)."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import textwrap

os.environ["HF_HUB_OFFLINE"] = "1"

from functools import partial

import numpy as np
import pytest
from gui_helpers import open_dock, run_segment, segment_dock, user_models, wait_for

from napari_mitoseg import model as model_mod
from napari_mitoseg.synthetic import make_sample

pytestmark = pytest.mark.gui

PLUGIN = "napari-mitoseg"
_wait = partial(wait_for, timeout=60_000)


@pytest.fixture
def models(tmp_path, monkeypatch, tiny_template):
    """"tiny" and "tiny-nm" (the same weights, 5 nm pixels) in the user's model folder."""
    return user_models(tmp_path, monkeypatch, tiny_template)


@pytest.fixture
def viewer(make_napari_viewer):
    return make_napari_viewer()


_open, _segment = open_dock, segment_dock


def _run(qtbot, w):
    return run_segment(qtbot, w)


def _small_finetune(ft, steps=2):
    from napari_mitoseg.training import FINETUNE

    ft.base_config = dataclasses.replace(FINETUNE, batch_size=2, tile=64)
    ft.steps.setValue(steps)


# --------------------------------------------------------------------------- data at risk


def test_segment_again_writes_only_into_the_layer_it_was_trained_on(viewer, qtbot, models):
    image, gt = make_sample(shape=(4, 96, 96), seed=21)
    viewer.add_image(image, name="em")
    truth = viewer.add_labels(gt.copy(), name="em ground truth")
    layer = _run(qtbot, _segment(viewer))
    layer.data[1] = gt[1]
    layer.refresh()
    ft = _open(viewer, "Fine-tune model")
    ft.find_button.click()
    assert ft.slices() == [1]
    _small_finetune(ft)
    tuned = _wait(qtbot, ft, ft.finetuned, ft.run_button.click)[0]
    assert tuned is not None

    # another layer chosen under "Corrected labels": the trained-on layer is still the target
    ft.labels_choice.set_layer("em ground truth")
    assert _wait(qtbot, ft, ft.resegmented, ft.segment_again_button.click)[0] is not None
    np.testing.assert_array_equal(truth.data, gt)
    assert layer.metadata["mitoseg_model"] == tuned.name
    np.testing.assert_array_equal(layer.data[1], gt[1])  # the corrected slice, kept
    assert "'em mitochondria'" in ft.message.text()

    # the trained-on layer deleted: a new layer, never the ground truth
    viewer.layers.remove("em mitochondria")
    ft.labels_choice.set_layer("em ground truth")
    new = _wait(qtbot, ft, ft.resegmented, ft.segment_again_button.click)[0]
    np.testing.assert_array_equal(truth.data, gt)
    assert new is not None and new.name == "em mitochondria"
    assert new.metadata["mitoseg_model"] == tuned.name


def test_segment_never_writes_into_a_layer_it_did_not_make(viewer, qtbot, models):
    image, gt = make_sample(shape=(3, 64, 64), seed=22)
    viewer.add_image(image, name="em")
    mine = viewer.add_labels(gt.copy(), name="em mitochondria")  # opened from a file, say
    seg = _segment(viewer)
    layer = _run(qtbot, seg)
    np.testing.assert_array_equal(mine.data, gt)
    assert layer.name != "em mitochondria" and layer.name.startswith("em mitochondria")
    assert f"'{layer.name}'" in seg.message.text()


def test_segment_refuses_a_mask_as_the_image(viewer, qtbot, models):
    image, gt = make_sample(shape=(3, 64, 64), seed=23)
    viewer.add_image(image, name="em")
    viewer.add_image(gt, name="truth")
    seg = _segment(viewer)
    seg.image_choice.set_layer("truth")
    assert _wait(qtbot, seg, seg.run_finished, seg.run_button.click) == [None]
    assert "'truth' looks like a mask" in seg.message.text()
    assert "truth mitochondria" not in viewer.layers


# --------------------------------------------------------------------------- messages


def test_add_current_without_a_labels_layer_says_what_to_do(viewer, qtbot, models):
    ft = _open(viewer, "Fine-tune model")
    ft.add_current_button.click()
    assert "outside" not in ft.slices_note.text()
    assert "Choose the labels layer" in ft.slices_note.text()
    assert ft.slices() == []


def test_an_identical_rerun_does_not_offer_an_undo(viewer, qtbot, models):
    image, _ = make_sample(shape=(3, 64, 64), seed=24)
    viewer.add_image(image, name="em")
    seg = _segment(viewer)
    layer = _run(qtbot, seg)
    before = layer.data.copy()
    assert _run(qtbot, seg) is not None
    np.testing.assert_array_equal(layer.data, before)
    assert "Undo" not in seg.message.text()
    assert "same as before" in seg.message.text()
    seg.threshold.setValue(0.2)  # a different result can be undone
    _run(qtbot, seg)
    if not np.array_equal(layer.data, before):
        assert "Undo" in seg.message.text()


def test_finetune_shows_the_expected_time_for_this_stack(viewer, qtbot, models):
    from napari_mitoseg.training import FINETUNE, FINETUNE_SECONDS

    image, gt = make_sample(shape=(3, 64, 64), seed=25)
    viewer.add_image(image, name="em")
    viewer.add_labels(gt, name="em mitochondria")
    ft = _open(viewer, "Fine-tune model")
    ft.add_slice(0)
    first = ft.expected_seconds(threads=2, crowded=1.0)
    assert first is not None and first > 0
    assert "expected" in ft.estimate.text().lower()
    ft.steps.setValue(FINETUNE.steps * 2)
    assert ft.expected_seconds(threads=2, crowded=1.0) == pytest.approx(2 * first, rel=0.35)
    ft.steps.setValue(FINETUNE.steps)
    one, two = ft.expected_seconds(threads=1, crowded=1.0), ft.expected_seconds(threads=2, crowded=1.0)
    assert one > two  # fewer threads, longer
    assert two == pytest.approx(FINETUNE_SECONDS, rel=0.6)  # the measured figure, 2 idle cores
    assert ft.expected_seconds(threads=1, crowded=4.0) == pytest.approx(4 * one)  # a busy machine


# --------------------------------------------------------------------------- choices


def test_segment_opens_with_the_default_model_marked(viewer, qtbot, models, monkeypatch):
    monkeypatch.setattr(model_mod, "DEFAULT_MODEL", "tiny-nm")
    seg = _open(viewer, "Segment mitochondria")
    assert seg.model_choice.name() == "tiny-nm"
    assert seg.model_choice.currentText() == "tiny-nm (default)"
    assert seg.model_choice.source().endswith("tiny-nm")
    assert seg.model_choice.select("tiny") and seg.model_choice.name() == "tiny"


def test_evaluate_does_not_open_with_one_mask_as_both_layers(viewer, qtbot):
    image, gt = make_sample(shape=(3, 64, 64), seed=26)
    viewer.add_image(image, name="em")
    viewer.add_labels(gt, name="truth")
    ev = _open(viewer, "Evaluate segmentation")
    assert ev.gt_choice.currentText() == "truth"
    assert ev.pred_choice.currentText() != "truth"
    assert "Segment" in ev.message.text()
    viewer.add_labels(gt.copy(), name="em mitochondria")
    assert ev.pred_choice.currentText() == "em mitochondria" and ev.gt_choice.currentText() == "truth"


def test_evaluate_draws_truth_as_contour_prediction_filled_and_shows_the_key(viewer, qtbot):
    _, gt = make_sample(shape=(3, 64, 64), seed=27)
    truth = viewer.add_labels(gt, name="em ground truth")
    pred = viewer.add_labels(np.roll(gt, 3, axis=2), name="em mitochondria")
    ev = _open(viewer, "Evaluate segmentation")
    _wait(qtbot, ev, ev.evaluated, ev.run_button.click)
    assert truth.contour > 0 and pred.contour == 0
    names = [ly.name for ly in viewer.layers]
    assert names.index("em ground truth") > names.index("em mitochondria")  # the outline on top
    assert not np.allclose(truth.colormap.map(np.array([1]))[0], pred.colormap.map(np.array([1]))[0])
    key = ev.error_key
    assert key.isVisibleTo(ev)
    assert "false positive" in key.text() and "false negative" in key.text()
    assert "magenta" in key.text().lower() and "cyan" in key.text().lower()


# --------------------------------------------------------------------------- units, scale bar


def test_layers_get_nm_units_and_the_scale_bar_shows(viewer, qtbot, models, tmp_path):
    import tifffile

    from napari_mitoseg._reader import read
    from napari_mitoseg._widgets._display import scale_bar

    image, _ = make_sample(shape=(3, 64, 64), seed=28)
    path = tmp_path / "em.tif"
    tifffile.imwrite(path, image, imagej=True, resolution=(1 / 0.010, 1 / 0.010),
                     metadata={"spacing": 0.030, "unit": "um"})
    ((data, meta, kind),) = read(str(path))
    assert tuple(meta["units"]) == ("nm", "nm", "nm")
    viewer.add_image(data, **meta)
    seg = _segment(viewer, "tiny-nm")
    layer = _run(qtbot, seg)
    assert tuple(str(u) for u in layer.units) == ("nanometer",) * 3
    assert scale_bar(viewer).visible


# --------------------------------------------------------------------------- tabs, start-up


def test_the_four_steps_as_tabs_show_one_step_whole_on_a_small_screen(make_napari_viewer, qtbot, models):
    from qtpy.QtWidgets import QApplication

    viewer = make_napari_viewer(show=True)
    image, gt = make_sample(shape=(4, 64, 64), seed=29)
    viewer.add_image(image, name="em")
    viewer.add_labels(gt, name="em mitochondria")
    tabs = _open(viewer, "Mitochondria: all steps")
    window = tabs.window()
    window.resize(1280, 800)
    QApplication.processEvents()
    assert [tabs.tabText(i) for i in range(tabs.count())] == ["Segment", "Evaluate", "Fine-tune", "3D"]
    for i in range(3):  # the 3D step holds a table that scrolls
        tabs.setCurrentIndex(i)
        w = tabs.widget(i)
        bar = w.scroll_area.verticalScrollBar()
        qtbot.waitUntil(lambda w=w: w.scroll_area.viewport().height() > 300, timeout=5_000)
        QApplication.processEvents()
        assert bar.maximum() == 0, (tabs.tabText(i), bar.maximum())  # nothing to scroll to


def test_opening_the_segment_dock_does_not_import_torch(tmp_path):
    """Torch loads in a worker thread, not while the dock opens (a 2-4 s stall of the viewer)."""
    script = textwrap.dedent("""
        import builtins, sys, threading, time
        import napari
        viewer = napari.Viewer(show=False)
        where = []
        real_import = builtins.__import__

        def spy(name, *a, **k):
            if name == "torch" and not where:
                where.append(threading.current_thread() is threading.main_thread())
            return real_import(name, *a, **k)

        builtins.__import__ = spy
        from napari_mitoseg._widgets.segment import SegmentWidget
        w = SegmentWidget(viewer)
        print("LOADING", w.message.text())
        from qtpy.QtWidgets import QApplication
        deadline = time.perf_counter() + 120
        while not w.ready and time.perf_counter() < deadline:
            QApplication.processEvents()
            time.sleep(0.02)
        print("READY", w.ready, "ON_MAIN", where, repr(w.message.text()))
        viewer.close()
    """)
    env = {**os.environ, "MITOSEG_MODEL_DIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith(("LOADING", "READY"))]
    assert len(lines) == 2, out.stdout + out.stderr
    assert "Loading PyTorch" in lines[0]
    assert lines[1] == "READY True ON_MAIN [False] ''", lines


def test_the_expected_time_follows_the_last_fine_tune_on_this_machine(viewer, qtbot, models):
    from napari_mitoseg._widgets._finetune_time import base_seconds, network_key, remember, speed_file
    from napari_mitoseg.training import FINETUNE, FINETUNE_SECONDS

    tiny = network_key(models / "tiny")
    assert tiny and base_seconds(tiny) == (FINETUNE_SECONDS, False)  # nothing measured here yet
    image, gt = make_sample(shape=(3, 64, 64), seed=25)
    viewer.add_image(image, name="em")
    viewer.add_labels(gt, name="em mitochondria")
    ft = _open(viewer, "Fine-tune model")
    ft.add_slice(0)
    ft.steps.setValue(4)
    reference = ft.expected_seconds(threads=2, crowded=1.0)
    assert "reference machine" in ft.estimate.text()
    result = _wait(qtbot, ft, ft.finetuned, ft.run_button.click)[0]
    assert result is not None
    # the run finished: the next estimate of the same run is the time it took, scaled as it ran
    seconds, measured = base_seconds(tiny)
    assert measured and speed_file().exists()
    assert network_key(ft.model_choice.source()) == tiny  # the new model: the same network
    expected = ft.expected_seconds(threads=2, crowded=1.0)
    assert expected != pytest.approx(reference)
    threads, crowded = ft._timing[4], ft._timing[5]
    assert ft.expected_seconds(threads=threads, crowded=crowded) == pytest.approx(result.seconds, rel=0.02)
    ft.show_estimate()
    assert "last fine-tune on this machine" in ft.estimate.text()
    # another network keeps the reference figure; a corrupt cache is ignored
    assert base_seconds("Unet/resnet18/other") == (FINETUNE_SECONDS, False)
    speed_file().write_text("{not json")
    assert base_seconds(tiny) == (FINETUNE_SECONDS, False)
    remember(tiny, FINETUNE, 2, 1024 * 1024, 2, 1.0, 120.0)
    assert base_seconds(tiny) == (120.0, True)


def test_more_corrected_slices_add_only_their_scoring_time():
    """The steps are fixed, so ten corrected slices take little longer than two (the corrected
    slices are only segmented before and after): the estimate must not grow with them."""
    from napari_mitoseg._widgets._finetune_time import expected_seconds
    from napari_mitoseg.training import FINETUNE

    two = expected_seconds(FINETUNE, 2, 1024 * 1024, threads=2)
    ten = expected_seconds(FINETUNE, 10, 1024 * 1024, threads=2)
    assert two < ten < 1.1 * two
    assert expected_seconds(FINETUNE, 2, 1024 * 1024, threads=2, crowded=2.0) == pytest.approx(2 * two)

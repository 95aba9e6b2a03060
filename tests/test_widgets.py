"""Each dock widget on its own, in a real (hidden) napari viewer under Xvfb, with a tiny
random-weight model saved in tmp_path."""

import dataclasses
import os
import shutil
import time

os.environ["HF_HUB_OFFLINE"] = "1"

from functools import partial

import numpy as np
import pytest
from gui_helpers import wait_for

from napari_mitoseg import model as model_mod
from napari_mitoseg.inference import MULTI_SCALE
from napari_mitoseg.synthetic import make_sample

pytestmark = pytest.mark.gui

MODEL_OUTPUT = "mitoseg_model_output"
TIMEOUT = 60_000


_wait = partial(wait_for, timeout=TIMEOUT)


@pytest.fixture
def models(tmp_path, monkeypatch, tiny_template):
    """MITOSEG_MODEL_DIR = tmp_path/models holding "tiny"; the shipped folder hidden (empty)."""
    root = tmp_path / "models"
    shutil.copytree(tiny_template, root / "tiny")
    monkeypatch.setenv("MITOSEG_MODEL_DIR", str(root))
    monkeypatch.setattr(model_mod, "SHIPPED_DIR", tmp_path / "no-shipped-models")
    return root


@pytest.fixture
def viewer(make_napari_viewer):
    return make_napari_viewer()


def _dock(viewer, widget):
    viewer.window.add_dock_widget(widget)
    return widget


def _segment_widget(viewer):
    from napari_mitoseg._widgets.segment import SegmentWidget

    w = _dock(viewer, SegmentWidget(viewer))
    assert w.model_choice.select("tiny")
    return w


def _run(qtbot, w):
    args = _wait(qtbot, w, w.run_finished, w.run_button.click)
    return args[0]


# --------------------------------------------------------------------------- segment


def test_segment_makes_labels_layer_with_image_geometry(viewer, qtbot, models):
    image, _ = make_sample(shape=(4, 128, 128))
    viewer.add_image(image, name="em", scale=(30.0, 5.0, 5.0), translate=(10.0, 0.0, 2.0))
    w = _segment_widget(viewer)
    assert "tiny random test model" in w.model_choice.itemData(w.model_choice.currentIndex(), 3)  # tooltip
    assert w.device_choice.itemText(0) == "auto" and "cpu" in [
        w.device_choice.itemText(i) for i in range(w.device_choice.count())]

    layer = _run(qtbot, w)

    assert layer is viewer.layers["em mitochondria"]
    assert layer.__class__.__name__ == "Labels"
    assert layer.data.shape == image.shape
    np.testing.assert_allclose(layer.scale, (30.0, 5.0, 5.0))
    np.testing.assert_allclose(layer.translate, (10.0, 0.0, 2.0))
    assert set(np.unique(layer.data)) <= {0, 1}
    out = layer.metadata[MODEL_OUTPUT]
    assert isinstance(out, np.ndarray) and out is not layer.data
    np.testing.assert_array_equal(out, layer.data)
    assert layer.metadata["mitoseg_model"] == "tiny"
    assert w.progress.value() == w.progress.maximum() == 4
    assert layer.editable


def test_segment_instances_gives_one_id_per_object(viewer, qtbot, models):
    from napari_mitoseg.api import get_model, segment
    from napari_mitoseg.inference import PredictOptions

    image, _ = make_sample(shape=(4, 128, 128))
    viewer.add_image(image, name="em")
    w = _segment_widget(viewer)
    w.instances.setChecked(True)
    w.threshold.setValue(0.45)
    layer = _run(qtbot, w)
    expected = segment(image, get_model(models / "tiny", "cpu"), PredictOptions(threshold=0.45),
                       instances=True)
    assert expected.max() >= 2  # several objects, so ids really are per object
    assert layer.data.dtype == np.int32
    np.testing.assert_array_equal(layer.data, expected)
    assert layer.metadata["mitoseg_instances"] is True


def test_segment_says_how_it_smoothed_along_z(viewer, qtbot, models):
    from napari_mitoseg.api import get_model, segment
    from napari_mitoseg.synthetic import make_isotropic

    iso = make_isotropic((12, 96, 112))
    viewer.add_image(iso, name="fib")
    w = _segment_widget(viewer)
    w.z_smooth.setChecked(True)
    layer = _run(qtbot, w)
    assert "Near-isotropic stack" in w.message.text() and "Ortho planes" in w.message.text()
    opts, tiny = w.options(), get_model(models / "tiny", "cpu")
    assert opts.z_smooth and opts.z_step is None  # estimated from the stack, as the API does
    expected = segment(iso, tiny, opts, instances=w.instances.isChecked())
    np.testing.assert_array_equal(layer.data, expected)  # the same wide smoothing as the API
    thick = segment(iso, tiny, dataclasses.replace(opts, z_step=4.0), instances=w.instances.isChecked())
    assert (thick != expected).any()

    separate = np.stack([make_sample((1, 96, 112), seed=10 + k)[0][0] for k in range(3)])
    viewer.add_image(separate, name="grids")
    w.image_choice.set_layer("grids")
    w.z_smooth.setChecked(True)
    _run(qtbot, w)
    assert "No two adjacent slices are neighbours" in w.message.text() and "Near-isotropic" not in w.message.text()


def test_segment_again_as_instances_undoes_to_the_mask_and_huge_changes_are_not_recorded(viewer, qtbot, models,
                                                                                         monkeypatch):
    from napari_mitoseg._widgets import _segment_run

    image, _ = make_sample(shape=(3, 96, 96), seed=2)
    viewer.add_image(image, name="em")
    w = _segment_widget(viewer)
    w.threshold.setValue(0.45)
    layer = _run(qtbot, w)
    mask = layer.data.copy()
    w.instances.setChecked(True)  # uint8 mask -> int32 ids: the undo step spans the dtype change
    _run(qtbot, w)
    assert w.current_run.undoable and layer.data.dtype == np.int32 and layer.data.max() >= 2
    layer.undo()
    np.testing.assert_array_equal(layer.data, mask)

    # beyond the limit the result still lands, without an undo step, and the widget does not
    # promise one
    monkeypatch.setattr(_segment_run, "UNDO_MAX_VOXELS", 10)
    w.instances.setChecked(False)
    w.threshold.setValue(0.3)
    _run(qtbot, w)
    assert not w.current_run.undoable and "Undo" not in w.message.text()
    np.testing.assert_array_equal(layer.data, layer.metadata["mitoseg_model_output"])


def test_segment_inverts_a_stack_with_reversed_contrast_and_says_so(viewer, qtbot, models):
    from test_core_stack_setup import SHIPPED

    from napari_mitoseg._widgets.segment import SegmentWidget
    from napari_mitoseg.api import get_model, segment

    shutil.copytree(SHIPPED, models / "shipped-copy")
    image, _ = make_sample((3, 192, 224), seed=2)
    viewer.add_image(255 - image, name="reversed")
    w = _dock(viewer, SegmentWidget(viewer))
    assert w.model_choice.select("shipped-copy")
    assert w.guess_contrast.isChecked() and not w.invert.isChecked()
    layer = _run(qtbot, w)
    assert "contrast looks reversed" in w.message.text() and w.invert.isChecked()
    assert layer.metadata["mitoseg_options"]["invert"] is True  # the fine-tune follows it
    opts = w.options()
    assert opts.invert
    expected = segment(255 - image, get_model(models / "shipped-copy", "cpu"), opts,
                       instances=w.instances.isChecked())
    np.testing.assert_array_equal(layer.data, expected)
    assert (layer.data > 0).mean() > 0.02

    w.invert.setChecked(False)
    w.guess_contrast.setChecked(False)  # take the stack as it is
    _run(qtbot, w)
    assert "looks reversed" not in w.message.text() and not w.invert.isChecked()
    assert layer.metadata["mitoseg_options"]["invert"] is False


def test_segment_z_smoothing_follows_model_card(viewer, qtbot, models):
    import json

    from napari_mitoseg.api import get_model, segment
    from napari_mitoseg.inference import PredictOptions

    shutil.copytree(models / "tiny", models / "tiny-z")
    cfg = json.loads((models / "tiny-z" / "config.json").read_text())
    cfg["info"]["default_z_smooth"] = True
    (models / "tiny-z" / "config.json").write_text(json.dumps(cfg))
    image, _ = make_sample(shape=(4, 128, 128), seed=9)
    viewer.add_image(image, name="em")
    w = _segment_widget(viewer)
    assert not w.z_smooth.isChecked()
    assert w.model_choice.select("tiny-z") and w.z_smooth.isChecked()
    w.threshold.setValue(0.42)
    layer = _run(qtbot, w)
    tiny_z = get_model(models / "tiny-z", "cpu")
    expected = segment(image, tiny_z, PredictOptions(threshold=0.42, z_smooth=True))
    unsmoothed = segment(image, tiny_z, PredictOptions(threshold=0.42, z_smooth=False))
    assert not np.array_equal(expected, unsmoothed)
    np.testing.assert_array_equal(layer.data, expected)
    assert w.model_choice.select("tiny") and not w.z_smooth.isChecked()


def test_segment_single_2d_slice(viewer, qtbot, models):
    image, _ = make_sample(shape=(1, 96, 96), seed=8)
    viewer.add_image(image[0], name="slice")
    w = _segment_widget(viewer)
    layer = _run(qtbot, w)
    assert layer.name == "slice mitochondria" and layer.data.shape == (96, 96)
    painted = layer.data.copy()
    painted[10:20, 10:20] = 5
    layer.data = painted.copy()
    w.threshold.setValue(0.3)
    _run(qtbot, w)
    np.testing.assert_array_equal(layer.data, painted)  # the only slice was painted: kept
    assert not np.array_equal(layer.metadata[MODEL_OUTPUT], painted)


def test_segment_cancel_leaves_existing_layer_untouched(viewer, qtbot, models):
    image, _ = make_sample(shape=(12, 256, 256), seed=3)
    viewer.add_image(image, name="em")
    w = _segment_widget(viewer)

    # 1) cancelling the first run removes the half-made layer again
    w.start()
    w.current_run.progress.connect(lambda done, total: w.cancel())
    _wait(qtbot, w, w.run_finished)
    assert "em mitochondria" not in viewer.layers
    assert "Cancelled" in w.message.text()

    # 2) a full run, then a re-run with another threshold cancelled after its first slice
    layer = _run(qtbot, w)
    original = layer.data
    before = original.copy()
    before_meta = layer.metadata[MODEL_OUTPUT]
    w.threshold.setValue(0.05)
    seen = []

    def on_progress(done, total):
        seen.append(done)
        if len(seen) == 1:
            w.cancel()

    previews = []
    run = w.start()
    run.progress.connect(on_progress)
    run.progress.connect(lambda *a: previews.append(layer.data is not original))
    args = _wait(qtbot, w, w.run_finished)
    assert previews and all(previews)  # the preview writes into a fresh buffer
    assert args == [None]
    assert 1 <= len(seen) <= 3 and max(seen) < 12  # stopped within a slice or two, not at the end
    assert viewer.layers["em mitochondria"] is layer
    assert layer.data is original
    np.testing.assert_array_equal(layer.data, before)
    assert layer.metadata[MODEL_OUTPUT] is before_meta
    assert layer.editable
    assert w.run_button.isEnabled() and not w.cancel_button.isEnabled()


def test_segment_cancel_during_postprocessing_restores(viewer, qtbot, models, monkeypatch):
    """Cancel pressed after the last slice, while objects are being separated: the worker then
    reports neither a result nor an abort, and the layer must still come back untouched."""
    from napari_mitoseg import postprocess

    real = postprocess.instances
    runs = []

    def instances_with_cancel(mask, min_size=64):
        runs[-1].cancel()  # what the Cancel button does, at this very moment
        return real(mask, min_size=min_size)

    monkeypatch.setattr(postprocess, "instances", instances_with_cancel)
    image, _ = make_sample(shape=(3, 96, 96), seed=10)
    viewer.add_image(image, name="em")
    w = _segment_widget(viewer)
    layer = _run(qtbot, w)
    original, before = layer.data, layer.data.copy()
    w.instances.setChecked(True)
    args = _wait(qtbot, w, w.run_finished, lambda: runs.append(w.start()))
    assert args == [None] and "Cancelled" in w.message.text()
    assert not runs[-1].running
    assert layer.data is original
    np.testing.assert_array_equal(layer.data, before)
    assert layer.editable and layer.metadata["mitoseg_instances"] is False
    assert w.run_button.isEnabled() and not w.cancel_button.isEnabled()


def test_segment_rerun_keeps_painted_slices_exactly(viewer, qtbot, models):
    image, _ = make_sample(shape=(5, 128, 128), seed=1)
    viewer.add_image(image, name="em")
    w = _segment_widget(viewer)
    layer = _run(qtbot, w)

    # paint on slice 2 the way the brush does (layer.paint) and erase a patch on slice 4
    layer.selected_label = 7
    layer.paint((2, 64, 64), 7, refresh=True)
    layer.data[4, :40, :40] = 0
    layer.data[4, 50:60, 50:60] = 3
    layer.refresh()
    painted = layer.data.copy()

    w.threshold.setValue(0.2)  # the model output changes on every slice
    layer2 = _run(qtbot, w)

    assert layer2 is layer
    assert "[2, 4]" in w.message.text()
    new_out = layer.metadata[MODEL_OUTPUT]
    for z in (2, 4):
        np.testing.assert_array_equal(layer.data[z], painted[z])
    for z in (0, 1, 3):
        np.testing.assert_array_equal(layer.data[z], new_out[z])
    assert (layer.data[2] == 7).any() and (layer.data[4, 50:60, 50:60] == 3).all()

    # the re-run is one undo step: Ctrl+Z brings back what the layer held, redo the new result
    assert w.current_run.undoable and "Undo" in w.message.text()
    result = layer.data.copy()
    layer.undo()
    np.testing.assert_array_equal(layer.data, painted)
    # ... and the earlier model output there is not mistaken for corrections
    from napari_mitoseg._widgets._common import painted_slices

    assert painted_slices(layer) == [2, 4]
    layer.redo()
    np.testing.assert_array_equal(layer.data, result)
    assert painted_slices(layer) == [2, 4]

    # a plain re-run without painting replaces everything
    layer.data[...] = 0
    layer.metadata[MODEL_OUTPUT] = layer.data.copy()
    _run(qtbot, w)
    np.testing.assert_array_equal(layer.data, layer.metadata[MODEL_OUTPUT])


def test_segment_keeps_event_loop_responsive(viewer, qtbot, models):
    from qtpy.QtCore import QTimer

    image, _ = make_sample(shape=(8, 256, 256), seed=2)
    viewer.add_image(image, name="em")
    w = _segment_widget(viewer)
    ticks: list[float] = []
    timer = QTimer()
    timer.setInterval(10)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start()
    try:
        layer = _run(qtbot, w)
    finally:
        timer.stop()
    assert layer is not None
    assert len(ticks) > 10, "the event loop did not run during segmentation"
    gaps = np.diff(ticks)
    assert gaps.max() < 0.2, f"event loop blocked for {gaps.max() * 1000:.0f} ms"


def test_segment_without_model_says_so(viewer, qtbot, tmp_path, monkeypatch, tiny_template):
    from napari_mitoseg._widgets.segment import SegmentWidget

    monkeypatch.setenv("MITOSEG_MODEL_DIR", str(tmp_path / "models"))
    monkeypatch.setattr(model_mod, "SHIPPED_DIR", tmp_path / "no-shipped-models")
    image, _ = make_sample(shape=(2, 64, 64))
    viewer.add_image(image, name="em")
    w = _dock(viewer, SegmentWidget(viewer))
    assert not w.run_button.isEnabled()
    assert "No model is installed" in w.model_message.text()
    assert w.start() is None and "em mitochondria" not in viewer.layers

    shutil.copytree(tiny_template, tmp_path / "models" / "tiny")
    w.refresh_models_button.click()
    assert w.run_button.isEnabled() and w.model_choice.source().endswith("tiny")
    assert not w.model_message.isVisibleTo(w)


# --------------------------------------------------------------------------- evaluate


def _click_bar(qtbot, plot, z, y=0.02):
    from qtpy.QtCore import QPoint, Qt

    canvas = plot.canvas
    canvas.draw()
    x_disp, y_disp = plot.axes.transData.transform((z, y))
    ratio = canvas.devicePixelRatioF() or 1.0
    pos = QPoint(int(round(x_disp / ratio)), int(round(canvas.height() - y_disp / ratio)))
    qtbot.mouseClick(canvas, Qt.MouseButton.LeftButton, pos=pos)


def test_evaluate_scores_error_layer_and_slice_jump(viewer, qtbot):
    from napari_mitoseg._widgets.evaluate import EvaluateWidget
    from napari_mitoseg.metrics import evaluate

    _, gt = make_sample(shape=(6, 96, 96), seed=4)
    pred = gt.copy()
    pred[1] = 0  # missed slice
    pred[3, :20, :20] = 1  # false positives
    viewer.add_labels(gt, name="truth ground truth", scale=(2.0, 1.0, 1.0))
    viewer.add_labels(pred, name="em mitochondria", scale=(2.0, 1.0, 1.0))
    w = _dock(viewer, EvaluateWidget(viewer))
    assert w.pred_choice.layer().name == "em mitochondria"
    assert w.gt_choice.layer().name == "truth ground truth"

    args = _wait(qtbot, w, w.evaluated, w.run_button.click)
    report = args[0]
    expected = evaluate(pred, gt)
    assert report.overall == expected.overall
    for key in ("iou", "dice", "precision", "recall"):
        assert w.values[key].text() == f"{getattr(expected.overall, key):.3f}"
    assert 0 < expected.overall.iou < 1

    errors = viewer.layers["em mitochondria errors"]
    p, g = pred > 0, gt > 0
    np.testing.assert_array_equal(errors.data == 1, p & ~g)
    np.testing.assert_array_equal(errors.data == 2, ~p & g)
    c1, c2 = errors.colormap.map(np.array([1, 2]))
    assert not np.allclose(c1, c2) and c1[3] > 0 and c2[3] > 0
    np.testing.assert_allclose(errors.scale, (2.0, 1.0, 1.0))

    bars = w.plot.axes.patches
    assert len(bars) == 6
    np.testing.assert_allclose([b.get_height() for b in bars], [s.iou for s in expected.per_slice])

    viewer.dims.set_current_step(0, 0)
    _click_bar(qtbot, w.plot, 3)
    assert viewer.dims.current_step[0] == 3
    _click_bar(qtbot, w.plot, 1)
    assert viewer.dims.current_step[0] == 1


def test_evaluate_reports_shape_mismatch_and_empty_truth(viewer, qtbot, monkeypatch):
    from napari_mitoseg._widgets import evaluate as ev

    shown = []
    monkeypatch.setattr(ev, "show_error", shown.append)
    monkeypatch.setattr(ev, "show_warning", shown.append)
    viewer.add_labels(np.ones((3, 32, 32), np.uint8), name="em mitochondria")
    viewer.add_labels(np.ones((3, 32, 40), np.uint8), name="other ground truth")
    w = _dock(viewer, ev.EvaluateWidget(viewer))
    args = _wait(qtbot, w, w.evaluated, w.run_button.click)
    assert args == [None]
    assert "Shape mismatch" in w.message.text() and "(3, 32, 40)" in w.message.text()
    assert shown and "Shape mismatch" in shown[-1]
    assert "em mitochondria errors" not in viewer.layers
    assert w.values["iou"].text() == "-"

    viewer.add_image(np.zeros((3, 32, 32), np.float32), name="blank ground truth")
    w.gt_choice.set_layer("blank ground truth")
    _wait(qtbot, w, w.evaluated, w.run_button.click)
    assert "ground truth is empty" in w.message.text()
    assert w.values["iou"].text() == "0.000"


# --------------------------------------------------------------------------- fine-tune


def test_finetune_finds_corrections_trains_saves_and_segments_again(viewer, qtbot, models):
    from napari_mitoseg._widgets.finetune import FinetuneWidget
    from napari_mitoseg.model import load_model, read_config
    from napari_mitoseg.training import FINETUNE

    image, gt = make_sample(shape=(4, 128, 128), seed=5)
    viewer.add_image(image, name="em")
    seg = _segment_widget(viewer)
    seg.tta.setChecked(True)
    seg.multi_scale.setChecked(True)
    seg.pixel_ratio.setValue(1.5)  # the user's pixels are 1.5x the model's
    seg.invert.setChecked(True)  # ... and their contrast is reversed
    layer = _run(qtbot, seg)
    assert layer.metadata["mitoseg_options"]["tta"] is True
    assert tuple(layer.metadata["mitoseg_options"]["scales"]) == MULTI_SCALE
    assert layer.metadata["mitoseg_options"]["pixel_ratio"] == 1.5

    ft = _dock(viewer, FinetuneWidget(viewer))
    assert ft.labels_choice.layer() is layer and ft.image_choice.layer().name == "em"
    assert ft.pixel_ratio.value() == 1.5 and ft.invert.isChecked()  # from the layer's segmentation
    assert ft.steps.value() == FINETUNE.steps
    assert ft.slices() == []
    layer.data[1] = gt[1]  # the user corrects slice 1
    layer.refresh()
    ft.find_button.click()
    assert ft.slices() == [1]

    ft.slice_spin.setValue(3)
    ft.add_button.click()
    assert ft.slices() == [1, 3]
    ft.slice_list.item(1).setSelected(True)
    ft.remove_button.click()
    assert ft.slices() == [1]

    assert ft.plot.axes.get_xlim() == (0, FINETUNE.steps)  # before a run: the run's steps, not -0.04..0.04
    assert ft.plot.axes.get_ylim() == (0, 1)
    ft.base_config = dataclasses.replace(FINETUNE, batch_size=2, tile=64)
    ft.steps.setValue(3)
    args = _wait(qtbot, ft, ft.finetuned, ft.run_button.click)
    result = args[0]
    assert result is not None and result.name == "tiny-ft1"
    assert result.path == models / "tiny-ft1"
    assert (models / "tiny-ft1" / "model.safetensors").is_file()
    _, info = read_config(result.path)
    assert info["slices"] == [1] and info["steps"] == 3 and info["base_model"] == "tiny"
    assert info["pixel_ratio"] == 1.5 and info["invert"] is True
    assert len(ft.losses) == 3 and all(np.isfinite(ft.losses))
    assert len(ft._loss_line.get_xdata()) == 3
    assert ft.plot.axes.get_xlim() == (0, 3)
    assert ft.progress.value() == 3
    assert "before" in ft.result_label.text() and "tiny-ft1" in ft.result_label.text()
    assert ft.model_choice.currentText() == "tiny-ft1"
    assert ft.segment_again_button.isEnabled()

    corrected = layer.data[1].copy()
    args = _wait(qtbot, ft, ft.resegmented, ft.segment_again_button.click)
    assert args[0] is layer
    np.testing.assert_array_equal(layer.data[1], corrected)
    out = layer.metadata[MODEL_OUTPUT]
    for z in (0, 2, 3):
        np.testing.assert_array_equal(layer.data[z], out[z])
    assert layer.metadata["mitoseg_model"] == "tiny-ft1"
    assert ft.segment_run.options.tta  # segmented again with the settings the layer was made with
    assert ft.segment_run.options.scales == MULTI_SCALE
    # ... except the pixel ratio, which the new model holds in its spec
    assert ft.segment_run.options.pixel_ratio == 1.0 and not ft.segment_run.options.invert
    tuned = load_model(result.path, device="cpu")
    assert tuned.spec.input_scale == 1.5 and tuned.spec.invert
    # the next fine-tune starts from the new model, which holds both already
    assert ft.pixel_ratio.value() == 1.0 and not ft.invert.isChecked()
    # ... and choosing it in the Segment widget sets both back for it
    seg.model_choice.refresh()
    seg.model_choice.select("tiny-ft1")
    assert seg.pixel_ratio.value() == 1.0 and not seg.invert.isChecked()
    assert ft.slices() == [1]  # still found as corrected against the new model's output

    # painting with the brush updates the list by itself, shortly after the stroke
    layer.selected_label = 9
    layer.paint((3, 30, 30), 9, refresh=True)
    qtbot.waitUntil(lambda: ft.slices() == [1, 3], timeout=5000)

    # while a segmentation writes into the layer (it is locked), its half-new slices are not
    # taken for corrections
    layer.editable = False
    layer.data[2] = 1 - layer.data[2]
    assert ft.find_corrected_slices() == [1, 3]
    assert "being segmented" in ft.slices_note.text()


def test_finetune_cancel_saves_nothing(viewer, qtbot, models, monkeypatch):
    from napari_mitoseg._widgets.finetune import FinetuneWidget
    from napari_mitoseg.training import FINETUNE

    image, gt = make_sample(shape=(3, 96, 96), seed=6)
    viewer.add_image(image, name="em")
    viewer.add_labels(gt, name="em mitochondria")  # no recorded model output: slices by hand
    ft = _dock(viewer, FinetuneWidget(viewer))
    assert "no recorded model output" in ft.slices_note.text()
    ft.base_config = dataclasses.replace(FINETUNE, batch_size=2, tile=64)
    ft.steps.setValue(500)
    ft.start()  # no slices yet
    assert "No training slice" in ft.message.text()
    ft.slice_spin.setValue(0)
    ft.add_button.click()
    worker = ft.start()
    worker.yielded.connect(lambda p: ft.cancel())
    args = _wait(qtbot, ft, ft.finetuned)
    assert args == [None]
    assert "no model was saved" in ft.message.text()
    assert ft.progress.value() < 500
    assert sorted(p.name for p in models.iterdir()) == ["tiny"]
    assert not ft.segment_again_button.isEnabled() and ft.run_button.isEnabled()

    # a Cancel arriving while the new model is being saved still reports the saved model
    from napari_mitoseg import finetune

    real_save = finetune.save_model

    def save_with_cancel(*a, **k):
        ft.cancel()  # what the Cancel button does, at this very moment
        return real_save(*a, **k)

    monkeypatch.setattr(finetune, "save_model", save_with_cancel)
    ft.steps.setValue(2)
    args = _wait(qtbot, ft, ft.finetuned, ft.run_button.click)
    assert args[0] is not None and args[0].name == "tiny-ft1"
    assert (models / "tiny-ft1" / "model.safetensors").is_file()
    assert "tiny-ft1" in ft.result_label.text() and ft.segment_again_button.isEnabled()


def test_closing_the_dock_while_segmenting_still_delivers_the_result(viewer, qtbot, models):
    """napari's close button takes the widget out of its dock; the run goes on and its labels
    layer still arrives, with no error from the closed widget."""
    image, _ = make_sample(shape=(6, 128, 128))
    viewer.add_image(image, name="em")
    w = _segment_widget(viewer)
    with qtbot.waitSignal(w.run_finished, timeout=60000) as blocker:
        run = w.start()
        assert run is not None and run.running
        viewer.window.remove_dock_widget(w)
    layer = blocker.args[0]
    assert layer is viewer.layers["em mitochondria"]
    assert layer.data.shape == image.shape

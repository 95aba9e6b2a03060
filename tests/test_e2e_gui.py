"""One biologist's session, clicked through the real widgets opened from the Plugins menu:
load the sample, segment, score, paint a correction, fine-tune, segment again, look in 3D,
and cancel a run without losing anything."""

import dataclasses
import os

os.environ["HF_HUB_OFFLINE"] = "1"

from functools import partial

import numpy as np
import pytest
from gui_helpers import wait_for

from napari_mitoseg import model as model_mod
from napari_mitoseg.model import ModelSpec, build_model, save_model

pytestmark = pytest.mark.gui

PLUGIN = "napari-mitoseg"
MODEL_OUTPUT = "mitoseg_model_output"
TIMEOUT = 120_000


_wait = partial(wait_for, timeout=TIMEOUT)


@pytest.fixture
def models(tmp_path, monkeypatch):
    import torch

    torch.manual_seed(0)
    spec = ModelSpec(encoder="resnet18", encoder_depth=3, decoder_channels=(32, 16, 8), tile_size=256,
                     tile_overlap=32)
    root = tmp_path / "models"
    save_model(build_model(spec), spec, root / "tiny", info={"summary": "tiny random test model"})
    monkeypatch.setenv("MITOSEG_MODEL_DIR", str(root))
    # hide the shipped model (if it is installed) so the run is small and deterministic
    monkeypatch.setattr(model_mod, "SHIPPED_DIR", tmp_path / "no-shipped-models")
    return root


def _open(viewer, title):
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, title)
    return widget


def _same(a, b) -> bool:
    """Layer identity through napari's public-only proxies."""
    return getattr(a, "__wrapped__", a) is getattr(b, "__wrapped__", b)


@pytest.mark.filterwarnings("error:Private attribute access")
def test_segment_score_correct_finetune_resegment_3d(make_napari_viewer, qtbot, models):
    from napari_mitoseg.training import FINETUNE

    viewer = make_napari_viewer(show=True)

    # load the sample data from File > Open Sample
    viewer.open_sample(PLUGIN, "em_sample")
    image = viewer.layers["EM sample"]
    truth = viewer.layers["EM sample ground truth"]
    assert image.data.shape == truth.data.shape == (16, 512, 512)

    # segment
    seg = _open(viewer, "Segment mitochondria")
    assert seg.image_choice.currentText() == "EM sample"
    assert seg.model_choice.select("tiny")
    args = _wait(qtbot, seg, seg.run_finished, seg.run_button.click)
    result = viewer.layers["EM sample mitochondria"]
    assert _same(args[0], result)
    assert result.data.shape == image.data.shape
    assert seg.progress.value() == 16

    # evaluate against the ground truth
    ev = _open(viewer, "Evaluate segmentation")
    assert ev.pred_choice.currentText() == "EM sample mitochondria"
    assert ev.gt_choice.currentText() == "EM sample ground truth"
    args = _wait(qtbot, ev, ev.evaluated, ev.run_button.click)
    assert args[0] is not None
    iou = float(ev.values["iou"].text())
    assert 0.0 <= iou <= 1.0 and ev.values["iou"].text() != "-"
    assert "EM sample mitochondria errors" in viewer.layers

    # paint a correction on slice 5: copy the truth in a box and brush one stroke
    z = 5
    viewer.dims.set_current_step(0, z)
    result.data[z, 100:300, 100:300] = truth.data[z, 100:300, 100:300]
    result.selected_label = 1
    result.paint((z, 400, 400), 1, refresh=True)
    result.refresh()
    corrected = result.data[z].copy()

    # fine-tune on it (a few steps, small crops)
    ft = _open(viewer, "Fine-tune model")
    assert ft.labels_choice.currentText() == "EM sample mitochondria"
    ft.find_button.click()
    assert ft.slices() == [z]
    ft.base_config = dataclasses.replace(FINETUNE, batch_size=2, tile=64)
    ft.steps.setValue(3)
    args = _wait(qtbot, ft, ft.finetuned, ft.run_button.click)
    tuned = args[0]
    assert tuned is not None and tuned.name == "tiny-ft1"
    assert (models / "tiny-ft1" / "model.safetensors").is_file()
    assert "tiny-ft1" in ft.result_label.text()

    # segment again with the new model: the corrected slice is kept exactly
    _wait(qtbot, ft, ft.resegmented, ft.segment_again_button.click)
    assert result.metadata["mitoseg_model"] == "tiny-ft1"
    np.testing.assert_array_equal(result.data[z], corrected)
    new_output = result.metadata[MODEL_OUTPUT]
    others = [i for i in range(16) if i != z]
    np.testing.assert_array_equal(result.data[others], new_output[others])
    assert not np.array_equal(new_output[z], corrected)

    # 3D view and measurements
    v3 = _open(viewer, "Mitochondria 3D & measurements")
    v3.labels_choice.set_layer("EM sample mitochondria")
    assert not v3.voxel.known()  # the sample records no voxel size: measuring waits for one
    v3.voxel.set_value((30.0, 8.0, 8.0))
    args = _wait(qtbot, v3, v3.measured, v3.run_button.click)
    rows = args[0]
    assert rows is not None, f"measuring failed: {v3.message.text()!r}"
    assert viewer.dims.ndisplay == 3, f"still in 2D after measuring; the widget says {v3.message.text()!r}"
    assert v3.table.rowCount() == len(rows)
    instances = viewer.layers["EM sample mitochondria instances"]
    assert instances.data.max() == len(rows)
    shot = viewer.screenshot(canvas_only=True, flash=False)
    assert shot.ndim == 3 and shot.shape[2] in (3, 4)
    rgb = shot[..., :3].reshape(-1, 3)
    assert rgb.std() > 0 and len(np.unique(rgb, axis=0)) > 1

    # a cancelled run leaves the earlier result exactly as it was
    before = result.data.copy()
    before_output = result.metadata[MODEL_OUTPUT]
    seg.threshold.setValue(0.1)
    run = seg.start()
    run.progress.connect(lambda done, total: seg.cancel())
    args = _wait(qtbot, seg, seg.run_finished)
    assert args == [None]
    assert _same(viewer.layers["EM sample mitochondria"], result)
    np.testing.assert_array_equal(result.data, before)
    assert result.metadata[MODEL_OUTPUT] is before_output
    np.testing.assert_array_equal(result.data[z], corrected)

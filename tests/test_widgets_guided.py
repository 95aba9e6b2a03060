"""Guided correction in the widgets: Segment's uncertainty layer, table and slice suggestions;
Fine-tune's export for bioimage.io; Evaluate's per-slice uncertainty without ground truth."""

from __future__ import annotations

import os
import shutil

os.environ["HF_HUB_OFFLINE"] = "1"

import dataclasses
import zipfile
from functools import partial

import numpy as np
import pytest
import torch
from gui_helpers import wait_for
from qtpy.QtCore import Qt

from napari_mitoseg import model as model_mod
from napari_mitoseg.model import ModelSpec, build_model, load_model, save_model
from napari_mitoseg.synthetic import make_sample
from napari_mitoseg.uncertainty import suggest_slices

pytestmark = pytest.mark.gui

PLUGIN = "napari-mitoseg"
_wait = partial(wait_for, timeout=60_000)


@pytest.fixture
def models(tmp_path, monkeypatch, tiny_template):
    """"tiny" (a ResNet U-Net, which cannot be exported) and "tiny-regnet" (can) in the user's
    model folder, nothing shipped."""
    root = tmp_path / "models"
    shutil.copytree(tiny_template, root / "tiny")
    torch.manual_seed(0)
    spec = ModelSpec(encoder="tu-regnety_004", encoder_depth=3, decoder_channels=(32, 16, 8), tile_size=256,
                     tile_overlap=32)
    save_model(build_model(spec), spec, root / "tiny-regnet", info={"summary": "tiny test model"})
    monkeypatch.setenv("MITOSEG_MODEL_DIR", str(root))
    monkeypatch.setattr(model_mod, "SHIPPED_DIR", tmp_path / "no-shipped-models")
    return root


@pytest.fixture
def viewer(make_napari_viewer):
    return make_napari_viewer()


def _open(viewer, title):
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, title)
    return widget


def _segment(viewer, qtbot, image, uncertainty=True):
    viewer.add_image(image, name="em", scale=(40.0, 5.0, 5.0))
    w = _open(viewer, "Segment mitochondria")
    assert w.model_choice.select("tiny")
    w.uncertainty.enabled.setChecked(uncertainty)
    layer = _wait(qtbot, w, w.run_finished, w.run_button.click)[0]
    assert layer is not None, w.message.text()
    return w, layer


def test_uncertainty_is_off_by_default_and_adds_nothing(viewer, qtbot, models):
    image, _ = make_sample(shape=(3, 64, 64), seed=3)
    viewer.add_image(image, name="em")
    w = _open(viewer, "Segment mitochondria")
    assert not w.uncertainty.enabled.isChecked()
    assert w.model_choice.select("tiny")
    assert _wait(qtbot, w, w.run_finished, w.run_button.click)[0] is not None
    assert "em uncertainty" not in [ly.name for ly in viewer.layers]
    assert not w.uncertainty.suggest_button.isEnabled()
    assert w.uncertainty.table.rowCount() == 0


def test_uncertainty_layer_table_and_suggestions(viewer, qtbot, models):
    image, _ = make_sample(shape=(6, 64, 64), seed=4)
    w, labels = _segment(viewer, qtbot, image)
    panel = w.uncertainty
    names = [ly.name for ly in viewer.layers]
    assert "em uncertainty" in names
    unc = viewer.layers["em uncertainty"]
    assert unc.data.dtype == np.uint8 and unc.data.shape == image.shape
    assert unc.colormap.name == "inferno"
    assert np.allclose(unc.scale, viewer.layers["em"].scale)
    assert names.index("em uncertainty") < names.index(labels.name)  # drawn under the result
    assert unc.data.max() > 0  # a random-weight model is unsure somewhere

    # the table: one row per slice, highest uncertainty first, the same numbers as the layer's record
    values = labels.metadata["mitoseg_slice_uncertainty"]
    assert len(values) == 6 and panel.table.rowCount() == 6
    shown = [panel.table.item(r, 1).data(Qt.ItemDataRole.DisplayRole) for r in range(6)]
    assert shown == sorted(values, reverse=True)
    assert sorted(panel.slice_at(r) for r in range(6)) == list(range(6))

    # a click on a row shows that slice
    row = next(r for r in range(6) if panel.slice_at(r) != viewer.dims.current_step[0])
    z = panel.slice_at(row)
    panel.table.cellClicked.emit(row, 1)
    assert viewer.dims.current_step[0] == z

    # Suggest slices: the two from suggest_slices, selected, the first shown, named in the message
    assert panel.suggest_button.isEnabled()
    panel.suggest_button.click()
    expected = suggest_slices(values, n=2)
    assert panel.suggested == expected and len(expected) == 2
    selected = sorted({panel.slice_at(i.row()) for i in panel.table.selectedIndexes()})
    assert selected == sorted(expected)
    assert viewer.dims.current_step[0] == expected[0]
    assert panel.message.text() == f"Correct slices {expected[0]} and {expected[1]} first."


def test_a_second_run_updates_the_uncertainty_layer(viewer, qtbot, models):
    image, _ = make_sample(shape=(4, 64, 64), seed=5)
    w, _ = _segment(viewer, qtbot, image)
    first = viewer.layers["em uncertainty"]
    w.threshold.setValue(0.3)  # another threshold: another map
    assert _wait(qtbot, w, w.run_finished, w.run_button.click)[0] is not None
    assert [ly.name for ly in viewer.layers].count("em uncertainty") == 1
    assert viewer.layers["em uncertainty"] is first
    assert w.uncertainty.table.rowCount() == 4


def test_the_uncertainty_map_is_never_taken_for_the_em_image(viewer, qtbot, models):
    image, _ = make_sample(shape=(4, 64, 64), seed=6)
    w, _ = _segment(viewer, qtbot, image)
    assert w.image_choice.layer().name == "em"
    ft = _open(viewer, "Fine-tune model")
    assert ft.image_choice.layer().name == "em"
    from napari.layers import Image

    from napari_mitoseg._widgets._common import is_em_image
    from napari_mitoseg._widgets._controls import LayerChoice

    fresh = LayerChoice(viewer, Image, prefer=is_em_image)  # as a widget opened now chooses
    assert fresh.layer().name == "em"


def test_a_layer_of_the_users_with_the_maps_name_is_left_alone(viewer, qtbot, models):
    image, _ = make_sample(shape=(3, 64, 64), seed=2)
    mine = np.full(image.shape, 7, np.uint8)
    viewer.add_image(mine.copy(), name="em uncertainty")
    _segment(viewer, qtbot, image)
    np.testing.assert_array_equal(viewer.layers["em uncertainty"].data, mine)
    assert viewer.layers["em uncertainty (2)"].data.dtype == np.uint8


# --------------------------------------------------------------------------- Fine-tune: export


def _fine_tune(viewer, qtbot, base):
    """Segment with ``base``, correct slice 1, fine-tune for 2 steps: the Fine-tune widget."""
    from napari_mitoseg.training import FINETUNE

    image, gt = make_sample(shape=(3, 64, 64), seed=7)
    viewer.add_image(image, name="em")
    seg = _open(viewer, "Segment mitochondria")
    assert seg.model_choice.select(base)
    layer = _wait(qtbot, seg, seg.run_finished, seg.run_button.click)[0]
    layer.data[1] = gt[1]
    layer.refresh()
    ft = _open(viewer, "Fine-tune model")
    assert ft.model_choice.select(base)
    ft.find_button.click()
    assert ft.slices() == [1]
    ft.base_config = dataclasses.replace(FINETUNE, batch_size=2, tile=64)
    ft.steps.setValue(2)
    assert not ft.export_button.isEnabled()  # no fine-tuned model yet
    assert _wait(qtbot, ft, ft.finetuned, ft.run_button.click)[0] is not None
    return ft


def test_export_for_bioimageio_writes_a_package_that_reads_back(viewer, qtbot, models, tmp_path, monkeypatch):
    from qtpy.QtWidgets import QFileDialog

    ft = _fine_tune(viewer, qtbot, "tiny-regnet")
    assert ft.export_button.isEnabled()
    target = tmp_path / "out" / "shared"  # no suffix given: .zip is added
    asked = []
    monkeypatch.setattr(QFileDialog, "getSaveFileName",
                        staticmethod(lambda *a, **k: (asked.append(a) or str(target), "")))
    path = wait_for(qtbot, ft, ft.exported, ft.export_button.click, timeout=180_000)[0]
    assert asked and path is not None
    assert str(path) == str(target) + ".zip" and zipfile.is_zipfile(path)
    assert "rdf.yaml" in zipfile.ZipFile(path).namelist()
    assert load_model(path, device="cpu").spec == load_model(ft.result.path, device="cpu").spec
    assert ft.message.text() == f"Exported the bioimage.io model package {path}."
    assert ft.export_button.isEnabled()


def test_export_of_a_model_that_cannot_be_packaged_says_why(viewer, qtbot, models, tmp_path, monkeypatch):
    from qtpy.QtWidgets import QFileDialog

    ft = _fine_tune(viewer, qtbot, "tiny")
    monkeypatch.setattr(QFileDialog, "getSaveFileName", staticmethod(lambda *a, **k: ("", "")))
    ft.export_button.click()  # the dialog cancelled: nothing happens
    assert ft.export_worker is None and ft.export_button.isEnabled()
    monkeypatch.setattr(QFileDialog, "getSaveFileName",
                        staticmethod(lambda *a, **k: (str(tmp_path / "x.zip"), "")))
    assert wait_for(qtbot, ft, ft.exported, ft.export_button.click, timeout=60_000)[0] is None
    assert ft.message.text().startswith("Export failed: ")
    assert "RegNet encoder" in ft.message.text()
    assert not (tmp_path / "x.zip").exists()
    assert ft.export_button.isEnabled()  # another try is possible


# --------------------------------------------------------------------------- Evaluate without truth


def test_evaluate_without_ground_truth_plots_the_recorded_uncertainty(viewer, qtbot, models):
    from types import SimpleNamespace

    image, gt = make_sample(shape=(5, 64, 64), seed=8)
    _, labels = _segment(viewer, qtbot, image)
    values = labels.metadata["mitoseg_slice_uncertainty"]
    ev = _open(viewer, "Evaluate segmentation")
    assert ev.pred_choice.layer().name == labels.name
    assert ev.gt_choice.layer() is None or not ev.gt_choice.layer().name.endswith("ground truth")
    plotted = _wait(qtbot, ev, ev.uncertainty_plotted, ev.run_button.click)[0]
    assert plotted == values
    bars = [p.get_height() for p in ev.plot.axes.patches]
    assert np.allclose(bars, values)
    assert ev.plot.axes.get_ylabel() == "uncertainty"
    assert ev.message.text().startswith("No ground truth")
    assert "em mitochondria errors" not in [ly.name for ly in viewer.layers]
    ev._on_click(SimpleNamespace(inaxes=ev.plot.axes, xdata=3.1))  # a click on bar 3
    assert viewer.dims.current_step[0] == 3

    # with a ground truth the IoU plot and the scores come back
    viewer.add_labels(gt, name="em ground truth", scale=(40.0, 5.0, 5.0))
    assert ev.gt_choice.layer().name == "em ground truth"
    report = _wait(qtbot, ev, ev.evaluated, ev.run_button.click)[0]
    assert report is not None and ev.uncertainty is None
    assert ev.plot.axes.get_ylabel() == "IoU"
    assert ev.values["iou"].text() != "-"

    # a longer stack: the slice axis still counts whole slices (no "2.5")
    long = viewer.add_labels(np.zeros((20, 8, 8), np.uint8), name="long mitochondria",
                             metadata={"mitoseg_slice_uncertainty": [0.1] * 20})
    ev.plot_uncertainty(long)
    ticks = [t for t in ev.plot.axes.get_xticks() if -0.6 <= t <= 20]
    assert len(ticks) > 2 and all(float(t).is_integer() for t in ticks)


def test_evaluate_without_ground_truth_or_uncertainty_still_asks_for_one(viewer, qtbot, models):
    image, _ = make_sample(shape=(3, 64, 64), seed=9)
    _segment(viewer, qtbot, image, uncertainty=False)
    ev = _open(viewer, "Evaluate segmentation")
    ev.gt_choice.set_layer("em mitochondria")  # the prediction itself
    assert _wait(qtbot, ev, ev.evaluated, ev.run_button.click)[0] is None
    assert "same layer" in ev.message.text()

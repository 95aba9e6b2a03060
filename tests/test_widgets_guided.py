"""Guided correction in the widgets: Segment's uncertainty layer, table and slice suggestions;
Fine-tune's export for bioimage.io; Evaluate's per-slice uncertainty without ground truth."""

from __future__ import annotations

import os
import shutil

os.environ["HF_HUB_OFFLINE"] = "1"

from functools import partial

import numpy as np
import pytest
from gui_helpers import wait_for
from qtpy.QtCore import Qt

from napari_mitoseg import model as model_mod
from napari_mitoseg.synthetic import make_sample
from napari_mitoseg.uncertainty import suggest_slices

pytestmark = pytest.mark.gui

PLUGIN = "napari-mitoseg"
_wait = partial(wait_for, timeout=60_000)


@pytest.fixture
def models(tmp_path, monkeypatch, tiny_template):
    """"tiny" in the user's model folder, nothing shipped."""
    root = tmp_path / "models"
    shutil.copytree(tiny_template, root / "tiny")
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

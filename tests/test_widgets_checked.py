"""The Fine-tune widget's checked regions: a rectangle on a Shapes layer marks the part of a
corrected slice that trains; the rest of that slice is unlabelled, and the note says how much."""

from __future__ import annotations

import dataclasses
import os
import time

os.environ["HF_HUB_OFFLINE"] = "1"

from functools import partial

import numpy as np
import pytest
from gui_helpers import open_dock, user_models, wait_for

from napari_mitoseg import training
from napari_mitoseg.synthetic import make_sample
from napari_mitoseg.training import IGNORE

pytestmark = pytest.mark.gui

_wait = partial(wait_for, timeout=60_000)
SCALE = (30.0, 8.0, 8.0)  # nm: the regions layer must follow the image's scale


@pytest.fixture
def models(tmp_path, monkeypatch, tiny_template):
    return user_models(tmp_path, monkeypatch, tiny_template, with_nm=False)


@pytest.fixture
def viewer(make_napari_viewer):
    return make_napari_viewer()


def _rect(z: float, y0: float, x0: float, y1: float, x1: float) -> np.ndarray:
    """A rectangle on slice ``z`` (a 3D Shapes layer's rectangles take four corners)."""
    return np.array([[z, y0, x0], [z, y0, x1], [z, y1, x1], [z, y1, x0]], float)



def test_a_rectangle_on_checked_regions_trains_only_that_part(viewer, qtbot, models, captured_masks):
    from napari_mitoseg._widgets._checked_regions import REGIONS_NAME, WHOLE

    image, gt = make_sample(shape=(3, 96, 96), seed=3)
    viewer.add_image(image, name="em", scale=SCALE, units=("nm",) * 3)
    labels = viewer.add_labels(gt.copy(), name="em mitochondria", scale=SCALE, units=("nm",) * 3)
    ft = open_dock(viewer, "Fine-tune model")
    assert ft.labels_choice.layer().name == labels.name
    ft.set_slices([0, 2])
    assert ft.regions_choice.currentText() == WHOLE and ft.regions.layer() is None

    ft.regions.new_button.click()
    shapes = viewer.layers[REGIONS_NAME]
    assert ft.regions.layer().name == REGIONS_NAME
    assert shapes.ndim == 3 and tuple(shapes.scale) == SCALE
    assert [str(u) for u in shapes.units] == ["nanometer"] * 3  # the scale bar keeps reading nm
    # the user draws the left half of slice 0 (a shape on slice z carries z first)
    shapes.add_rectangles(_rect(0, -0.5, -0.5, 95.5, 47.5))
    qtbot.waitUntil(lambda: "slice 0" in ft.regions_note.text(), timeout=10_000)
    assert ft.regions_note.text() == "Trains slice 0: 50% checked; slice 2: whole slice."

    seen = captured_masks  # filled by the fine-tuning's worker
    ft.base_config = dataclasses.replace(training.FINETUNE, batch_size=2, tile=64)
    ft.steps.setValue(2)
    result = _wait(qtbot, ft, ft.finetuned, ft.run_button.click)[0]
    assert result is not None
    (masks,) = seen
    assert masks.shape == (2, 96, 96)
    assert (masks[0, :, 48:] == IGNORE).all()  # the unchecked half: unlabelled
    np.testing.assert_array_equal(masks[0, :, :48], gt[0, :, :48])  # the checked half: as corrected
    np.testing.assert_array_equal(masks[1], gt[2])  # no region on slice 2: the whole slice
    assert result.checked == {0: 0.5, 2: None} and result.checked_share == pytest.approx(0.75)
    assert "checked regions (75%" in ft.result_label.text()

    # the layer set back to whole slices: every pixel of both slices trains again
    ft.regions_choice.set_layer(WHOLE)
    assert ft.regions.layer() is None
    seen.clear()
    result = _wait(qtbot, ft, ft.finetuned, ft.run_button.click)[0]
    assert result is not None, ft.message.text()
    np.testing.assert_array_equal(seen[0], gt[[0, 2]])
    assert result.checked is None and "checked regions" not in ft.result_label.text()


def test_shapes_at_another_scale_or_in_2d_mark_the_right_pixels():
    from napari.layers import Image, Shapes

    from napari_mitoseg._widgets._checked_regions import region_masks, region_note, snapshot

    image = Image(np.zeros((4, 40, 60), np.uint8), scale=SCALE)
    # napari's own "new shapes layer" has scale 1: its coordinates are the world's, in nm
    nm = Shapes(ndim=3)
    nm.add_rectangles(_rect(2 * 30, -4, -4, 20 * 8 - 4, 60 * 8 - 4))  # the top half of slice 2
    snap = snapshot(nm, image)
    masks = region_masks(snap, (4, 40, 60), [1, 2])
    assert sorted(masks) == [2] and masks[2][:20].all() and not masks[2][20:].any()
    flat = Shapes(ndim=2, scale=SCALE[1:])
    flat.add_polygons([np.array([[-0.5, -0.5], [39.5, -0.5], [39.5, 29.5], [-0.5, 29.5]])])
    note = region_note(snapshot(flat, image), (4, 40, 60), [0, 3])  # a 2D layer: every slice
    assert note == "Trains slice 0: 50% checked; slice 3: 50% checked."
    assert "on no training slice" in region_note(snap, (4, 40, 60), [0])


def test_the_note_follows_the_shapes_without_blocking_the_event_loop(viewer, qtbot, models):
    """A 4k x 4k stack with many regions: the handlers on the main thread copy the shapes and
    start a worker, well under 50 ms; the masks are made in the worker."""
    viewer.add_image(np.zeros((2, 4096, 4096), np.uint8), name="big em")
    viewer.add_labels(np.zeros((2, 4096, 4096), np.uint8), name="big em mitochondria")
    ft = open_dock(viewer, "Fine-tune model")
    ft.set_slices([0, 1])
    shapes = ft.regions.add_layer()
    corners = [_rect(z, y, x, y + 300, x + 300) for z in (0, 1)
               for y in range(0, 4000, 400) for x in range(0, 4000, 400)]
    shapes.add_rectangles(corners)  # 200 regions
    started = time.perf_counter()
    ft.regions.refresh_note()
    took = time.perf_counter() - started
    assert took < 0.05, f"the note's main-thread part took {took * 1000:.0f} ms"
    qtbot.waitUntil(lambda: "slice 1" in ft.regions_note.text(), timeout=30_000)
    assert ft.regions_note.text().startswith("Trains slice 0: ")
    started = time.perf_counter()
    assert len(ft.regions.snapshot().data) == 200  # as Fine-tune takes them, on the main thread
    assert time.perf_counter() - started < 0.05

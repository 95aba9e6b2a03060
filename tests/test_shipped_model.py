"""Regression test of the shipped model on the real testing stacks (SBEM and Lucchi++).

The model card (``config.json`` -> ``info.test_figures``) records the foreground IoU measured on
each whole testing stack, with the default settings as they are and told the stack's pixel size
in nm; these tests re-measure them. They need the data (``shared/data/<volume>`` beside the
checkout, or ``$MITOSEG_DATA_DIR``), which is present in CI; where it is absent they are skipped
and say so.
"""

from __future__ import annotations

import numpy as np
import pytest

from napari_mitoseg.api import data_dir
from napari_mitoseg.model import DEFAULT_MODEL, SHIPPED_DIR, list_models, load_model, read_config

#: the pixel sizes the card's figures were measured at (Lucchi++ published; SBEM estimated,
#: see docs/benchmarks.md)
PIXEL_NM = {"sbem": 9.3, "lucchipp": 5.0}


def _testing_stack(volume: str):
    d = data_dir(volume)
    if d is None:
        pytest.skip(f"{volume} data (shared/data/{volume}) not present on this machine")
    import tifffile

    return tifffile.imread(d / "test_image.tif"), tifffile.imread(d / "test_mask.tif") > 0


def test_default_model_is_shipped_small_and_records_its_pixel_size():
    names = [m.name for m in list_models() if m.shipped]
    assert DEFAULT_MODEL in names
    folder = SHIPPED_DIR / DEFAULT_MODEL
    size_mb = (folder / "model.safetensors").stat().st_size / 2**20
    assert size_mb < 12, f"shipped weights are {size_mb:.1f} MB"
    spec, info = read_config(folder)
    assert spec.pixel_size_nm == PIXEL_NM["lucchipp"]
    for volume in PIXEL_NM:
        assert 0.0 < info["test_figures"][volume]["default"]["iou"] <= 1.0
    card = (folder / "README.md").read_text()
    assert "command" in info and "CDeep3M" in card and "Lucchi" in card


@pytest.mark.slow
@pytest.mark.parametrize("volume", sorted(PIXEL_NM))
def test_default_model_iou_on_the_testing_stacks_matches_card(volume):
    from napari_mitoseg.api import segment
    from napari_mitoseg.inference import PredictOptions, pixel_ratio_for
    from napari_mitoseg.metrics import score

    image, gt = _testing_stack(volume)
    spec, info = read_config(SHIPPED_DIR / DEFAULT_MODEL)
    figures = info["test_figures"][volume]
    model = load_model(DEFAULT_MODEL, device="cpu")
    mask = segment(image, model)
    assert mask.shape == image.shape and mask.dtype == np.uint8
    measured = score(mask, gt).iou
    assert abs(measured - figures["default"]["iou"]) <= 0.01, f"IoU {measured:.4f}, card {figures['default']}"
    key = f"pixel_size_{PIXEL_NM[volume]:g}nm"
    if key in figures:  # told the stack's pixel size
        ratio = pixel_ratio_for(PIXEL_NM[volume], spec)
        told = score(segment(image, model, PredictOptions(pixel_ratio=ratio)), gt).iou
        assert abs(told - figures[key]["iou"]) <= 0.01, f"IoU {told:.4f}, card {figures[key]}"


@pytest.mark.slow
def test_a_stack_at_twice_the_pixel_size_scores_as_well_when_told_its_size():
    """Held-out SBEM training slices shrunk to 0.5x: giving their pixel size in nm restores the IoU."""
    d = data_dir("sbem")
    if d is None:
        pytest.skip("sbem data (shared/data/sbem) not present on this machine")
    import tifffile
    from skimage.transform import rescale

    from napari_mitoseg.api import segment
    from napari_mitoseg.inference import PredictOptions, pixel_ratio_for
    from napari_mitoseg.metrics import score

    # the last slices are the validation block the shipped model was never trained on
    image = tifffile.imread(d / "train_image.tif")[-2:]
    gt = tifffile.imread(d / "train_mask.tif")[-2:] > 0
    small = rescale(image, (1, 0.5, 0.5), order=1, anti_aliasing=True, preserve_range=True).astype(np.uint8)
    small_gt = rescale(gt.astype(np.float32), (1, 0.5, 0.5), order=1) > 0.5
    model = load_model(DEFAULT_MODEL, device="cpu")

    def at(nm):
        return PredictOptions(pixel_ratio=pixel_ratio_for(nm, model.spec))

    full = score(segment(image, model, at(PIXEL_NM["sbem"])), gt).iou
    plain = score(segment(small, model, at(PIXEL_NM["sbem"])), small_gt).iou  # told the wrong size
    matched = score(segment(small, model, at(2 * PIXEL_NM["sbem"])), small_gt).iou
    # trained with scale augmentation (0.5x-2x) the model copes with the wrong size, but the
    # right one is better and brings the shrunk stack level with the full-size one
    assert matched > plain, (plain, matched)
    assert matched > full - 0.03, (full, matched)

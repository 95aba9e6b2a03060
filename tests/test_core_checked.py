"""Learning from part of a slice: only the checked region of a corrected slice trains, the rest
is unlabelled; in the core, the API and the command line."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile

from napari_mitoseg import api, training
from napari_mitoseg._generators import result_of
from napari_mitoseg.cli import main
from napari_mitoseg.model import CARD_NAME, CONFIG_NAME
from napari_mitoseg.training import (
    IGNORE,
    TrainConfig,
    TrainingError,
    checked_regions,
    checked_shares,
    checked_training_masks,
    describe_shares,
    overall_share,
)

FT = TrainConfig(steps=2, batch_size=2, tile=64, lr=1e-3, warmup=1, val_every=0, checkpoint_every=0)


def _left_half(shape, slices) -> np.ndarray:
    """A (Z, Y, X) uint8 checked mask: the left half of each of ``slices``, 0 elsewhere."""
    checked = np.zeros(shape, np.uint8)
    for z in slices:
        checked[z, :, : shape[2] // 2] = 1
    return checked


def test_unchecked_pixels_of_a_slice_with_a_region_become_unlabelled():
    labels = np.zeros((3, 8, 10), np.uint8)
    labels[:, 2:5, 1:9] = 1
    labels[2, 0, 0] = IGNORE  # unlabelled already, and a mask with 0, 1 and 255 keeps it so
    checked = _left_half(labels.shape, [0])  # slice 0 half checked, slice 1 none, slice 2 not listed
    out = checked_training_masks(labels, checked, slices=[0, 1])
    assert out.dtype == np.uint8 and out.shape == labels.shape
    assert (out[0, :, 5:] == IGNORE).all()  # unchecked: unlabelled
    np.testing.assert_array_equal(out[0, :, :5], labels[0, :, :5])  # checked: as labelled
    np.testing.assert_array_equal(out[1], labels[1])  # no region drawn on slice 1: the whole slice
    np.testing.assert_array_equal(out[2], labels[2])  # not a training slice: untouched
    # every slice by default; the same regions given per slice
    both = checked_training_masks(labels, {0: checked[0], 1: np.zeros((8, 10), bool)})
    np.testing.assert_array_equal(both, checked_training_masks(labels, checked))
    np.testing.assert_array_equal(both, out)


def test_shares_say_what_trains():
    checked = _left_half((3, 8, 10), [0])
    checked[2, :2] = 1  # a fifth of slice 2
    regions = checked_regions(checked, (3, 8, 10), [0, 1, 2])
    assert sorted(regions) == [0, 2] and regions[0].dtype == bool
    shares = checked_shares(regions, [0, 1, 2])
    assert shares == {0: 0.5, 1: None, 2: 0.25}
    assert overall_share(shares) == pytest.approx((0.5 + 1 + 0.25) / 3)
    assert describe_shares(shares) == "slice 0: 50% checked; slice 1: whole slice; slice 2: 25% checked"


@pytest.mark.parametrize(("checked", "message"), [
    (np.ones((3, 8, 9), np.uint8), r"checked mask \(3, 8, 9\) and the labels \(3, 8, 10\) differ in shape"),
    (np.ones((8, 10), np.uint8), "differ in shape"),  # one plane for a stack of three
    ({0: np.ones((8, 9), bool)}, r"slice 0 is \(8, 9\), not the slice's \(8, 10\)"),
    ({5: np.ones((8, 10), bool)}, "slice.*5.*numbered 0 to 2"),
    (np.full((3, 8, 10), np.nan), "NaN"),
])
def test_a_checked_mask_of_the_wrong_shape_is_refused(checked, message):
    labels = np.zeros((3, 8, 10), np.uint8)
    with pytest.raises(TrainingError, match=message):
        checked_training_masks(labels, checked)



def test_iter_finetune_trains_only_the_checked_region_and_says_so(tiny_model_dir, sample, captured_masks):
    image, mask = sample  # (3, 100, 124)
    seen = captured_masks
    checked = _left_half(mask.shape, [0])
    result = result_of(api.iter_finetune(image, mask, [0, 2], base=tiny_model_dir, config=FT,
                                         device="cpu", checked=checked))
    (masks,) = seen
    assert masks.shape == (2, 100, 124)
    assert (masks[0, :, 62:] == IGNORE).all()
    np.testing.assert_array_equal(masks[0, :, :62], mask[0, :, :62])
    np.testing.assert_array_equal(masks[1], mask[2])  # no region on slice 2: whole
    assert result.checked == {0: 0.5, 2: None}
    assert result.checked_share == pytest.approx(0.75)
    info = json.loads((result.path / CONFIG_NAME).read_text())["info"]
    assert info["checked_share"] == 0.75 and info["checked_slices"] == {"0": 0.5, "2": 1.0}
    card = (result.path / CARD_NAME).read_text()
    assert "checked regions only: 75%" in card and "slice 0: 50% checked; slice 2: whole slice" in card

    # without checked regions, whole slices as before, and the card says nothing of regions
    seen.clear()
    whole = result_of(api.iter_finetune(image, mask, [0], base=tiny_model_dir, config=FT, device="cpu"))
    np.testing.assert_array_equal(seen[0][0], mask[0])
    assert whole.checked is None and "checked" not in (whole.path / CARD_NAME).read_text()


def test_iter_finetune_refuses_a_wrong_checked_mask_before_loading_the_model(sample):
    image, mask = sample
    with pytest.raises(TrainingError, match="differ in shape"):  # not "unknown model"
        next(api.iter_finetune(image, mask, [0], base="no-such-model", checked=np.ones((3, 10, 10))))


# --------------------------------------------------------------------------- command line


def test_cli_train_checked_trains_only_the_checked_pixels(files, tiny_model_dir, tmp_path, monkeypatch,
                                                          capsys):
    image, mask = tifffile.imread(files["image"]), tifffile.imread(files["gt"])
    ck = tmp_path / "checked.tif"
    tifffile.imwrite(ck, _left_half(mask.shape, [0, 1]), photometric="minisblack")
    seen = []
    real = training.iter_train_volumes

    def recording(volumes, **kw):
        seen.append((np.array(volumes[0].masks), kw["ignore_value"]))
        return (yield from real(volumes, **kw))

    monkeypatch.setattr(training, "iter_train_volumes", recording)
    run = tmp_path / "ft"
    assert main(["train", "--image", str(files["image"]), "--mask", str(files["gt"]), "--checked", str(ck),
                 "--base", str(tiny_model_dir), "--steps", "1", "--batch-size", "2",
                 "--out", str(run), "--device", "cpu"]) == 0
    (masks, ignore), = seen
    assert ignore == IGNORE
    assert (masks[:2, :, 62:] == IGNORE).all()
    np.testing.assert_array_equal(masks[:2, :, :62], mask[:2, :, :62])
    np.testing.assert_array_equal(masks[2], mask[2])  # nothing checked on slice 2: the whole slice
    err = capsys.readouterr().err
    assert "checked regions on 2 of 3 slice(s); 67% of the pixels train" in err
    info = json.loads((run / "last" / CONFIG_NAME).read_text())["info"]
    assert info["checked_share"] == [pytest.approx(2 / 3, abs=1e-4)]
    assert image.shape == mask.shape == (3, 100, 124)


def test_cli_train_checked_of_the_wrong_shape_is_refused_before_the_model(files, tmp_path, capsys):
    ck = tmp_path / "checked.tif"
    tifffile.imwrite(ck, np.ones((3, 10, 10), np.uint8), photometric="minisblack")
    run = tmp_path / "ft"
    assert main(["train", "--image", str(files["image"]), "--mask", str(files["gt"]), "--checked", str(ck),
                 "--base", "no-such-model", "--out", str(run), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mitoseg: error: --checked") and "differ in shape" in err
    assert len(err.splitlines()) == 1 and not run.exists()
    assert main(["train", "--image", str(files["image"]), "--image", str(files["image"]), "--mask",
                 str(files["gt"]), "--mask", str(files["gt"]), "--checked", str(ck), "--out", str(run)]) == 2
    assert "one --checked per --image" in capsys.readouterr().err


def test_cli_train_the_unlabelled_value_still_works_with_checked(files, tiny_model_dir, tmp_path, monkeypatch):
    mask = tifffile.imread(files["gt"]).astype(np.uint8)
    mask[0, :5] = 7  # unlabelled, by --ignore-value 7
    mpath, ck = tmp_path / "m.tif", tmp_path / "checked.tif"
    tifffile.imwrite(mpath, mask, photometric="minisblack")
    tifffile.imwrite(ck, _left_half(mask.shape, [0]), photometric="minisblack")
    seen = []
    real = training.iter_train_volumes
    monkeypatch.setattr(training, "iter_train_volumes",
                        lambda volumes, **kw: (seen.append(np.array(volumes[0].masks)), real(volumes, **kw))[1])
    args = ["train", "--image", str(files["image"]), "--mask", str(mpath), "--ignore-value", "7",
            "--base", str(tiny_model_dir), "--steps", "1", "--batch-size", "2", "--device", "cpu"]
    assert main([*args, "--checked", str(ck), "--out", str(tmp_path / "a")]) == 0
    assert (seen[0][0, :5] == IGNORE).all() and (seen[0][0, :, 62:] == IGNORE).all()
    np.testing.assert_array_equal(seen[0][0, 5:, :62], mask[0, 5:, :62])

"""The contrast guess (``stack_setup``): a stack with reversed contrast is inverted for the
shipped model, one in the training data's contrast is not, what the caller says is kept, and the
command line says what it did."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile

import napari_mitoseg
from napari_mitoseg import api
from napari_mitoseg.cli import main
from napari_mitoseg.model import DEFAULT_MODEL
from napari_mitoseg.stack_setup import MARGIN, ContrastGuess, guess_contrast, settle_contrast, will_guess
from napari_mitoseg.synthetic import make_sample

#: the shipped model's folder (found directly: some tests hide the shipped folder)
SHIPPED = Path(napari_mitoseg.__file__).parent / "models" / DEFAULT_MODEL


@pytest.fixture(scope="module")
def shipped():
    return api.get_model(SHIPPED, "cpu")


@pytest.fixture(scope="module")
def em():
    return make_sample((6, 256, 320), seed=1)


def _iou(a, b) -> float:
    a, b = a > 0, b > 0
    return float((a & b).sum() / max(1, (a | b).sum()))


def test_the_shipped_model_is_surer_of_a_stack_in_its_training_contrast(shipped, em):
    image, _ = em
    plain, reversed_ = guess_contrast(shipped, image), guess_contrast(shipped, 255 - image)
    assert not plain.invert and reversed_.invert
    assert plain.plain < MARGIN * plain.inverted  # a clear difference, not a coin toss
    # inverting the reversed stack gives the model back the original
    assert reversed_.inverted == pytest.approx(plain.plain, abs=0.01)
    assert reversed_.plain == pytest.approx(plain.inverted, abs=0.01)


def test_a_stack_without_contrast_or_with_a_blank_slice_is_taken_as_it_is(shipped, em):
    assert guess_contrast(shipped, np.zeros((3, 64, 64), np.uint8)) == ContrastGuess(False, 0.0, 0.0)
    image, _ = em
    rev = (255 - image).astype(np.float32)
    rev[2] = np.nan  # a slice that is all NaN is left out, the others decide
    rev[4] = 7.0  # and so is a blank one
    assert guess_contrast(shipped, rev).invert


def test_a_reversed_stack_is_segmented_as_the_original_unless_told_not_to_guess(shipped, em):
    image, mask = em
    plain = api.segment(image, shipped)
    assert _iou(plain, mask) > 0.5  # the model finds the synthetic mitochondria at all
    assert _iou(api.segment(255 - image, shipped), plain) > 0.95
    taken = api.segment(255 - image, shipped, guess_contrast=False)
    assert _iou(taken, mask) < 0.5 * _iou(plain, mask)


def test_what_the_caller_says_is_kept_and_models_without_the_choice_do_not_guess(shipped, tiny_model_dir, em):
    image, _ = em
    rev = 255 - image
    assert shipped.info["default_guess_contrast"] is True
    assert settle_contrast(shipped, rev, 1.0, True) == (True, None)  # told: nothing guessed
    assert settle_contrast(shipped, rev, 1.0, False, guess=False) == (False, None)
    invert, note = settle_contrast(shipped, rev, 1.0, False)
    assert invert and "contrast looks reversed" in note
    assert settle_contrast(shipped, image, 1.0, False) == (False, None)  # nothing to say
    tiny = api.get_model(tiny_model_dir, "cpu")
    assert "default_guess_contrast" not in tiny.info
    assert settle_contrast(tiny, rev, 1.0, False) == (False, None)
    assert will_guess(shipped, False) and will_guess(tiny, False, guess=True)
    assert not will_guess(tiny, False) and not will_guess(shipped, True)
    assert not will_guess(shipped, False, guess=False)


def test_the_command_line_inverts_a_reversed_stack_and_says_so(em, tmp_path, capsys):
    image, mask = em
    rev, gt = tmp_path / "reversed.tif", tmp_path / "gt.tif"
    tifffile.imwrite(rev, 255 - image, photometric="minisblack")
    tifffile.imwrite(gt, mask, photometric="minisblack")
    args = ["segment", str(rev), "--device", "cpu", "--gt", str(gt), "--json"]
    assert main(args) == 0
    captured = capsys.readouterr()
    guessed = json.loads(captured.out)
    assert guessed["invert"] is True and "contrast looks reversed" in captured.err
    assert main([*args, "--no-guess-contrast"]) == 0
    captured = capsys.readouterr()
    taken = json.loads(captured.out)
    assert taken["invert"] is False and "contrast looks reversed" not in captured.err
    assert guessed["iou"] > 0.5 > taken["iou"]
    assert main([*args, "--invert"]) == 0  # told: the same result, no guess to report
    captured = capsys.readouterr()
    assert json.loads(captured.out)["iou"] == guessed["iou"] and "looks reversed" not in captured.err


def test_a_fine_tune_from_the_shipped_model_takes_a_reversed_stack_inverted(em, tmp_path, capsys):
    from napari_mitoseg.model import load_model

    image, mask = em
    rev, gt = tmp_path / "reversed.tif", tmp_path / "mask.tif"
    tifffile.imwrite(rev, 255 - image, photometric="minisblack")
    tifffile.imwrite(gt, mask, photometric="minisblack")
    args = ["train", "--base", str(SHIPPED), "--image", str(rev), "--mask", str(gt), "--device", "cpu",
            "--config", '{"steps": 2, "batch_size": 2, "tile": 128, "warmup": 0, "val_every": 0}']
    assert main([*args, "--out", str(tmp_path / "guessed")]) == 0
    assert "contrast looks reversed" in capsys.readouterr().err
    tuned = load_model(tmp_path / "guessed" / "last", device="cpu")
    assert tuned.spec.invert and "default_guess_contrast" not in tuned.info  # set up for its stack
    assert main([*args, "--no-guess-contrast", "--out", str(tmp_path / "taken")]) == 0
    assert "looks reversed" not in capsys.readouterr().err
    assert not load_model(tmp_path / "taken" / "last", device="cpu").spec.invert


def test_the_note_says_when_the_contrast_is_unclear():
    assert "contrast looks reversed" in ContrastGuess(True, 0.3, 0.1).note()
    assert ContrastGuess(False, 0.1, 0.3).note() is None  # clearly as it is: nothing to say
    unclear = ContrastGuess(False, 0.2, 0.18).note()  # surer inverted, but within the margin
    assert "may be reversed" in unclear and "--invert" in unclear

"""Smoothing along z joins only slices that are neighbours in space."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from napari_mitoseg.inference import PredictOptions, iter_predict, predict_slice
from napari_mitoseg.neighbours import breaks_note, neighbour_pairs, signature, smooth_z
from napari_mitoseg.synthetic import make_sample


@pytest.fixture(scope="module")
def z_series():
    return make_sample((5, 96, 112), seed=1)[0]


@pytest.fixture(scope="module")
def separate_images():
    """Five unrelated synthetic micrographs stacked as one (Z, Y, X) stack."""
    return np.stack([make_sample((1, 96, 112), seed=10 + k)[0][0] for k in range(5)])


def test_a_z_series_is_all_neighbours_and_separate_images_are_none(z_series, separate_images):
    assert neighbour_pairs(z_series).tolist() == [True] * 4
    assert neighbour_pairs(separate_images).tolist() == [False] * 4
    mixed = np.stack([z_series[0], z_series[1], separate_images[2], separate_images[3]])
    assert neighbour_pairs(mixed).tolist() == [True, False, False]


def test_signature_of_a_flat_or_non_finite_slice_pairs_with_nothing():
    flat = np.full((64, 64), 7, np.uint8)
    assert not signature(flat).any()
    nan = np.full((64, 64), np.nan, np.float32)
    assert not signature(nan).any()
    assert neighbour_pairs(np.stack([flat, flat])).tolist() == [False]


def test_smooth_z_without_links_is_the_one_two_one_filter():
    probs = [np.full((2, 2), v, np.float32) for v in (0.0, 1.0, 0.0, 0.0)]
    out = [float(p[0, 0]) for p in smooth_z(iter(probs))]
    np.testing.assert_allclose(out, [1 / 3, 0.5, 0.25, 0.0])


def test_smooth_z_never_mixes_across_a_pair_that_is_not_linked():
    probs = [np.full((2, 2), v, np.float32) for v in (0.0, 1.0, 0.0, 0.6)]
    out = [float(p[0, 0]) for p in smooth_z(iter(probs), [True, False, True])]
    # 0-1 linked, 1-2 cut, 2-3 linked: slices 1 and 2 each smooth with one neighbour only
    np.testing.assert_allclose(out, [1 / 3, 2 / 3, 0.2, 0.4])
    alone = [float(p[0, 0]) for p in smooth_z(iter(probs), [False] * 3)]
    np.testing.assert_allclose(alone, [0.0, 1.0, 0.0, 0.6])


def test_breaks_note_names_the_pairs():
    assert breaks_note([True, True]) is None
    expected = "slices 1-2, 3-4 are not neighbours; not smoothed across them"
    assert breaks_note([True, False, True, False]) == expected
    assert "separate images" in breaks_note([False, False])


def test_separate_images_are_not_smoothed_across_and_a_note_says_so(tiny_model, separate_images, caplog):
    with caplog.at_level(logging.INFO, logger="napari_mitoseg"):
        smoothed = list(iter_predict(tiny_model, separate_images, PredictOptions(z_smooth=True)))
    for r in smoothed:
        np.testing.assert_array_equal(r.prob, predict_slice(tiny_model, separate_images[r.index]))
        assert r.linked is False
    notes = [r for r in caplog.records if getattr(r, "note", False)]
    assert len(notes) == 1 and "not smoothed along z" in notes[0].getMessage()


def test_a_z_series_is_still_smoothed(tiny_model, z_series, caplog):
    raw = [predict_slice(tiny_model, s) for s in z_series]
    with caplog.at_level(logging.INFO, logger="napari_mitoseg"):
        smoothed = list(iter_predict(tiny_model, z_series, PredictOptions(z_smooth=True)))
    for r, expected in zip(smoothed, smooth_z(iter(raw)), strict=True):
        np.testing.assert_allclose(r.prob, expected, atol=1e-6)
    assert not np.allclose(smoothed[2].prob, raw[2], atol=1e-4)
    assert [r.linked for r in smoothed] == [False, True, True, True, True]
    assert not [r for r in caplog.records if getattr(r, "note", False)]


def test_float64_beyond_float32s_range_keeps_its_neighbours(z_series):
    image = np.asarray(z_series, np.float64)
    for scaled in (image * 1e300 + 1e302, image * 1e-300 + 1e-298):
        np.testing.assert_array_equal(neighbour_pairs(scaled), neighbour_pairs(image))

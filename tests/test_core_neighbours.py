"""Smoothing along z joins only slices that are neighbours in space."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from napari_mitoseg.inference import InputError, PredictOptions, iter_predict, predict_slice
from napari_mitoseg.neighbours import (
    REACH,
    WINDOW_BYTES,
    breaks_note,
    estimate_z_step,
    known_z_step,
    neighbour_pairs,
    reach,
    signature,
    smooth_z,
    smoothing_is_wide,
    smoothing_reach,
    weight,
)
from napari_mitoseg.synthetic import make_isotropic, make_sample


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


def _sig(seed: int, mix: np.ndarray | None = None, share: float = 0.0) -> np.ndarray:
    """A unit-variance signature, optionally ``share`` of another one mixed in."""
    x = np.random.default_rng(seed).standard_normal((64, 64))
    if mix is not None:
        x = share * mix + np.sqrt(1 - share**2) * x
    x = (x - x.mean()) / x.std()
    return x.astype(np.float32)


def test_smooth_z_never_mixes_across_a_pair_that_is_not_linked():
    probs = [np.full((2, 2), v, np.float32) for v in (0.0, 1.0, 0.0, 0.6)]
    a, b = _sig(0), _sig(1)  # uncorrelated: not neighbours
    links: list = []
    out = [float(p[0, 0]) for p in smooth_z(iter(probs), iter([a, a, b, b]), links=links)]
    # 0-1 linked, 1-2 cut, 2-3 linked: slices 1 and 2 each smooth with one neighbour only
    np.testing.assert_allclose(out, [1 / 3, 2 / 3, 0.2, 0.4], atol=1e-6)
    assert links == [True, False, True]
    # wide: identical slices weigh as much as the slice itself; still nothing across the cut
    out = [float(p[0, 0]) for p in smooth_z(iter(probs), iter([a, a, b, b]), wide=True)]
    np.testing.assert_allclose(out, [0.5, 0.5, 0.3, 0.3], atol=1e-6)
    alone = [float(p[0, 0]) for p in smooth_z(iter(probs), iter([_sig(k) for k in range(4)]))]
    np.testing.assert_allclose(alone, [0.0, 1.0, 0.0, 0.6])


def test_smooth_z_weights_slices_by_how_alike_they_are_within_its_reach():
    base = _sig(0)
    close, far = _sig(1, base, 0.95), _sig(2, base, 0.7)
    c_close, c_far = (float(np.mean(base * s, dtype=np.float64)) for s in (close, far))
    w_close, w_far = weight(c_close), weight(c_far)
    assert 0 < w_far < w_close < 1 and weight(0.4) == 0.0 and weight(1.0) == 1.0
    probs = [np.full((2, 2), v, np.float32) for v in (0.2, 1.0, 0.0)]
    out = list(smooth_z(iter(probs), iter([far, base, close]), wide=True))
    expected = (w_far * 0.2 + 1.0 + w_close * 0.0) / (1 + w_far + w_close)
    np.testing.assert_allclose(out[1][0, 0], expected, rtol=1e-5)
    # identical slices weigh 1 each, out to the reach and no further
    ten = [np.full((2, 2), float(v), np.float32) for v in range(10)]
    same = [base] * 10
    out = [float(p[0, 0]) for p in smooth_z(iter(ten), iter(same), wide=True, reach_=2)]
    np.testing.assert_allclose(out, [1.0, 1.5, 2, 3, 4, 5, 6, 7, 7.5, 8.0], atol=1e-5)
    out = [float(p[0, 0]) for p in smooth_z(iter(ten), iter(same), wide=True)]
    assert REACH == 6 and out[4] == pytest.approx(4.5)  # the mean of slices 0..9, all within 6 of 4


def test_the_reach_shrinks_for_slices_too_large_for_the_window():
    assert reach((1024, 1024)) == REACH
    assert reach((10_000, 10_000)) == 1  # a window of 3 slices of 400 MB
    assert 2 * reach((4096, 4096)) + 1 <= WINDOW_BYTES // (4 * 4096 * 4096)


def test_breaks_note_names_the_pairs():
    assert breaks_note([True, True]) is None
    expected = "slices 1-2, 3-4 are not neighbours; not smoothed across them"
    assert breaks_note([True, False, True, False]) == expected
    assert breaks_note([True, False, True]) == "slices 1-2 are not neighbours; not smoothed across them"
    assert breaks_note([False]) == "slices 0-1 are not neighbours; not smoothed across them"
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
    for r, expected in zip(smoothed, smooth_z(iter(raw), iter([signature(s) for s in z_series])), strict=True):
        np.testing.assert_allclose(r.prob, expected, atol=1e-6)
    assert not np.allclose(smoothed[2].prob, raw[2], atol=1e-4)
    assert [r.linked for r in smoothed] == [False, True, True, True, True]
    assert not [r for r in caplog.records if getattr(r, "note", False)]


def test_float64_beyond_float32s_range_keeps_its_neighbours(z_series):
    image = np.asarray(z_series, np.float64)
    for scaled in (image * 1e300 + 1e302, image * 1e-300 + 1e-298):
        np.testing.assert_array_equal(neighbour_pairs(scaled), neighbour_pairs(image))


def test_the_z_step_is_estimated_from_the_images():
    iso = make_isotropic()
    assert 0.8 < estimate_z_step(iso) < 1.3
    assert 2.5 < estimate_z_step(iso[::3]) < 3.7  # every third slice: a z step of 3 pixels
    assert estimate_z_step(iso[0]) is None and estimate_z_step(iso[:1]) is None
    separate = np.stack([make_isotropic((1, 96, 112), seed=k)[0] for k in range(4)])
    assert estimate_z_step(separate) is None  # no two slices are neighbours
    assert known_z_step((5.0, 5.0, 5.0)) == 1.0 and known_z_step((30.0, 8.0, 8.0)) == 3.75
    assert known_z_step(None) is None and known_z_step((0.0, 5.0, 5.0)) is None


def test_a_near_isotropic_stack_is_smoothed_over_several_slices_and_thick_sections_over_one(tiny_model, caplog):
    iso = make_isotropic((16, 96, 112))
    raw = [predict_slice(tiny_model, s) for s in iso]
    sigs = [signature(s) for s in iso]
    with caplog.at_level(logging.INFO, logger="napari_mitoseg"):
        wide = list(iter_predict(tiny_model, iso, PredictOptions(z_smooth=True)))
    for r, expected in zip(wide, smooth_z(iter(raw), iter(sigs), wide=True), strict=True):
        np.testing.assert_allclose(r.prob, expected, atol=1e-6)
    notes = [r.getMessage() for r in caplog.records if getattr(r, "note", False)]
    assert len(notes) == 1 and "near-isotropic" in notes[0] and "--ortho" in notes[0]
    narrow = list(iter_predict(tiny_model, iso, PredictOptions(z_smooth=True, z_step=4.0)))  # told: thick
    for r, expected in zip(narrow, smooth_z(iter(raw), iter(sigs)), strict=True):
        np.testing.assert_allclose(r.prob, expected, atol=1e-6)
    assert not np.allclose(wide[8].prob, narrow[8].prob, atol=1e-4)
    # a block read with the smoothing's reach beside it gives the whole pass's slices
    r = smoothing_reach(iso.shape[1:], estimate_z_step(iso))
    assert r == REACH
    block = list(iter_predict(tiny_model, iso, PredictOptions(z_smooth=True), zrange=(6 - r, 10 + r)))
    for got in block:
        if 6 <= got.index < 10:
            np.testing.assert_array_equal(got.prob, wide[got.index].prob)
    with pytest.raises(InputError, match="z step"):
        PredictOptions(z_step=0)


def test_after_ortho_planes_a_near_isotropic_stack_is_smoothed_over_adjacent_slices_only():
    assert smoothing_is_wide(1.0) and not smoothing_is_wide(1.0, ortho=True) and not smoothing_is_wide(2.0)
    assert smoothing_reach((64, 64), 1.0, ortho=True) == 1 and smoothing_reach((64, 64), 1.0) == REACH

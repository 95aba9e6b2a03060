"""Uncertainty without ground truth, and the slices to correct first."""

from __future__ import annotations

import numpy as np
import pytest

from napari_mitoseg.inference import PredictOptions, iter_predict
from napari_mitoseg.uncertainty import slice_uncertainty, suggest_slices, to_uint8, uncertainty_map


def test_map_is_one_at_the_threshold_and_zero_at_certainty():
    p = np.array([[0.0, 0.25, 0.5, 0.75, 1.0]], np.float32)
    np.testing.assert_allclose(uncertainty_map(p, 0.5), [[0, 0.5, 1, 0.5, 0]])
    np.testing.assert_allclose(uncertainty_map(np.array([[0.2, 0.6]], np.float32), 0.2), [[1, 0.5]])
    assert to_uint8(uncertainty_map(p)).tolist() == [[0, 128, 255, 128, 0]]


def test_a_slice_with_unsure_pixels_beside_little_foreground_is_the_most_uncertain():
    sure = np.zeros((100, 100), np.float32)
    sure[:30] = 0.99
    shaky = sure.copy()
    shaky[30:33] = 0.45  # a blurred edge
    tiny = np.zeros((100, 100), np.float32)
    tiny[:3, :30] = 0.99
    tiny[3:6, :30] = 0.45  # the same kind of edge, on a slice with little foreground
    u = [slice_uncertainty(x) for x in (sure, shaky, tiny)]
    assert u[0] == 0.0 and 0 < u[1] < u[2] <= 1
    assert slice_uncertainty(np.zeros((50, 50), np.float32)) == 0.0


def test_suggested_slices_are_the_most_uncertain_spread_along_z():
    u = [0.1, 0.9, 0.85, 0.2, 0.3, 0.1, 0.5, 0.1, 0.1, 0.1]
    assert suggest_slices(u, 2) == [1, 6]  # 2 is next in line but beside 1
    assert suggest_slices(u, 2, min_gap=1) == [1, 2]
    assert suggest_slices(u, 1) == [1]
    assert suggest_slices([0.3], 3) == [0]
    with pytest.raises(ValueError, match="at least 1"):
        suggest_slices(u, 0)


def test_each_slice_result_carries_its_uncertainty(tiny_model, sample):
    image, _ = sample
    for r in iter_predict(tiny_model, image, PredictOptions(threshold=0.4)):
        assert r.threshold == 0.4
        assert r.uncertainty == slice_uncertainty(r.prob, 0.4)
        np.testing.assert_array_equal(r.uncertainty_map(), uncertainty_map(r.prob, 0.4))

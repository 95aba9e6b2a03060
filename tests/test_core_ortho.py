"""Ortho-plane inference: the mean of the XY, XZ and YZ passes, in bounded windows."""

from __future__ import annotations

import numpy as np
import pytest

from napari_mitoseg import ortho
from napari_mitoseg.inference import PredictOptions, iter_predict, predict, predict_slice
from napari_mitoseg.synthetic import make_sample


@pytest.fixture(scope="module")
def cube():
    """A small isotropic (Z, Y, X) stack, a little longer along X than Y."""
    return make_sample((40, 40, 48), seed=3)[0]


def _by_hand(model, image):
    xy = np.stack([predict_slice(model, s) for s in image])
    xz = np.stack([predict_slice(model, image[:, y, :]) for y in range(image.shape[1])], axis=1)
    yz = np.stack([predict_slice(model, image[:, :, x]) for x in range(image.shape[2])], axis=2)
    return xy, xz, yz


def test_ortho_is_the_mean_of_the_three_passes_transposed_by_hand(tiny_model, cube):
    xy, xz, yz = _by_hand(tiny_model, cube)
    work = []
    got = list(iter_predict(tiny_model, cube, PredictOptions(ortho=True, z_smooth=False, threshold=0.5),
                            on_work=lambda d, t: work.append((d, t))))
    prob = np.stack([r.prob for r in got])
    np.testing.assert_allclose(prob, (xy + xz + yz) / 3, atol=1e-6)
    assert not np.allclose(prob, xy, atol=1e-3)  # the XZ and YZ passes count
    np.testing.assert_array_equal(np.stack([r.mask for r in got]), prob > 0.5)
    z, y, x = cube.shape
    assert work[-1] == (z + y + x, z + y + x) and [d for d, _ in work] == list(range(1, z + y + x + 1))


def test_windows_tile_the_stack_and_a_slice_range_gives_the_same_slices(tiny_model, cube, monkeypatch):
    monkeypatch.setattr(ortho, "WINDOW_BYTES", 4 * 40 * 48 * 16)  # windows of 16 slices
    wins = ortho.ortho_windows(40, (40, 48), tiny_model)
    assert [(k0, k1) for _, k0, k1, _ in wins] == [(0, 16), (16, 32), (32, 40)]
    assert all(r0 <= k0 and k1 <= r1 for r0, k0, k1, r1 in wins)
    opts = PredictOptions(ortho=True, z_smooth=False)
    whole = predict(tiny_model, cube, opts)[0]
    part = [r for r in iter_predict(tiny_model, cube, opts, zrange=(10, 35))]
    assert [r.index for r in part] == list(range(10, 35))
    np.testing.assert_array_equal(np.stack([r.prob for r in part]).astype(np.float16), whole[10:35])


def test_reads_only_a_window_at_a_time(tiny_model, cube, monkeypatch):
    monkeypatch.setattr(ortho, "WINDOW_BYTES", 4 * 40 * 48 * 8)
    reads = []

    class Lazy:
        shape, dtype, ndim = cube.shape, cube.dtype, 3

        def __getitem__(self, i):
            reads.append(i)
            return cube[i]

    first = next(iter_predict(tiny_model, Lazy(), PredictOptions(ortho=True, z_smooth=False)))
    assert first.index == 0 and max(reads) < 8 + ortho.ortho_windows(40, (40, 48), tiny_model)[0][3]


@pytest.mark.parametrize(("given", "voxel", "z", "expected"), [
    (None, (5.0, 5.0, 5.0), 165, True),
    (None, (7.0, 5.0, 5.0), 165, True),
    (None, (30.0, 5.0, 5.0), 165, False),
    (None, None, 165, False),
    (None, (5.0, 5.0, 5.0), 10, False),
    (True, None, 10, True),
    (False, (5.0, 5.0, 5.0), 165, False),
])
def test_ortho_default_only_for_a_known_near_isotropic_voxel(given, voxel, z, expected):
    on, note = ortho.choose_ortho(given, voxel, z)
    assert on is expected
    assert (note is not None) == (given is None and expected)


def test_ortho_with_scales_averages_every_pass_over_the_scales(tiny_model, cube):
    from napari_mitoseg.inference import at_scales

    small = cube[:12, :20, :24]
    passes = [_by_hand(m, small) for m in at_scales(tiny_model, (1.0, 1.5))]
    expected = sum(xy + xz + yz for xy, xz, yz in passes) / 6
    got = np.stack([r.prob for r in iter_predict(tiny_model, small,
                                                 PredictOptions(ortho=True, z_smooth=False, scales=(1.0, 1.5)))])
    np.testing.assert_allclose(got, expected, atol=1e-6)

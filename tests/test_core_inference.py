"""Normalisation, padding, tiling and stack inference with a tiny random-weight model."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest

from napari_mitoseg.inference import (
    InputError,
    PredictOptions,
    blend_window,
    iter_predict,
    normalise,
    normalise01,
    pad_to_stride,
    predict,
    predict_slice,
    tile_starts,
    tiled_apply,
)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32, np.int16])
def test_normalise_maps_any_dtype_to_minus_one_one(rng, dtype):
    x = (rng.normal(100, 20, (37, 53))).clip(0, None).astype(dtype)
    y = normalise(x)
    assert y.dtype == np.float32
    assert y.shape == x.shape
    assert y.min() == -1.0
    assert y.max() == 1.0


def test_normalise_is_robust_to_brightness_and_contrast(rng):
    x = rng.normal(100, 20, (64, 64)).astype(np.float32)
    np.testing.assert_allclose(normalise(x), normalise(3 * x + 500), atol=1e-5)


def test_normalise_constant_slice_and_mode_none():
    assert (normalise01(np.full((16, 16), 7, np.uint8)) == 0).all()
    x = np.array([[0, 51, 255]], np.uint8)
    np.testing.assert_allclose(normalise01(x, "none"), [[0.0, 0.2, 1.0]])
    np.testing.assert_allclose(normalise01(np.array([[-0.5, 0.5, 2.0]]), "none"), [[0.0, 0.5, 1.0]])


@pytest.mark.parametrize("shape", [(37, 50), (8, 9), (3, 5), (64, 64), (2, 33, 17)])
def test_pad_to_stride_pads_to_multiples_and_keeps_the_original(rng, shape):
    x = rng.random(shape).astype(np.float32)
    padded, (h, w) = pad_to_stride(x, 8)
    assert (h, w) == shape[-2:]
    assert padded.shape[:-2] == x.shape[:-2]
    assert padded.shape[-2] % 8 == 0 and padded.shape[-1] % 8 == 0
    assert padded.shape[-2] - h < 8 and padded.shape[-1] - w < 8
    np.testing.assert_array_equal(padded[..., :h, :w], x)


@pytest.mark.parametrize("length", [1, 100, 128, 129, 300, 1000])
def test_tile_starts_cover_with_overlap(length):
    tile, overlap = 128, 16
    starts = tile_starts(length, tile, overlap)
    assert starts[0] == 0
    assert starts == sorted(set(starts))
    if length <= tile:
        assert starts == [0]
        return
    assert starts[-1] + tile == length
    assert all(b - a <= tile - overlap for a, b in zip(starts, starts[1:], strict=False))


def test_blend_window_is_positive_and_one_inside():
    w = blend_window(64, 8)
    assert w.shape == (64, 64)
    assert (w > 0).all()
    assert (w[8:-8, 8:-8] == 1).all()
    np.testing.assert_allclose(w, w[::-1, ::-1])


@pytest.mark.parametrize("shape", [(300, 257), (100, 300), (129, 129), (128, 128), (50, 60), (1000, 130)])
def test_tiled_apply_with_identity_is_exact(rng, shape):
    x = rng.random(shape).astype(np.float32)
    seen = []

    def fn(t):
        seen.append(t.shape)
        return t

    out = tiled_apply(x, fn, tile=128, overlap=16)
    assert out.shape == x.shape
    np.testing.assert_allclose(out, x, rtol=1e-6, atol=1e-6)
    assert all(h <= 128 and w <= 128 for h, w in seen)
    if max(shape) > 128:
        assert len(seen) > 1


def test_tiled_apply_blends_a_pointwise_function_exactly(rng):
    x = rng.random((300, 257)).astype(np.float32)
    np.testing.assert_allclose(tiled_apply(x, lambda t: t**2 + 1, 128, 16), x**2 + 1, rtol=1e-6)


@pytest.mark.parametrize("shape", [(3, 100, 124), (2, 150, 141), (2, 129, 9)])
def test_predict_shapes_dtypes_and_ranges(tiny_model, rng, shape):
    image = rng.integers(0, 256, shape, dtype=np.uint8)
    prob, mask = predict(tiny_model, image)
    assert prob.shape == mask.shape == shape
    assert prob.dtype == np.float16
    assert mask.dtype == np.uint8
    assert prob.min() >= 0.0 and prob.max() <= 1.0
    assert set(np.unique(mask)) <= {0, 1}


def test_2d_image_gives_one_slice(tiny_model, sample):
    image, _ = sample
    prob, mask = predict(tiny_model, image[0])
    assert prob.shape == mask.shape == (1, *image.shape[1:])
    np.testing.assert_array_equal(prob[0], predict(tiny_model, image[:1])[0][0])


def test_iter_predict_yields_every_slice_in_order_with_its_threshold(tiny_model, sample):
    image, _ = sample
    thr = 0.5004
    results = list(iter_predict(tiny_model, image, PredictOptions(threshold=thr)))
    assert [r.index for r in results] == list(range(len(image)))
    assert {r.total for r in results} == {len(image)}
    for r in results:
        assert r.prob.shape == r.mask.shape == image.shape[1:]
        assert r.prob.dtype == np.float32
        assert r.mask.dtype == bool
        np.testing.assert_array_equal(r.mask, r.prob > thr)
        np.testing.assert_array_equal(r.prob, predict_slice(tiny_model, image[r.index]))
    assert 0 < sum(r.mask.sum() for r in results) < image.size  # the threshold cuts somewhere


class _CountingStack:
    """A (Z, Y, X) array-like that records which slices were read."""

    def __init__(self, array):
        self.array, self.read = array, []
        self.shape, self.dtype, self.ndim = array.shape, array.dtype, array.ndim

    def __getitem__(self, i):
        self.read.append(i)
        return self.array[i]


def test_iter_predict_can_be_closed_early(tiny_model, rng):
    stack = _CountingStack(rng.integers(0, 256, (6, 40, 48), dtype=np.uint8))
    gen = iter_predict(tiny_model, stack)
    first = next(gen)
    second = next(gen)
    gen.close()
    assert (first.index, second.index) == (0, 1)
    assert stack.read == [0, 1]  # nothing read after the close
    with pytest.raises(StopIteration):
        next(gen)


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (np.zeros((2, 3, 40, 50), np.uint8), r"expected a \(Z, Y, X\) or \(Y, X\) grey-scale image"),
        (np.zeros((2, 40, 50, 3), np.uint8), "RGB"),
        (np.zeros((40, 50, 3), np.uint8), "RGB"),
        (np.zeros((0, 40, 50), np.uint8), "empty"),
        (np.zeros((2, 2), np.uint8), "too small"),
        (np.zeros((3, 40, 50), object), "unsupported dtype object"),
        (np.zeros((3, 40, 50), bool), "unsupported dtype bool"),
        (np.zeros(5, np.uint8), r"got shape \(5,\)"),
    ],
)
def test_bad_input_raises_input_error_with_a_message(tiny_model, image, message):
    with pytest.raises(InputError, match=message):
        predict(tiny_model, image)
    with pytest.raises(InputError, match=message):
        next(iter_predict(tiny_model, image))


def test_dask_input_gives_the_same_result_as_numpy(tiny_model, sample):
    image, _ = sample
    lazy = da.from_array(image, chunks=(1, *image.shape[1:]))
    p0, m0 = predict(tiny_model, image)
    p1, m1 = predict(tiny_model, lazy)
    np.testing.assert_array_equal(p0, p1)
    np.testing.assert_array_equal(m0, m1)


def test_test_time_augmentation_makes_the_prediction_rotation_equivariant(tiny_model, rng):
    x = rng.integers(0, 256, (64, 64), dtype=np.uint8)
    plain = predict_slice(tiny_model, x)
    assert not np.allclose(np.rot90(plain), predict_slice(tiny_model, np.rot90(x)), atol=1e-4)
    tta = predict_slice(tiny_model, x, tta=True)
    tta_rot = predict_slice(tiny_model, np.ascontiguousarray(np.rot90(x)), tta=True)
    np.testing.assert_allclose(np.rot90(tta), tta_rot, atol=1e-5)
    np.testing.assert_allclose(np.fliplr(tta), predict_slice(tiny_model, np.fliplr(x).copy(), tta=True),
                               atol=1e-5)


def test_input_scale_runs_the_network_at_that_resolution_and_returns_full_size(tiny_spec, rng):
    import dataclasses

    from conftest import make_tiny_model

    half = make_tiny_model(dataclasses.replace(tiny_spec, input_scale=0.5))
    seen = []
    forward = half.net.forward
    half.net.forward = lambda t: (seen.append(tuple(t.shape[-2:])), forward(t))[1]
    x = rng.integers(0, 256, (2, 96, 130), dtype=np.uint8)
    prob, mask = predict(half, x)
    assert prob.shape == mask.shape == x.shape
    assert prob.min() >= 0.0 and prob.max() <= 1.0
    # 96x130 at half resolution is 48x65, then padded up to the encoder's stride
    st = half.spec.stride
    assert seen and all(s == (-(-48 // st) * st, -(-65 // st) * st) for s in seen)
    full = make_tiny_model(tiny_spec)
    assert not np.allclose(predict(full, x)[0], prob, atol=1e-3)


def test_resize_round_trip_keeps_smooth_images():
    from napari_mitoseg.inference import resize

    yy, xx = np.mgrid[0:64, 0:80].astype(np.float32)
    smooth = np.sin(yy / 9) * np.cos(xx / 11)
    back = resize(resize(smooth, (32, 40)), (64, 80))
    assert back.shape == (64, 80)
    assert np.abs(back - smooth)[4:-4, 4:-4].max() < 0.05
    assert resize(smooth, (64, 80)) is smooth


def test_fill_holes_closes_a_pale_matrix_only_when_asked(tiny_model):
    from napari_mitoseg.inference import binarise

    prob = np.zeros((40, 40), np.float32)
    prob[10:30, 10:30] = 0.9
    prob[15:25, 15:25] = 0.2  # hole enclosed by foreground
    prob[0:5, 0:5] = 0.2
    assert not binarise(prob, 0.5)[20, 20]
    filled = binarise(prob, 0.5, fill_holes=True)
    assert filled[10:30, 10:30].all()
    assert filled.sum() == 400


def test_fill_holes_default_comes_from_the_model(tiny_model, rng, monkeypatch):
    from napari_mitoseg import inference

    calls = []
    real = inference.binarise
    monkeypatch.setattr(inference, "binarise", lambda p, t, f=False: (calls.append(f), real(p, t, f))[1])
    x = rng.integers(0, 256, (2, 64, 64), dtype=np.uint8)
    predict(tiny_model, x)
    tiny_model.info["default_fill_holes"] = True
    predict(tiny_model, x)
    predict(tiny_model, x, PredictOptions(fill_holes=False))
    assert calls == [False, False, True, True, False, False]


def test_pixel_ratio_resizes_slices_to_the_models_pixel_size(tiny_model, rng):
    from napari_mitoseg.inference import for_stack

    seen = []
    forward = tiny_model.net.forward
    tiny_model.net.forward = lambda t: (seen.append(tuple(t.shape[-2:])), forward(t))[1]
    x = rng.integers(0, 256, (2, 48, 64), dtype=np.uint8)
    prob, mask = predict(tiny_model, x, PredictOptions(pixel_ratio=2.0))
    assert prob.shape == mask.shape == x.shape  # probabilities come back at the stack's size
    assert seen and all(s == (96, 128) for s in seen)  # coarse pixels: the network sees 2x
    seen.clear()
    predict(tiny_model, x, PredictOptions(pixel_ratio=0.5))
    st = tiny_model.spec.stride
    assert seen and all(s == (-(-24 // st) * st, -(-32 // st) * st) for s in seen)
    # the model itself is untouched: the ratio lives in the options only
    assert tiny_model.spec.input_scale == 1.0
    assert for_stack(tiny_model, 1.0) is tiny_model
    scaled = for_stack(tiny_model, 2.0)
    assert scaled.net is tiny_model.net and scaled.spec.input_scale == 2.0


@pytest.mark.parametrize("ratio, message", [(0.1, "between 0.25 and 4"), (5.0, "between 0.25 and 4"),
                                            (float("nan"), "between 0.25 and 4")])
def test_pixel_ratio_out_of_range_is_refused_with_a_message(tiny_model, ratio, message):
    x = np.zeros((1, 32, 32), np.uint8)
    with pytest.raises(InputError, match=message):
        predict(tiny_model, x, PredictOptions(pixel_ratio=ratio))


def test_invert_reads_a_contrast_reversed_stack_as_the_original(tiny_model, rng):
    x = rng.integers(0, 256, (2, 48, 64), dtype=np.uint8)
    prob, _ = predict(tiny_model, x)
    prob_inv, _ = predict(tiny_model, 255 - x, PredictOptions(invert=True))
    np.testing.assert_allclose(prob_inv, prob, atol=1e-5)
    assert not np.allclose(predict(tiny_model, 255 - x)[0], prob, atol=1e-3)


def test_scales_average_the_network_run_at_each_resolution(tiny_model, rng):
    from napari_mitoseg.inference import at_scales

    x = rng.integers(0, 256, (2, 72, 90), dtype=np.uint8)
    one, big = at_scales(tiny_model, (1.0, 1.5))
    assert one is tiny_model and big.spec.input_scale == 1.5 * tiny_model.spec.input_scale
    seen = []
    forward = tiny_model.net.forward
    tiny_model.net.forward = lambda t: (seen.append(tuple(t.shape[-2:])), forward(t))[1]
    try:
        by_hand = np.stack([(predict_slice(one, s) + predict_slice(big, s)) / 2 for s in x])
        seen.clear()
        opts = PredictOptions(scales=[1, 1.5], z_smooth=False)
        got = np.stack([r.prob for r in iter_predict(tiny_model, x, opts)])
    finally:
        tiny_model.net.forward = forward
    np.testing.assert_allclose(got, by_hand, atol=1e-6)
    assert not np.allclose(got, predict(tiny_model, x, PredictOptions(z_smooth=False))[0], atol=1e-3)
    st = tiny_model.spec.stride  # the network saw each slice at 72 rows and 1.5 x 72 = 108, padded to stride
    assert {h for h, _ in seen} == {-(-72 // st) * st, -(-108 // st) * st}


@pytest.mark.parametrize("scales, message", [
    ((), "one to four"), ((1.0, 1.0), "one to four different"), ((1, 0.2), "between 0.5 and 2"),
    ((1, float("nan")), "between 0.5 and 2"), (("a",), "numbers between"),
    ((1, 1.2, 1.4, 1.6, 1.8), "one to four"),
])
def test_bad_scales_are_refused_with_a_message(scales, message):
    with pytest.raises(InputError, match=message):
        PredictOptions(scales=scales)


def test_scales_are_kept_as_a_tuple_of_floats():
    assert PredictOptions(scales=[1, 1.5]).scales == (1.0, 1.5)
    assert PredictOptions(scales=2).scales == (2.0,)

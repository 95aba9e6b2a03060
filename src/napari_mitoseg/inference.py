"""Stack inference: normalise, pad to the encoder stride, tile large slices, yield per slice.

:func:`iter_predict` is a generator that yields one :class:`SliceResult` per slice, so a
widget can show progress and cancel between slices; :func:`predict` drains it.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from .model import LoadedModel, ModelError, ModelSpec, threshold_problem
from .neighbours import breaks_note, plan_smoothing, signature
from .neighbours import smooth_z as smooth_z  # re-exported: smoothing lives with the neighbour decision
from .normalisation import check_slice, non_finite, normalise, normalise01  # noqa: F401 - kept importable
from .precision import autocast, inference_net
from .tiling import (  # noqa: F401 - re-exported: part of inference's public face
    blend_window,
    network_shape,
    pad_to_stride,
    resize,
    tile_starts,
    tiled_apply,
)

logger = logging.getLogger(__name__)
#: ``extra`` of a log record that states a decision the user should see (the CLI prints it)
NOTE = {"note": True}


class InputError(ValueError):
    """The image cannot be segmented as given; the message says why."""


@dataclass(frozen=True)
class PredictOptions:
    """How to run a model over a stack.

    threshold : None uses the model's own threshold.
    tta : average over the 8 flips/rotations (dihedral group); 8x slower.
    scales : run the network at each of these multiples of its working resolution and average
        the probabilities (multi-scale averaging; ``(1.0, 1.5)`` is 3.25x the network's work of
        ``(1.0,)``, the default, and measured 3.2x its time). Each lies in :data:`SCALE_RANGE`.
    z_smooth : average probabilities along z before thresholding, over the neighbouring
        slices weighted by how alike they are (see :func:`smooth_z`); for z-series. None: the model's own default
        (``default_z_smooth`` in its config, chosen on validation).
    fill_holes : fill holes enclosed by foreground in each slice's mask (a mitochondrion's
        pale matrix read as background). None: the model's default (``default_fill_holes``).
    batch_size : slices per forward pass (GPU); the CPU uses 1.
    pixel_ratio : the stack's pixel size divided by the pixel size of the model's training
        data (2: your pixels are twice as large, so a mitochondrion is half as many pixels
        across). Slices are resized by this factor so that the network sees tissue at the scale
        it learned; 1 leaves them as they are. See :func:`for_stack`.
    invert : the stack's contrast is the reverse of the model's training data (bright
        membranes and mitochondria on a dark background); slices are inverted for the network.
    ortho : run the model over the XY, XZ and YZ planes and average the three probabilities
        (for near-isotropic stacks; about 3x slower; see :mod:`napari_mitoseg.ortho`). None: the
        caller that knows the voxel size decides (:func:`~napari_mitoseg.ortho.choose_ortho`;
        api and cluster runs do); here it counts as off.
    z_step : the stack's z step in Y/X pixels (z spacing over pixel size), for z-smoothing: a
        near-isotropic stack (at most :data:`~napari_mitoseg.neighbours.ISOTROPIC_STEP`) is
        smoothed over several slices, thicker sections (and any stack after ortho planes) over
        the adjacent ones. None: estimated from the stack
        (:func:`~napari_mitoseg.neighbours.estimate_z_step`).
    """

    threshold: float | None = None
    tta: bool = False
    scales: tuple[float, ...] = (1.0,)
    z_smooth: bool | None = None
    fill_holes: bool | None = None
    batch_size: int = 4
    pixel_ratio: float = 1.0
    invert: bool = False
    ortho: bool | None = False
    z_step: float | None = None

    def __post_init__(self) -> None:
        problem = None if self.threshold is None else threshold_problem(self.threshold)
        if problem:
            raise InputError(problem)
        if self.z_step is not None and not (np.isfinite(self.z_step) and self.z_step > 0):
            raise InputError(f"the z step must be a positive number of pixels, got {self.z_step!r}")
        object.__setattr__(self, "scales", check_scales(self.scales))


#: the multiples of the working resolution that :attr:`PredictOptions.scales` may hold
SCALE_RANGE = (0.5, 2.0)
#: the widget's "Multi-scale" scales, chosen on the validation blocks (docs/benchmarks.md)
MULTI_SCALE = (1.0, 1.5)


def check_scales(scales) -> tuple[float, ...]:
    """``scales`` as a tuple of floats; :class:`InputError` unless one to four distinct finite
    numbers within :data:`SCALE_RANGE`."""
    lo, hi = SCALE_RANGE
    try:
        out = tuple(float(k) for k in ([scales] if np.isscalar(scales) else scales))
    except (TypeError, ValueError):
        raise InputError(f"scales must be numbers between {lo:g} and {hi:g}, got {scales!r}") from None
    if not 1 <= len(out) <= 4 or len(set(out)) != len(out):
        raise InputError(f"scales must be one to four different numbers, got {list(out)}")
    bad = [k for k in out if not (np.isfinite(k) and lo <= k <= hi)]
    if bad:
        raise InputError(f"each scale must lie between {lo:g} and {hi:g} (multiples of the model's working "
                         f"resolution), got {bad[0]:g}")
    return out


def at_scales(model: LoadedModel, scales: tuple[float, ...]) -> list[LoadedModel]:
    """``model`` once per scale, its network run at that multiple of ``input_scale``."""
    spec = model.spec
    return [model if k == 1.0 else
            dataclasses.replace(model, spec=dataclasses.replace(spec, input_scale=spec.input_scale * k))
            for k in scales]


#: the pixel ratios :func:`for_stack` accepts (a stack at 4x finer or coarser pixels)
PIXEL_RATIO_RANGE = (0.25, 4.0)


def for_stack(model: LoadedModel, pixel_ratio: float = 1.0, invert: bool = False) -> LoadedModel:
    """``model`` set up for a stack whose pixels are ``pixel_ratio`` times as large as its
    training data's, and whose contrast is reversed if ``invert``.

    The network is shared; only the spec changes: ``input_scale`` is multiplied by the ratio, so
    each slice is resized to the training pixel size before the network runs (and the
    probabilities resized back), and ``invert`` is toggled. A fine-tune from the returned model
    keeps both in its own spec, so the new model needs neither for this stack.
    """
    ratio = float(pixel_ratio)
    if ratio == 1.0 and not invert:
        return model
    lo, hi = PIXEL_RATIO_RANGE
    if not lo <= ratio <= hi:
        raise InputError(f"pixel ratio must lie between {lo} and {hi}, got {ratio:g}")
    try:
        nm = model.spec.pixel_size_nm
        spec = dataclasses.replace(model.spec, input_scale=model.spec.input_scale * ratio,
                                   invert=model.spec.invert != bool(invert),
                                   pixel_size_nm=None if nm is None else nm * ratio)
    except ModelError as exc:
        raise InputError(f"pixel ratio {ratio:g} is too far for model {model.name!r}: {exc}") from None
    return dataclasses.replace(model, spec=spec)


def pixel_ratio_for(pixel_size_nm: float | None, spec: ModelSpec) -> float:
    """The pixel ratio (see :class:`PredictOptions`) of a stack whose pixels are
    ``pixel_size_nm`` nanometres wide, for a model with ``spec``; 1.0 when ``pixel_size_nm`` is None.

    Raises :class:`InputError` for a size that is not a positive finite number, when the model
    records no pixel size, or when the ratio leaves :data:`PIXEL_RATIO_RANGE`.
    """
    if pixel_size_nm is None:
        return 1.0
    nm = check_pixel_size(pixel_size_nm)
    if spec.pixel_size_nm is None:
        raise InputError("this model records no pixel size in nm; give a pixel ratio instead")
    ratio = nm / spec.pixel_size_nm
    lo, hi = PIXEL_RATIO_RANGE
    if not lo <= ratio <= hi:
        raise InputError(
            f"pixel size {nm:g} nm is {ratio:.3g}x the model's {spec.pixel_size_nm:g} nm; "
            f"the model takes {lo * spec.pixel_size_nm:g}-{hi * spec.pixel_size_nm:g} nm"
        )
    return ratio


def check_pixel_size(pixel_size_nm) -> float:
    """``pixel_size_nm`` as a float; :class:`InputError` unless a positive finite number."""
    try:
        nm = float(pixel_size_nm)
    except (TypeError, ValueError):
        nm = float("nan")
    if not (np.isfinite(nm) and nm > 0):
        raise InputError(f"pixel size must be a positive number of nanometres, got {pixel_size_nm!r}")
    return nm


def choose_pixel_ratio(
    spec: ModelSpec, pixel_ratio: float | None = None, pixel_size_nm: float | None = None,
    file_pixel_nm: float | None = None,
) -> tuple[float, str | None]:
    """The pixel ratio to run a model with ``spec`` on a stack, and a note saying where it came
    from (None when nothing was given or found).

    ``pixel_ratio`` (given as such) and ``pixel_size_nm`` (the stack's Y/X pixel size) exclude
    each other; with neither, ``file_pixel_nm`` (from the file's metadata) is used when the
    model records its own pixel size.
    """
    if pixel_ratio is not None and pixel_size_nm is not None:
        raise InputError("give the stack's pixel size or a pixel ratio, not both")
    if pixel_ratio is not None:
        return float(pixel_ratio), None
    if pixel_size_nm is not None:
        ratio = pixel_ratio_for(check_pixel_size(pixel_size_nm), spec)
        return ratio, f"pixel size {float(pixel_size_nm):g} nm; {_model_scale(spec, ratio)}"
    if file_pixel_nm is None:
        return 1.0, None
    if spec.pixel_size_nm is None:
        return 1.0, (f"pixel size {file_pixel_nm:g} nm (from file metadata); the model records "
                     "no pixel size: no rescaling")
    try:
        ratio = pixel_ratio_for(file_pixel_nm, spec)
    except InputError as exc:
        raise InputError(f"{exc} (pixel size from the file's metadata; give the pixel size or "
                         "a pixel ratio to override it)") from None
    return ratio, f"pixel size {file_pixel_nm:g} nm (from file metadata); {_model_scale(spec, ratio)}"


def _model_scale(spec: ModelSpec, ratio: float) -> str:
    action = "no rescaling" if abs(ratio - 1.0) < 1e-6 else f"pixel ratio {ratio:.3g}"
    return f"model {spec.pixel_size_nm:g} nm: {action}"


@dataclass
class SliceResult:
    """One finished slice: its index, probability map (Y, X) float32 and binary mask (Y, X) bool.

    ``threshold``: the one the mask was made with. ``linked``: whether the slice was smoothed
    together with the previous one (they are neighbours in space); None without z-smoothing.
    ``uncertainty`` and :meth:`uncertainty_map` come from ``prob`` (no extra pass).
    """

    index: int
    total: int
    prob: np.ndarray
    mask: np.ndarray
    threshold: float = 0.5
    linked: bool | None = None

    @property
    def uncertainty(self) -> float:
        """How likely the slice is wrong (see :func:`~napari_mitoseg.uncertainty.slice_uncertainty`)."""
        from .uncertainty import slice_uncertainty

        return slice_uncertainty(self.prob, self.threshold)

    def uncertainty_map(self) -> np.ndarray:
        """(Y, X) float32 in [0, 1]: how unsure each pixel is (1 at the threshold)."""
        from .uncertainty import uncertainty_map

        return uncertainty_map(self.prob, self.threshold)


def as_stack(image):
    """``image`` as an array: numpy, dask and zarr arrays pass through; anything else (a nested
    list of numbers) goes through ``np.asarray``. Raises :class:`InputError` for what is not a
    regular numeric array."""
    if all(hasattr(image, a) for a in ("shape", "dtype", "ndim")):
        return image
    try:
        arr = np.asarray(image)
    except (ValueError, TypeError) as exc:
        raise InputError(f"the image is not a regular array of numbers: {exc}") from None
    if arr.dtype.kind not in "iuf":
        raise InputError(f"the image must be an array of numbers (Z, Y, X), got a "
                         f"{type(image).__name__} of {arr.dtype} values")
    return arr


def check_stack(image) -> None:
    """Raise :class:`InputError` unless ``image`` is a (Z, Y, X) or (Y, X) grey-scale stack.

    A numpy float stack without a single finite pixel (all NaN or inf) is refused."""
    shape = tuple(getattr(image, "shape", ()))
    if len(shape) not in (2, 3):
        hint = " (RGB? convert to grey first)" if len(shape) == 3 + 1 and shape[-1] in (3, 4) else ""
        raise InputError(f"expected a (Z, Y, X) or (Y, X) grey-scale image, got shape {shape}{hint}")
    if 0 in shape:
        raise InputError(f"the image is empty (shape {shape})")
    dtype = np.dtype(image.dtype)
    if not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)):
        raise InputError(f"unsupported dtype {dtype}; use uint8, uint16 or float")
    if len(shape) == 3 and shape[-1] in (3, 4) and shape[-2] >= 8:
        raise InputError(
            f"shape {shape} looks like an RGB(A) image (colour last); convert it to grey first"
        )
    if shape[-1] < 8 or shape[-2] < 8:
        raise InputError(f"slices of {shape[-2]}x{shape[-1]} are too small to segment (min 8x8)")
    if isinstance(image, np.ndarray) and dtype.kind == "f" and not np.isfinite(image).any():
        raise InputError("the image holds no finite pixel: every value is NaN or inf")


def _network_input(slice_: np.ndarray, spec: ModelSpec) -> np.ndarray:
    """Normalise as ``spec`` says; contrast-inverted when ``spec.invert``."""
    x = normalise(slice_, spec.normalisation)
    return np.negative(x, out=x) if spec.invert else x


def _forward(model: LoadedModel, batch: np.ndarray, tta: bool) -> np.ndarray:
    """(B, Y, X) normalised float32 -> (B, Y, X) probabilities, padded to stride inside."""
    import torch

    net, spec = inference_net(model.net), model.spec
    dev = model.device
    padded, (h, w) = pad_to_stride(batch, spec.stride)
    t = torch.from_numpy(np.ascontiguousarray(padded))[:, None].to(dev)
    if dev.type == "cpu":
        t = t.contiguous(memory_format=torch.channels_last)
    views = [(k, f) for k in range(4) for f in (False, True)] if tta else [(0, False)]
    acc = None
    with torch.inference_mode(), autocast(dev):
        for k, flip in views:
            v = torch.rot90(t, k, (2, 3)) if k else t
            v = torch.flip(v, (3,)) if flip else v
            y = torch.sigmoid(net(v).float())
            y = torch.flip(y, (3,)) if flip else y
            y = torch.rot90(y, -k, (2, 3)) if k else y
            acc = y if acc is None else acc + y
    prob = (acc / len(views))[:, 0, :h, :w]
    return prob.cpu().numpy().astype(np.float32)


def _to_network(raw: list[np.ndarray], spec: ModelSpec) -> np.ndarray:
    """Equal-shaped raw (Y, X) slices -> (B, Y', X') network input: normalised, inverted when
    the spec says so, resized by ``input_scale``."""
    batch = np.stack([_network_input(r, spec) for r in raw])
    return resize(batch, network_shape(spec, batch.shape[1:]))


def _to_slices(probs: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Network probabilities (..., Y', X') -> the slices' own (Y, X), within [0, 1]."""
    return np.clip(resize(probs, shape), 0.0, 1.0)


def predict_slice(model: LoadedModel, slice_: np.ndarray, tta: bool = False,
                  scales: tuple[float, ...] = (1.0,)) -> np.ndarray:
    """(Y, X) raw slice -> (Y, X) float32 foreground probability, the mean over ``scales``."""
    out = None
    for m in at_scales(model, scales):
        spec: ModelSpec = m.spec
        x = _to_network([slice_], spec)[0]
        p = tiled_apply(x, lambda t, m=m: _forward(m, t[None], tta)[0], spec.tile_size, spec.tile_overlap)
        p = _to_slices(p, np.shape(slice_))
        out = p if out is None else out + p
    return out if len(scales) == 1 else out / np.float32(len(scales))


def iter_predict(
    model: LoadedModel, image, options: PredictOptions | None = None, *,
    zrange: tuple[int, int] | None = None, on_work: Callable[[int, int], None] | None = None,
) -> Iterator[SliceResult]:
    """Yield a :class:`SliceResult` per slice of a (Z, Y, X) or (Y, X) ``image``.

    ``image`` may be a numpy, dask or zarr array: slices are read one at a time (with
    ``options.ortho``, in windows of slices, see :mod:`napari_mitoseg.ortho`), so a stack
    larger than memory streams through. Cancel by closing the generator (or stop iterating).
    Smoothing along z joins only slices that are neighbours in space
    (:func:`~napari_mitoseg.neighbours.are_neighbours`), each weighted by how alike they are
    (:func:`smooth_z`); a note names the pairs that are not.

    ``zrange`` = (a, b): only slices a..b-1 (indices stay the stack's), made as a pass over the
    whole stack makes them, except that z-smoothing sees no slice outside the range (read
    :func:`~napari_mitoseg.neighbours.smoothing_reach` more on each side for that).
    ``on_work(done, total)``: called as each plane is predicted (one per slice; with ortho, the
    XY, XZ and YZ planes of all three passes), for progress.
    """
    options = options or PredictOptions()
    image = as_stack(image)
    check_stack(image)
    model = for_stack(model, options.pixel_ratio, options.invert)
    if image.ndim == 2:
        image = image[None]
    thr = model.spec.threshold if options.threshold is None else options.threshold
    z = image.shape[0]
    a, b = zrange or (0, z)
    if not 0 <= a < b <= z:
        raise InputError(f"slice range {a}..{b} lies outside the stack's {z} slices")
    if options.ortho and min(image.shape) < 8:
        raise InputError(f"ortho planes need at least 8 slices along each axis; the stack is {image.shape}")
    z_smooth = _or_model_default(options.z_smooth, model, "default_z_smooth")
    fill = _or_model_default(options.fill_holes, model, "default_fill_holes")
    # decided from the whole stack, so that every slice range decides alike
    plan = plan_smoothing(image, options.z_step, bool(options.ortho)) if z_smooth else (False, None, None)
    wide, wide_note = plan[0], plan[2]
    if wide_note and a == 0:
        logger.info(wide_note, extra=NOTE)
    bad: dict[int, np.ndarray | None] = {}  # non-finite pixels of the slices read so far
    sigs: dict[int, np.ndarray] = {}  # neighbour signatures of the slices read, until paired
    links: list[bool] = []

    def seen(i: int, raw: np.ndarray) -> None:
        bad[i] = check_slice(raw, i)
        if z_smooth:
            sigs[i] = signature(raw)

    def signature_stream() -> Iterator[np.ndarray]:
        for i in range(a, b):
            yield sigs.pop(i)

    if options.ortho:
        from .ortho import iter_ortho

        raw = iter_ortho(model, image, options, seen, (a, b), on_work, predict=predict_planes)
    else:
        raw = _xy_probs(model, image, options, seen, (a, b), on_work)
    probs = smooth_z(_zero_bad(raw, bad, a), signature_stream(), wide=wide, links=links) if z_smooth else raw
    for i, p in enumerate(probs, start=a):
        b = bad.pop(i)
        if b is not None:  # non-finite pixels are background, whatever their neighbours say
            p[b] = 0.0
        yield SliceResult(i, z, p, binarise(p, thr, fill) & (True if b is None else ~b), threshold=thr,
                          linked=(links[i - a - 1] if i > a else False) if z_smooth else None)
    note = breaks_note(links, a) if z_smooth else None
    if note:
        logger.info(note, extra=NOTE)


def _zero_bad(probs: Iterator[np.ndarray], bad: dict[int, np.ndarray | None], start: int) -> Iterator[np.ndarray]:
    """Non-finite pixels at 0 before smoothing: they spread nothing to neighbours along z."""
    for i, p in enumerate(probs, start=start):
        if bad.get(i) is not None:
            p[bad[i]] = 0.0
        yield p


def _xy_probs(model: LoadedModel, image, options: PredictOptions, seen, zrange: tuple[int, int],
              on_work=None) -> Iterator[np.ndarray]:
    """(Y, X) probabilities of each XY slice of ``zrange`` in turn; ``seen(i, raw)`` as slice i is read."""
    a, b = zrange
    bs = _batch_size(model, image.shape[1:], options.batch_size, options.scales)
    for start in range(a, b, bs):
        raw = [np.asarray(image[i]) for i in range(start, min(b, start + bs))]
        for k, r in enumerate(raw):
            seen(start + k, r)
        for k, p in enumerate(_predict_batch(model, raw, options.tta, options.scales)):
            if on_work is not None:
                on_work(start + k - a + 1, b - a)
            yield p


def predict_planes(model: LoadedModel, planes: Iterable[np.ndarray], tta: bool = False,
                   batch_size: int = 4, scales: tuple[float, ...] = (1.0,)) -> Iterator[np.ndarray]:
    """(H, W) float32 probabilities of each raw (H, W) plane of ``planes`` (all of one shape) in
    turn, each the mean over ``scales``; batched on a GPU when a plane fits one tile (at the
    largest scale)."""
    batch: list[np.ndarray] = []
    bs = 1
    for k, plane in enumerate(planes):
        if k == 0:
            bs = _batch_size(model, plane.shape, batch_size, scales)
        batch.append(np.asarray(plane))
        if len(batch) == bs:
            yield from _predict_batch(model, batch, tta, scales)
            batch = []
    if batch:
        yield from _predict_batch(model, batch, tta, scales)


def _batch_size(model: LoadedModel, shape: tuple[int, int], batch_size: int, scales: tuple[float, ...]) -> int:
    """``batch_size`` on a GPU when a plane of ``shape`` fits one tile at every scale; else 1."""
    small = all(max(network_shape(m.spec, shape)) <= m.spec.tile_size for m in at_scales(model, scales))
    return batch_size if (model.device.type != "cpu" and small) else 1


def _predict_batch(model: LoadedModel, raw: list[np.ndarray], tta: bool,
                   scales: tuple[float, ...] = (1.0,)) -> list[np.ndarray]:
    """Probabilities of equal-shaped raw planes, each the mean over ``scales``; one plane goes
    through :func:`predict_slice` (tiled)."""
    if len(raw) == 1:
        return [predict_slice(model, raw[0], tta, scales)]
    out = sum(_to_slices(_forward(m, _to_network(raw, m.spec), tta), raw[0].shape)
              for m in at_scales(model, scales))
    return list(out / np.float32(len(scales)) if len(scales) > 1 else out)


def _or_model_default(value: bool | None, model: LoadedModel, key: str) -> bool:
    """An option as given, or (None) the model's recommendation ``info[key]`` (default off)."""
    return bool(model.info.get(key, False)) if value is None else value


def binarise(prob: np.ndarray, threshold: float, fill_holes: bool = False) -> np.ndarray:
    """(Y, X) probabilities -> bool mask; optionally fill holes enclosed by foreground."""
    mask = prob > threshold
    if fill_holes:
        from scipy.ndimage import binary_fill_holes

        mask = binary_fill_holes(mask)
    return mask


def predict(model: LoadedModel, image, options: PredictOptions | None = None):
    """Run :func:`iter_predict` to the end: returns (probabilities (Z,Y,X) float16, mask uint8)."""
    image = as_stack(image)
    if image.ndim == 2:
        image = image[None]
    check_stack(image)
    prob = np.zeros(image.shape, np.float16)
    mask = np.zeros(image.shape, np.uint8)
    for r in iter_predict(model, image, options):
        prob[r.index] = r.prob
        mask[r.index] = r.mask
    return prob, mask

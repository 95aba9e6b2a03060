"""Ortho-plane inference: the 2D model over the XY, XZ and YZ planes, probabilities averaged.

In a near-isotropic stack (FIB-SEM) a mitochondrion looks alike in all three planes, so the
three views of each voxel are three opinions; their mean is steadier than XY alone.

Memory stays bounded: the stack is read in windows of whole slices along z
(:func:`ortho_windows`). Each window keeps ``block`` slices and reads ``margin`` more on each side,
so that the XZ and YZ planes the network sees reach past the slices it keeps; only the kept
slices' probabilities are accumulated (float32, at most :data:`WINDOW_BYTES`). The windows depend
only on the stack's shape and the model, so any range of slices (a cluster block) is computed by
the same windows as a pass over the whole stack, and gives identical probabilities.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator

import numpy as np

from .model import LoadedModel
from .neighbours import ISOTROPIC_STEP, known_z_step

logger = logging.getLogger(__name__)

#: the float32 probabilities of one window's kept slices stay within this many bytes
WINDOW_BYTES = 512 * 2**20
#: ortho is on by default when the z step is within this factor of the Y/X pixel size (the
#: near-isotropic bound z-smoothing uses too) ...
ISOTROPY = ISOTROPIC_STEP
#: ... and the stack has at least this many slices (XZ / YZ planes are Z pixels tall)
MIN_SLICES = 32

#: ``seen(index, raw)``: called once per slice, in order, as it is read
SeenFn = Callable[[int, np.ndarray], None]
#: ``predict(model, planes, tta, scales=...)``: probabilities of each raw plane in turn
PlanesFn = Callable[..., Iterator[np.ndarray]]
#: ``on_work(done, total)``: planes predicted so far, of all three passes
WorkFn = Callable[[int, int], None]


def ortho_windows(z: int, shape_yx: tuple[int, int], model: LoadedModel) -> list[tuple[int, int, int, int]]:
    """The windows of a (Z, Y, X) stack of ``z`` slices: ``(read_lo, keep_lo, keep_hi, read_hi)``
    each; kept ranges tile ``0..z`` in order. ``block`` = as many slices as fit
    :data:`WINDOW_BYTES` (at least 8), ``margin`` = the model's tile overlap in slices."""
    y, x = shape_yx
    block = max(8, WINDOW_BYTES // (4 * y * x))
    spec = model.spec
    margin = max(8, round(spec.tile_overlap / spec.input_scale))
    out = []
    for lo in range(0, z, block):
        hi = min(z, lo + block)
        out.append((max(0, lo - margin), lo, hi, min(z, hi + margin)))
    return out


def plane_count(z: int, shape_yx: tuple[int, int], model: LoadedModel,
                zrange: tuple[int, int] | None = None) -> int:
    """How many planes (XY, XZ and YZ) an ortho pass over slices ``zrange`` of the stack predicts."""
    a, b = zrange or (0, z)
    wins = [w for w in ortho_windows(z, shape_yx, model) if w[2] > a and w[1] < b]
    return sum(w[2] - w[1] for w in wins) + len(wins) * (shape_yx[0] + shape_yx[1])


def iter_ortho(
    model: LoadedModel, image, options, seen: SeenFn | None = None, zrange: tuple[int, int] | None = None,
    on_work: WorkFn | None = None, *, predict: PlanesFn,
) -> Iterator[np.ndarray]:
    """(Y, X) float32 probabilities of slices ``zrange`` (default all) of the (Z, Y, X) ``image``,
    each the mean of the XY, XZ and YZ passes, in z order. ``options``: a
    :class:`~napari_mitoseg.inference.PredictOptions` (``tta`` and ``scales`` apply to every plane); ``model``
    already set up for the stack (:func:`~napari_mitoseg.inference.for_stack`); ``predict``:
    :func:`~napari_mitoseg.inference.predict_planes`."""
    z, y, x = (int(s) for s in image.shape)
    a, b = zrange or (0, z)
    total = plane_count(z, (y, x), model, (a, b))
    done = [0]

    def tick() -> None:
        done[0] += 1
        if on_work is not None:
            on_work(done[0], total)

    for r0, k0, k1, r1 in ortho_windows(z, (y, x), model):
        if k1 <= a or k0 >= b:
            continue
        chunk = np.stack([np.asarray(image[i]) for i in range(r0, r1)])
        if seen is not None:
            for i in range(max(k0, a), min(k1, b)):
                seen(i, chunk[i - r0])
        acc = window_probs(model, chunk, (k0 - r0, k1 - r0), predict, options.tta, tick, options.scales)
        for i in range(max(k0, a), min(k1, b)):
            yield acc[i - k0]


def window_probs(model: LoadedModel, chunk: np.ndarray, keep: tuple[int, int], predict_planes: PlanesFn,
                 tta: bool = False, tick: Callable[[], None] | None = None,
                 scales: tuple[float, ...] = (1.0,)) -> np.ndarray:
    """(K, Y, X) float32 mean of the XY, XZ and YZ probabilities of slices ``keep[0]:keep[1]`` of
    the (Z, Y, X) ``chunk``; ``tick()`` after each plane."""
    k0, k1 = keep
    tick = tick or (lambda: None)
    acc = np.zeros((k1 - k0, *chunk.shape[1:]), np.float32)

    def planes(views: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        return predict_planes(model, views, tta, scales=scales)

    for i, p in enumerate(planes(chunk[j] for j in range(k0, k1)), start=k0):
        acc[i - k0] += p
        tick()
    for yi, p in enumerate(planes(chunk[:, j, :] for j in range(chunk.shape[1]))):
        acc[:, yi, :] += p[k0:k1]
        tick()
    for xi, p in enumerate(planes(chunk[:, :, j] for j in range(chunk.shape[2]))):
        acc[:, :, xi] += p[k0:k1]
        tick()
    acc /= np.float32(3)
    return acc


def choose_ortho(ortho: bool | None, voxel_nm: tuple[float, float, float] | None,
                 z: int) -> tuple[bool, str | None]:
    """Whether to run ortho-plane inference, and a note when it was chosen for the user.

    ``ortho`` as given wins; None turns it on where the voxel size (Z, Y, X in nm) is known, the
    z step lies within :data:`ISOTROPY` of the Y/X pixel size and the stack has at least
    :data:`MIN_SLICES` slices."""
    if ortho is not None:
        return bool(ortho), None
    if not voxel_nm or z < MIN_SLICES:
        return False, None
    step = known_z_step(voxel_nm)
    if step is None or not 1 / ISOTROPY <= step <= ISOTROPY:
        return False, None
    dz, dy = float(voxel_nm[0]), float(voxel_nm[1])
    return True, (f"voxel size {dz:g} x {dy:g} nm is near-isotropic: XY, XZ and YZ planes averaged "
                  "(about 3x slower; --no-ortho to turn it off)")

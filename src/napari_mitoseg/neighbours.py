"""Which adjacent slices of a stack are neighbours in space, and smoothing along z across those only.

A z-series (serial sections, FIB-SEM, SBEM) changes little from one slice to the next; a stack of
separate micrographs (other cells, grids or days) does not. Averaging probabilities along z helps
the first and wrecks the second, so :func:`smooth_z` smooths only across pairs of slices that
:func:`are_neighbours` accepts.

The decision is made per pair from the two slices alone (:func:`signature` of each, then their
correlation against :data:`MIN_CORRELATION`): it streams, and a block of a stack read with one
slice of margin on each side decides every pair inside it as a pass over the whole stack does.

How far the smoothing reaches follows the stack's z step (:func:`estimate_z_step` from the
images, or the voxel size): a near-isotropic stack (FIB-SEM) is averaged over several slices,
weighted by how alike they are, thicker serial sections over the adjacent ones. The z step is
one figure for the whole stack, decided before a cluster's blocks are sent; a block then reads
:func:`smoothing_reach` slices of margin on each side.

Figures (``benchmarks/neighbours.py``; correlation of adjacent slices' signatures):
z-series (Lucchi++ and SBEM training and testing stacks) 0.768-0.959, median 0.80 (SBEM) and
0.95 (Lucchi++); separate images (Lucchi++ and SBEM testing slices interleaved) 0.02-0.08;
shuffled slices of one volume fall below 0.5 once they lie more than about 8 (Lucchi++, 5 nm)
or 2 (SBEM) sections apart, and stay above it closer, where smoothing is as sound as across
adjacent sections of the thicker SBEM series.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import numpy as np

from .normalisation import _float64_to_unit

#: side of the (n, n) :func:`signature` of a slice
SIGNATURE_SIZE = 64
#: adjacent slices whose signatures correlate at least this much are neighbours in space
MIN_CORRELATION = 0.5
#: z-smoothing averages slices up to this many on each side (chosen on the validation blocks:
#: 2 / 4 / 6 / 8 / 12 slices give a mean IoU of 0.8358 / 0.8367 / 0.8370 / 0.8369 / 0.8368)
REACH = 6
#: the most memory the z-smoothing window of probability slices may take (see :func:`reach`)
WINDOW_BYTES = 1 << 30
#: a stack whose z step is at most this many Y/X pixels counts as near-isotropic (also the
#: bound of :data:`napari_mitoseg.ortho.ISOTROPY`, which is this figure)
ISOTROPIC_STEP = 1.5
#: in-plane shifts (pixels) against which :func:`estimate_z_step` matches the z correlation
XY_LAGS = (1, 2, 3, 4, 6, 8, 12, 16)


def signature(slice_) -> np.ndarray:
    """(SIGNATURE_SIZE, SIGNATURE_SIZE) float32 summary of a (Y, X) slice: the slice read with a
    stride, normalised to [0, 1] by its percentiles, averaged over blocks, then centred and
    scaled to unit variance (all zeros for a slice without contrast)."""
    n = SIGNATURE_SIZE
    h, w = slice_.shape[-2:]
    step = max(1, min(h, w) // (2 * n))
    # float64 first to [0, 1] in float64: values beyond float32's range (1e302) keep their contrast
    x = _normalised(np.asarray(_float64_to_unit(slice_[::step, ::step]), dtype=np.float32))
    by, bx = max(1, x.shape[0] // n), max(1, x.shape[1] // n)
    ny, nx = min(n, x.shape[0]), min(n, x.shape[1])
    x = x[: by * ny, : bx * nx].reshape(ny, by, nx, bx).mean((1, 3), dtype=np.float32)
    x = x - x.mean()
    sd = float(x.std())
    return (x / sd if sd > 1e-6 else np.zeros_like(x)).astype(np.float32)


def _normalised(x: np.ndarray) -> np.ndarray:
    """``x`` mapped by its 0.5th..99.5th percentile to [0, 1], clipped; NaN / inf read as 0."""
    finite = np.isfinite(x)
    if not finite.any():
        return np.zeros_like(x)
    lo, hi = np.percentile(x[finite], (0.5, 99.5))
    x = np.where(finite, x, np.float32(lo))
    if hi - lo < 1e-6:
        return np.zeros_like(x)
    return np.clip((x - np.float32(lo)) / np.float32(hi - lo), 0.0, 1.0)


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two :func:`signature` s (0 when either has no contrast)."""
    if a.shape != b.shape:
        return 0.0
    return float(np.mean(a * b, dtype=np.float64))


def are_neighbours(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two adjacent slices with signatures ``a`` and ``b`` are neighbours in space."""
    return correlation(a, b) >= MIN_CORRELATION


def neighbour_pairs(image) -> np.ndarray:
    """(Z - 1,) bool: ``out[i]`` tells whether slices ``i`` and ``i + 1`` of the (Z, Y, X) ``image``
    are neighbours in space. Reads each slice once, with a stride; never the whole stack at once."""
    sigs = (signature(image[i]) for i in range(image.shape[0]))
    return links_of(sigs)


def links_of(signatures: Iterable[np.ndarray]) -> np.ndarray:
    """(Z - 1,) bool neighbour decisions of consecutive ``signatures``."""
    out, prev = [], None
    for s in signatures:
        if prev is not None:
            out.append(are_neighbours(prev, s))
        prev = s
    return np.array(out, dtype=bool)


def breaks_note(links: Sequence[bool], offset: int = 0) -> str | None:
    """One line naming the adjacent pairs that are not neighbours (slices counted from
    ``offset``), or None when every pair is."""
    cut = [i for i, ok in enumerate(links) if not ok]
    if not cut:
        return None
    pairs = [f"{offset + i}-{offset + i + 1}" for i in cut]
    shown = ", ".join(pairs[:12]) + (f" and {len(pairs) - 12} more" if len(pairs) > 12 else "")
    if len(cut) == len(links) and len(links) > 1:
        return "no two adjacent slices are neighbours (separate images?); not smoothed along z"
    return f"slices {shown} are not neighbours; not smoothed across them"  # each pair: "slices 3-4 are"


def weight(c: float) -> float:
    """Weight in z-smoothing of a slice whose signature correlates ``c`` with the slice being
    smoothed (that slice's own weight is 1): ((c - MIN_CORRELATION) / (1 - MIN_CORRELATION))^2,
    0 below :data:`MIN_CORRELATION`. Adjacent SBEM sections (c about 0.85) weigh about 1/2, the
    [1/4, 1/2, 1/4] filter; 5 nm FIB-SEM slices stay above 0.5 for about 6 slices."""
    return max(0.0, (c - MIN_CORRELATION) / (1.0 - MIN_CORRELATION)) ** 2


def reach(slice_shape: Sequence[int]) -> int:
    """How many slices on each side z-smoothing may average (:data:`REACH`), fewer for slices so
    large that the window of 2 * reach + 1 float32 probability slices would pass
    :data:`WINDOW_BYTES`. A block of a stack read with this many more slices on each side
    smooths its slices as a pass over the whole stack does."""
    nbytes = 4 * int(np.prod(slice_shape[-2:], dtype=np.int64))
    return int(max(1, min(REACH, (WINDOW_BYTES // max(nbytes, 1) - 1) // 2)))


def smooth_z(probs: Iterable[np.ndarray], signatures: Iterable[np.ndarray] | None = None, *,
             wide: bool = False, links: list | None = None, reach_: int | None = None) -> Iterator[np.ndarray]:
    """Stream (Y, X) probability slices through an average along z.

    Mitochondria are continuous across thin EM sections, so a pixel that is foreground in
    its neighbours is more likely foreground itself; how far that holds depends on the z step.
    A slice is averaged only with slices joined to it by a chain of neighbour pairs
    (:func:`are_neighbours` of their ``signatures``, one :func:`signature` per slice, read as
    the slices arrive; None: every pair is linked):

    - ``wide`` False (serial sections, z step several pixels): the adjacent slices at weight
      1/2, the [1/4, 1/2, 1/4] filter ([2/3, 1/3] with one neighbour);
    - ``wide`` True (a near-isotropic stack, :func:`smoothing_is_wide`): the slices up to
      ``reach_`` (default :func:`reach`) on either side, each weighted by how alike it is to the
      slice (:func:`weight` of the signatures' correlation; needs ``signatures``).

    ``links``: a list that receives each adjacent pair's decision as it is made. Memory:
    2 * reach + 1 slices, reach slices of lag.
    """
    if wide and signatures is None:
        raise ValueError("wide smoothing weighs slices by their signatures; pass them")
    sig_it = iter(signatures) if signatures is not None else None
    window: list[np.ndarray] = []  # probabilities of slices first..first + len - 1
    sigs: list[np.ndarray | None] = []
    linked: list[bool] = []  # linked[k]: window slices k and k + 1 are neighbours
    first = 0  # stack index of window[0]
    done = 0  # slices yielded so far
    r = reach_
    for p in probs:
        if r is None:
            r = reach(p.shape) if wide else 1
        s = next(sig_it) if sig_it is not None else None
        if window:
            ok = True if s is None else are_neighbours(sigs[-1], s)
            linked.append(ok)
            if links is not None:
                links.append(ok)
        window.append(p)
        sigs.append(s)
        while done + r < first + len(window):  # slice `done` has all its later neighbours
            yield _weighted(window, sigs, linked, done - first, r, wide)
            done += 1
            drop = max(0, done - r - first)  # slices no later output needs
            if drop:
                del window[:drop], sigs[:drop], linked[:drop]
                first += drop
    while done < first + len(window):
        yield _weighted(window, sigs, linked, done - first, r or 1, wide)
        done += 1


def _weighted(window: list, sigs: list, linked: list, k: int, r: int, wide: bool) -> np.ndarray:
    """The weighted average for window slice ``k`` over the slices within ``r`` joined to it."""
    lo = k
    while lo > 0 and k - lo < r and linked[lo - 1]:
        lo -= 1
    hi = k
    while hi < len(window) - 1 and hi - k < r and linked[hi]:
        hi += 1
    if lo == hi:
        return window[k]
    acc, total, tmp = window[k].astype(np.float32, copy=True), 1.0, None
    for j in range(lo, hi + 1):
        if j == k:
            continue
        w = weight(correlation(sigs[k], sigs[j])) if wide else 0.5  # not wide: the adjacent ones only
        if w > 0.0:
            tmp = np.multiply(window[j], np.float32(w), out=tmp, dtype=np.float32)  # no new array per slice
            acc += tmp
            total += w
    if total == 1.0:
        return window[k]
    acc /= np.float32(total)
    return acc


def smoothing_is_wide(z_step: float | None, ortho: bool = False) -> bool:
    """Whether z-smoothing averages several slices (a stack whose z step, in Y/X pixels, is at
    most :data:`ISOTROPIC_STEP`) rather than the adjacent ones only. Not after ortho planes,
    whose XZ and YZ passes have seen along z already: on Lucchi++ training slices 100-164 the
    mean of the three passes scores 0.903 unsmoothed, 0.902 smoothed over adjacent slices and
    0.895 smoothed wide (``benchmarks/ortho_planes.py --validation --val-start 100``)."""
    return z_step is not None and z_step <= ISOTROPIC_STEP and not ortho


def smoothing_reach(slice_shape: Sequence[int], z_step: float | None, ortho: bool = False) -> int:
    """How many slices on each side z-smoothing reads: :func:`reach` when it is wide, else 1."""
    return reach(slice_shape) if smoothing_is_wide(z_step, ortho) else 1


def plan_smoothing(image, z_step: float | None, ortho: bool = False) -> tuple[bool, float | None, str | None]:
    """(wide, step, note) for z-smoothing the (Z, Y, X) ``image``: whether it is wide
    (:func:`smoothing_is_wide`), the z step that decided it (``z_step`` when given, else
    estimated, :func:`estimate_z_step`; None with ``ortho``, which smooths adjacent slices only),
    and a note for the user when it is wide."""
    if ortho:
        return False, z_step, None
    step = resolve_z_step(image, z_step)
    if not smoothing_is_wide(step):
        return False, step, None
    return True, step, (f"z step about {step:.1f} pixels (near-isotropic): each slice smoothed with up to "
                        f"{reach(image.shape[1:])} on either side; ortho planes (--ortho) may do better, "
                        "about 3x slower")


def resolve_z_step(image, z_step: float | None = None, voxel_nm=None) -> float | None:
    """The z step to smooth the (Z, Y, X) ``image`` by: ``z_step`` when given, else from the
    (Z, Y, X) voxel size ``voxel_nm`` when known (:func:`known_z_step`), else estimated from the
    images (:func:`estimate_z_step`)."""
    if z_step is not None:
        return z_step
    known = known_z_step(voxel_nm)
    return known if known is not None else estimate_z_step(image)


def known_z_step(voxel_nm) -> float | None:
    """The z step in Y/X pixels from a (Z, Y, X) voxel size, None when it is not known."""
    if voxel_nm is None or np.size(voxel_nm) != 3:
        return None
    dz, dy = float(voxel_nm[0]), float(voxel_nm[1])
    return dz / dy if dz > 0 and dy > 0 and np.isfinite(dz / dy) else None


def estimate_z_step(image, pairs: int = 8, side: int = 512) -> float | None:
    """The z step of a (Z, Y, X) stack in Y/X pixels, estimated from the images: the in-plane
    shift at which a slice correlates with itself as much as it does with the next slice.

    Up to ``pairs`` adjacent pairs spread over the stack, the centre ``side`` x ``side`` of each
    (pairs that are not neighbours in space are left out); the median z correlation is matched
    against the median in-plane correlation at :data:`XY_LAGS`. Read at most 2 * ``pairs``
    crops. Lucchi++ (5 nm isotropic FIB-SEM) gives 1.10-1.17, every 2nd or 3rd of its slices
    2.03 or 2.92, the SBEM stacks 4.60-6.39 (``benchmarks/neighbours.py``). None for a single
    slice or when no pair is neighbours; below 1 for slices more alike than adjacent pixels;
    :data:`XY_LAGS`' last when beyond it.
    """
    if getattr(image, "ndim", 0) != 3 or image.shape[0] < 2:
        return None
    z, h, w = image.shape
    ch, cw = min(side, h), min(side, w)
    y0, x0 = (h - ch) // 2, (w - cw) // 2
    z_corr, xy_corr = [], []
    for i in np.unique(np.linspace(0, z - 2, min(pairs, z - 1)).round().astype(int)):
        a, b = (_unit(image[j, y0 : y0 + ch, x0 : x0 + cw]) for j in (i, i + 1))
        if a is None or b is None or not are_neighbours(signature(a), signature(b)):
            continue
        z_corr.append(_pearson(a, b))
        xy_corr.append([0.5 * (_pearson(a[:, d:], a[:, :-d]) + _pearson(a[d:], a[:-d]))
                        if d < min(ch, cw) else 0.0 for d in XY_LAGS])
    if not z_corr:
        return None
    cz = float(np.median(z_corr))
    curve = np.minimum.accumulate(np.median(np.asarray(xy_corr), axis=0))  # falling with the shift
    lags, corr = np.array((0.0, *XY_LAGS)), np.concatenate([[1.0], curve])
    return float(np.interp(-cz, -corr, lags))


def _unit(crop) -> np.ndarray | None:
    """A crop as float32 in [0, 1] (non-finite pixels at its mean); None without contrast."""
    x = np.asarray(_float64_to_unit(np.asarray(crop)), dtype=np.float32)
    finite = np.isfinite(x)
    if not finite.all():
        x = np.where(finite, x, np.float32(x[finite].mean() if finite.any() else 0.0))
    return x if float(x.std()) > 1e-6 else None


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a = a - a.mean(dtype=np.float64)
    b = b - b.mean(dtype=np.float64)
    den = float(np.sqrt((a * a).mean(dtype=np.float64) * (b * b).mean(dtype=np.float64)))
    return float((a * b).mean(dtype=np.float64)) / den if den > 0 else 0.0


def smooth_stack(probs: Sequence[np.ndarray], image, z_step: float | None = None) -> list[np.ndarray]:
    """The (Y, X) probabilities of the (Z, Y, X) ``image``'s slices, smoothed along z as
    segmenting smooths them (``z_step`` None: estimated from ``image``)."""
    step = resolve_z_step(image, z_step)
    sigs = (signature(image[i]) for i in range(len(probs)))
    return list(smooth_z(iter(probs), sigs, wide=smoothing_is_wide(step)))

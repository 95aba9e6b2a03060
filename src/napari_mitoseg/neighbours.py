"""Which adjacent slices of a stack are neighbours in space, and smoothing along z across those only.

A z-series (serial sections, FIB-SEM, SBEM) changes little from one slice to the next; a stack of
separate micrographs (other cells, grids or days) does not. Averaging probabilities along z helps
the first and wrecks the second, so :func:`smooth_z` smooths only across pairs of slices that
:func:`are_neighbours` accepts.

The decision is made per pair from the two slices alone (:func:`signature` of each, then their
correlation against :data:`MIN_CORRELATION`): it streams with one slice of lag, and a block of a
stack read with one slice of margin on each side decides every pair inside it as a pass over the
whole stack does, so a cluster needs nothing global.

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
    verb = "is" if len(cut) == 1 else "are"
    return f"slices {shown} {verb} not neighbours; not smoothed across them"


def smooth_z(probs: Iterable[np.ndarray], links: Iterable[bool] | None = None) -> Iterator[np.ndarray]:
    """Stream (Y, X) probability slices through a [1/4, 1/2, 1/4] filter along z.

    Mitochondria are continuous across thin EM sections, so a pixel that is foreground in
    its neighbours is more likely foreground itself. ``links`` (one bool per adjacent pair, in
    order, read as the slices arrive; None: all True) says which pairs are neighbours in space:
    a slice is averaged only with its neighbours, [2/3, 1/3] with one (as the first and last
    slices are), left as it is with none. One slice of lag, bounded memory.
    """
    link_it = iter(links) if links is not None else None
    window: list[np.ndarray] = []  # the previous, current slices
    prev_link = False  # current slice linked to the previous one
    for p in probs:
        if window:
            link = True if link_it is None else bool(next(link_it))
            yield _mix(window[-2] if len(window) == 2 and prev_link else None, window[-1],
                       p if link else None)
            prev_link = link
        window = [*window[-1:], p]
    if window:
        yield _mix(window[-2] if len(window) == 2 and prev_link else None, window[-1], None)


def _mix(before: np.ndarray | None, p: np.ndarray, after: np.ndarray | None) -> np.ndarray:
    if before is not None and after is not None:
        return 0.25 * before + 0.5 * p + 0.25 * after
    other = before if before is not None else after
    return p if other is None else (2 * p + other) / 3

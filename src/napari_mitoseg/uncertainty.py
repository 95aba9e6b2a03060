"""How unsure the model is, without ground truth: a per-pixel map, a per-slice number, and the
slices worth correcting first.

Both come from the probabilities the segmentation makes anyway, so they cost next to nothing.
A pixel is unsure where its probability lies near the threshold (:func:`uncertainty_map`). A
slice is likely wrong where many pixels are unsure compared with what it calls foreground
(:func:`slice_uncertainty`): an error of a few boundary pixels matters little on a slice full of
mitochondria and much on a slice with one small one, as 1 - IoU does. The measure was chosen among
others on the training stacks' validation blocks (``benchmarks/uncertainty.py``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: pixels within this distance of the threshold count as unsure in :func:`slice_uncertainty`
BAND = 0.2
#: foreground pixels added to the denominator, so that nearly empty slices do not dominate
PRIOR_PIXELS = 0.002


def uncertainty_map(prob: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """(Y, X) float32 in [0, 1]: 1 where ``prob`` equals the threshold, 0 at certainty (0 or 1)."""
    p = np.asarray(prob, dtype=np.float32)
    t = np.float32(threshold)
    below = np.clip((p - 0) / max(t, 1e-6), 0, 1)
    above = np.clip((1 - p) / max(1 - t, 1e-6), 0, 1)
    return np.where(p <= t, below, above).astype(np.float32)


def to_uint8(umap: np.ndarray) -> np.ndarray:
    """An :func:`uncertainty_map` (values in [0, 1]) as uint8 0..255."""
    return np.clip(np.rint(np.asarray(umap, np.float32) * 255), 0, 255).astype(np.uint8)


def slice_uncertainty(prob: np.ndarray, threshold: float = 0.5) -> float:
    """One number for a (Y, X) probability slice, higher = more likely wrong: the pixels within
    :data:`BAND` of the threshold, over those called foreground plus the unsure ones plus a small
    prior (:data:`PRIOR_PIXELS` of the slice). In [0, 1]."""
    p = np.asarray(prob, dtype=np.float32)
    unsure = np.count_nonzero(np.abs(p - np.float32(threshold)) < BAND)
    fg = np.count_nonzero(p > threshold)
    return float(unsure / (fg + unsure + PRIOR_PIXELS * p.size))


def suggest_slices(uncertainty: Sequence[float], n: int = 2, min_gap: int | None = None) -> list[int]:
    """The ``n`` slice indices to correct first: the most uncertain, at least ``min_gap`` slices
    apart (default: the stack's length over 2n, so that they spread along z and are not
    near-duplicates); sorted by uncertainty, highest first. Fewer when the stack is shorter."""
    u = np.asarray(uncertainty, dtype=np.float64)
    if n < 1:
        raise ValueError(f"the number of slices to suggest must be at least 1, got {n}")
    if u.ndim != 1 or u.size == 0:
        raise ValueError("give one uncertainty per slice (a non-empty list)")
    gap = max(1, len(u) // (2 * n)) if min_gap is None else max(1, int(min_gap))
    chosen: list[int] = []
    for i in np.argsort(-np.nan_to_num(u, nan=-1.0), kind="stable"):
        if all(abs(int(i) - c) >= gap for c in chosen):
            chosen.append(int(i))
            if len(chosen) == n:
                break
    return chosen


class UncertaintyRecorder:
    """Collects each slice's uncertainty from the slice results of a segmentation (call it with
    each :class:`~napari_mitoseg.inference.SliceResult`); with ``shape`` (Z, Y, X) it also keeps
    the uint8 :func:`uncertainty_map` of every slice in :attr:`map` (1 byte per voxel)."""

    def __init__(self, shape: tuple[int, ...] | None = None) -> None:
        self._values: dict[int, float] = {}
        self.map = None if shape is None else np.zeros(shape if len(shape) == 3 else (1, *shape), np.uint8)

    def __call__(self, result) -> None:
        self._values[result.index] = round(result.uncertainty, 4)
        if self.map is not None:
            self.map[result.index] = to_uint8(result.uncertainty_map())

    @property
    def values(self) -> list[float]:
        """The uncertainty of each slice recorded, in slice order."""
        return [self._values[i] for i in sorted(self._values)]

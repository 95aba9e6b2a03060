"""Checked regions: learn from the part of a slice the user checked, the rest unlabelled.

Big slices are corrected region by region. A *checked* mask (nonzero: the user checked this
pixel) marks what is done; on each training slice that has checked pixels, every unchecked pixel
becomes :data:`~.config.IGNORE` (unlabelled: left out of the loss and of the scores). A training
slice with no checked pixel at all trains whole, as without a checked mask: no region drawn on a
slice means the whole slice was checked.

``checked`` comes as a (Z, Y, X) array of the labels' shape (a 2D stack's (Y, X) too), or as a
mapping ``{z: (Y, X) array}`` of the slices that have regions (a slice not in it trains whole);
either way only the training slices' planes are read, so a lazy (dask, zarr) mask stays unread
elsewhere.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

from .config import AUTO, IGNORE, TrainingError


def checked_regions(checked, shape: tuple[int, ...], slices: Iterable[int]) -> dict[int, np.ndarray]:
    """Each of ``slices`` that has checked pixels -> its (Y, X) bool checked mask.

    ``shape``: the labels' (Z, Y, X) (or (Y, X)) shape. Slices without a checked pixel are left
    out (they train whole). Raises :class:`TrainingError` for a mask of another shape, a mapping
    whose keys are not slices of the stack or whose planes are not (Y, X), or NaN."""
    shape = tuple(int(n) for n in shape)
    if len(shape) == 2:
        shape = (1, *shape)
    if len(shape) != 3:
        raise TrainingError(f"the labels must be (Z, Y, X) or (Y, X) for checked regions, got {shape}")
    planes = _planes(checked, shape)
    out = {}
    for z in sorted({int(s) for s in slices}):
        if z not in planes:
            continue
        plane = _as_bool(planes[z], shape[1:], f"the checked mask of slice {z}")
        if plane.any():
            out[z] = plane
    return out


def _planes(checked, shape: tuple[int, int, int]):
    """``checked`` as something indexed by slice number (a mapping or a (Z, Y, X) array)."""
    if isinstance(checked, Mapping):
        bad = [k for k in checked if not (isinstance(k, int | np.integer) and 0 <= k < shape[0])]
        if bad:
            raise TrainingError(f"checked regions given for slice(s) {bad!r}: the stack has {shape[0]} "
                                f"slice(s), numbered 0 to {shape[0] - 1}")
        return {int(k): v for k, v in checked.items()}
    if not hasattr(checked, "shape"):
        checked = np.asarray(checked)
    got = tuple(checked.shape)
    if got == shape[1:] and shape[0] == 1:
        return {0: checked}
    if got != shape:
        raise TrainingError(f"the checked mask {got} and the labels {shape} differ in shape: give a "
                            "mask of the image's shape (nonzero: checked), or one (Y, X) mask per slice")
    return _SliceView(checked, shape[0])


class _SliceView:
    """``z in view`` and ``view[z]`` over a (Z, Y, X) array, reading one plane at a time."""

    def __init__(self, arr, depth: int) -> None:
        self.arr, self.depth = arr, depth

    def __contains__(self, z: int) -> bool:
        return 0 <= z < self.depth

    def __getitem__(self, z: int):
        return self.arr[z]


def _as_bool(plane, yx: tuple[int, int], name: str) -> np.ndarray:
    a = np.asarray(plane)
    if a.shape != yx:
        raise TrainingError(f"{name} is {a.shape}, not the slice's {yx}")
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        raise TrainingError(f"{name} holds NaN or infinite values; give 0 (unchecked) and nonzero (checked)")
    if a.dtype.kind not in "biuf":
        raise TrainingError(f"{name} has dtype {a.dtype}; give a boolean or integer mask")
    return a != 0


def mask_unchecked(masks: np.ndarray, regions: Mapping[int, np.ndarray], copy: bool = True) -> np.ndarray:
    """(Z, Y, X) uint8 training masks (0, 1, IGNORE) with the pixels outside each slice's region
    (``regions`` from :func:`checked_regions`) set to IGNORE; slices without one as they were.
    ``copy=False`` changes ``masks`` in place."""
    out = np.array(masks, copy=True) if copy else masks
    view = out if out.ndim == 3 else out[None]
    for z, region in regions.items():
        view[z][~region] = IGNORE
    return out


def checked_training_masks(labels, checked, slices: Iterable[int] | None = None,
                           ignore_value: int | str | None = AUTO) -> np.ndarray:
    """Labels -> uint8 training masks (0 background, 1 mitochondrion, IGNORE unlabelled, read by
    :func:`~.volumes.training_masks` with ``ignore_value``), with the unchecked pixels of each of
    ``slices`` (default: every slice) that has checked pixels set to IGNORE. ``checked``: see the
    module; a slice without a checked pixel trains whole."""
    from .volumes import training_masks

    m = training_masks(labels, ignore_value)
    slices = range(m.shape[0] if m.ndim == 3 else 1) if slices is None else slices
    return mask_unchecked(m, checked_regions(checked, m.shape, slices), copy=False)


def checked_shares(regions: Mapping[int, np.ndarray], slices: Iterable[int]) -> dict[int, float | None]:
    """Each slice -> the share (0-1) of its pixels checked, or None where it trains whole."""
    return {int(z): (float(regions[z].mean()) if z in regions else None) for z in sorted(set(slices))}


def overall_share(shares: Mapping[int, float | None]) -> float:
    """The share of the slices' pixels that train (a whole slice counts as 1; equal-sized slices)."""
    if not shares:
        return 1.0
    return float(np.mean([1.0 if s is None else s for s in shares.values()]))


def describe_shares(shares: Mapping[int, float | None]) -> str:
    """"slice 3: 48% checked; slice 7: whole slice" (a share under 1% shows as "<1%")."""
    def pct(s: float) -> str:
        return "<1%" if 0 < s < 0.01 else f"{s:.0%}"

    return "; ".join(f"slice {z}: " + ("whole slice" if s is None else f"{pct(s)} checked")
                     for z, s in sorted(shares.items()))

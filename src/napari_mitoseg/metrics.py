"""Foreground segmentation scores (numpy only): IoU, Dice, precision, recall.

Inputs are binarised explicitly (``> 0``). Empty cases are defined: when both prediction and
ground truth are empty every score is 1.0 (nothing to find, nothing found); when only one is
empty the undefined ratios are 0.0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np


class ShapeMismatchError(ValueError):
    """Prediction and ground truth differ in shape."""


class NotAMaskError(ValueError):
    """An array given as a mask or label volume is not one (a grey image, probabilities, NaN)."""


#: a label volume is piecewise constant: under this share of neighbouring pixels differ
#: (EM images, noisy, have most neighbours differ)
LABEL_EDGE_SHARE = 0.1


def label_sample(arr, side: int = 512) -> np.ndarray:
    """A small sample of a (Z, Y, X) or (Y, X) array (numpy, dask, zarr): the first, middle and
    last slices, each cropped to its central ``side`` x ``side`` pixels (contiguous, so
    neighbours stay neighbours). Reads only that much of a lazy array."""
    if arr.ndim == 2:
        arr = arr[None]
    z, h, w = arr.shape[-3:]
    y0, x0 = max(0, (h - side) // 2), max(0, (w - side) // 2)
    return np.stack([np.asarray(arr[i, y0 : y0 + side, x0 : x0 + side]) for i in sorted({0, z // 2, z - 1})])


def looks_like_labels(sample: np.ndarray) -> bool:
    """Whether an integer array is a mask or label volume rather than a grey image: at most two
    values (a binary mask, 0/1 or 0/255), or piecewise constant (under
    :data:`LABEL_EDGE_SHARE` of neighbouring pixels differ: label regions). Floats: never."""
    a = np.asarray(sample)
    if a.dtype == bool:
        return True
    if a.dtype.kind not in "iu":
        return False
    if len(np.unique(a)) <= 2:
        return True
    if a.shape[-1] < 2:
        return False
    return float(np.mean(a[..., 1:] != a[..., :-1])) < LABEL_EDGE_SHARE


def check_mask(arr, name: str = "the prediction") -> None:
    """Raise :class:`NotAMaskError` unless ``arr`` is a mask or label volume: integer (or bool,
    or whole finite floats), none negative, and label-like (:func:`looks_like_labels`) on a sample."""
    a = np.asarray(arr)
    if a.dtype.kind == "f":
        if not np.isfinite(a).all():
            raise NotAMaskError(f"{name} holds NaN or inf: it is not a mask or label volume")
        if (a != np.round(a)).any():
            raise NotAMaskError(f"{name} holds fractional values (probabilities or a grey image), "
                                "not a mask or label volume: threshold it first")
        a = a.astype(np.int64)
    elif a.dtype.kind not in "biu":
        raise NotAMaskError(f"{name} has dtype {a.dtype}: not a mask or label volume")
    if a.dtype.kind == "i" and a.size and a.min() < 0:
        raise NotAMaskError(f"{name} holds negative values (down to {int(a.min())}): a mask or label "
                            "volume is 0 for background and > 0 for mitochondria")
    if a.ndim in (2, 3) and not looks_like_labels(label_sample(a)):
        raise NotAMaskError(f"{name} looks like a grey image (its neighbouring pixels mostly differ), "
                            "not a mask or label volume: give a segmentation (0 background, > 0 "
                            "mitochondrion)")


@dataclass(frozen=True)
class Counts:
    tp: int
    fp: int
    fn: int
    tn: int

    def __add__(self, other: Counts) -> Counts:
        return Counts(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn, self.tn + other.tn)


@dataclass(frozen=True)
class Scores:
    iou: float
    dice: float
    precision: float
    recall: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def _ratio(num: int, den: int, both_empty: bool) -> float:
    if den == 0:
        return 1.0 if both_empty else 0.0
    return num / den


def counts(pred, gt, ignore=None) -> Counts:
    """Confusion counts of binarised ``pred`` against ``gt``; ``ignore`` (bool) pixels skipped."""
    pred = np.asarray(pred)
    gt = np.asarray(gt)
    if pred.shape != gt.shape:
        raise ShapeMismatchError(
            f"prediction shape {pred.shape} does not match ground truth shape {gt.shape}"
        )
    p = pred > 0
    g = gt > 0
    if ignore is not None:
        keep = ~np.asarray(ignore, bool)
        p, g = p[keep], g[keep]
    tp = int(np.count_nonzero(p & g))
    fp = int(np.count_nonzero(p & ~g))
    fn = int(np.count_nonzero(~p & g))
    return Counts(tp, fp, fn, int(p.size) - tp - fp - fn)


def scores_from_counts(c: Counts) -> Scores:
    empty = c.tp + c.fp + c.fn == 0
    return Scores(
        iou=_ratio(c.tp, c.tp + c.fp + c.fn, empty),
        dice=_ratio(2 * c.tp, 2 * c.tp + c.fp + c.fn, empty),
        precision=_ratio(c.tp, c.tp + c.fp, empty),
        recall=_ratio(c.tp, c.tp + c.fn, empty),
    )


def score(pred, gt, ignore=None) -> Scores:
    """Overall scores of ``pred`` against ``gt`` (any equal shapes)."""
    return scores_from_counts(counts(pred, gt, ignore))


def iou(pred, gt) -> float:
    return score(pred, gt).iou


def _slice_counts(pred, gt) -> list[Counts]:
    """Confusion counts of each slice of (Z, Y, X) stacks (a 2D pair counts as one slice)."""
    pred = np.asarray(pred)
    gt = np.asarray(gt)
    if pred.shape != gt.shape:
        raise ShapeMismatchError(
            f"prediction shape {pred.shape} does not match ground truth shape {gt.shape}"
        )
    if pred.ndim == 2:
        pred, gt = pred[None], gt[None]
    return [counts(p, g) for p, g in zip(pred, gt, strict=True)]


def score_per_slice(pred, gt) -> list[Scores]:
    """Scores of each slice of (Z, Y, X) stacks (a 2D pair counts as one slice)."""
    return [scores_from_counts(c) for c in _slice_counts(pred, gt)]


@dataclass(frozen=True)
class Report:
    overall: Scores
    per_slice: list[Scores]

    def as_dict(self) -> dict:
        d = self.overall.as_dict()
        d["slices"] = [s.as_dict() for s in self.per_slice]
        return d


def report_from_counts(per_slice: Sequence[Counts]) -> Report:
    """The :class:`Report` of a stack from its slices' confusion counts, e.g. gathered slice
    by slice while a stack larger than memory streams through."""
    total = sum(per_slice, Counts(0, 0, 0, 0))
    return Report(scores_from_counts(total), [scores_from_counts(c) for c in per_slice])


def evaluate(pred, gt) -> Report:
    """Overall and per-slice scores of (Z, Y, X) ``pred`` against ``gt``."""
    return report_from_counts(_slice_counts(pred, gt))


#: Values of :func:`error_map`.
FALSE_POSITIVE, FALSE_NEGATIVE = 1, 2


def error_map(pred, gt) -> np.ndarray:
    """Where binarised ``pred`` and ``gt`` disagree, same shape, uint8: 0 agree,
    :data:`FALSE_POSITIVE` (1) predicted but not true, :data:`FALSE_NEGATIVE` (2) missed."""
    pred = np.asarray(pred)
    gt = np.asarray(gt)
    if pred.shape != gt.shape:
        raise ShapeMismatchError(
            f"prediction shape {pred.shape} does not match ground truth shape {gt.shape}"
        )
    p, g = pred > 0, gt > 0
    out = np.zeros(p.shape, np.uint8)
    out[p & ~g] = FALSE_POSITIVE
    out[~p & g] = FALSE_NEGATIVE
    return out

"""One EM slice to network input: robust percentile normalisation, NaN / inf and flat slices."""

from __future__ import annotations

import logging

import numpy as np

logger = logging.getLogger("napari_mitoseg.inference")


def non_finite(slice_: np.ndarray) -> np.ndarray | None:
    """(Y, X) bool mask of the NaN / inf pixels of a float slice; None when there are none."""
    if slice_.dtype.kind != "f":
        return None
    bad = ~np.isfinite(slice_)
    return bad if bad.any() else None


def check_slice(slice_: np.ndarray, index: int) -> np.ndarray | None:
    """Warn about a slice the model cannot read as it is: NaN / inf pixels (with their count;
    they are left out of the normalisation and read as background) and slices without contrast
    (every pixel the same). Returns the non-finite mask (or None)."""
    bad = non_finite(slice_)
    if bad is not None:
        n = int(bad.sum())
        if n == bad.size:
            logger.warning("slice %d holds no finite pixel (all NaN or inf): read as background", index)
            return bad
        logger.warning("slice %d: %d pixel(s) are NaN or inf; left out of the normalisation and "
                       "read as background", index, n)
    finite = slice_ if bad is None else slice_[~bad]
    lo, hi = finite.min(), finite.max()
    if lo == hi:
        logger.warning("slice %d has no contrast (every pixel is %g): nothing can be found in it",
                       index, float(lo))
    return bad


def normalise01(slice_: np.ndarray, mode: str = "percentile") -> np.ndarray:
    """Map one (Y, X) slice of any numeric dtype to float32 in [0, 1].

    ``percentile``: the slice's 0.5th..99.5th percentile -> [0, 1], clipped (robust to dtype,
    brightness and contrast, so stacks from other microscopes land in the same range);
    ``none``: integer images divided by their dtype maximum, floats clipped to [0, 1].
    NaN / inf pixels are left out of the percentiles and map to 0 (the low end). Float64
    slices are first mapped to [0, 1] in float64 (the percentile mapping ignores such an affine
    step), so values beyond float32's range (1e302, 1e-298) keep their contrast.
    """
    x = np.asarray(slice_ if mode == "none" else _float64_to_unit(slice_), dtype=np.float32)
    bad = non_finite(x)
    if mode == "none":
        dt = np.asarray(slice_).dtype
        scale = float(np.iinfo(dt).max) if np.issubdtype(dt, np.integer) else 1.0
        out = np.clip(x / scale, 0.0, 1.0)
        if bad is not None:
            out[bad] = 0.0
        return out
    if bad is not None:  # NaN / inf: left out of the percentiles, then set to the low end
        if bad.all():
            return np.zeros_like(x)
        x = np.where(bad, np.float32(0), x)
    sub_slice = (slice(None, None, max(1, x.shape[0] // 512)), slice(None, None, max(1, x.shape[1] // 512)))
    sub = x[sub_slice] if bad is None else x[sub_slice][~bad[sub_slice]]
    if sub.size == 0:
        sub = x[~bad]
    lo, hi = np.percentile(sub, (0.5, 99.5))
    if bad is not None:
        x[bad] = lo
    if hi - lo < 1e-6:
        return np.zeros_like(x)
    return np.clip((x - np.float32(lo)) / np.float32(hi - lo), 0.0, 1.0, dtype=np.float32)


def _float64_to_unit(slice_):
    """A float64 slice mapped to [0, 1] by its finite min and max without overflow (divided by
    its largest magnitude first); NaN / inf stay non-finite. Other dtypes pass unchanged."""
    a = np.asarray(slice_)
    finite = a[np.isfinite(a)] if a.dtype.kind == "f" and a.dtype.itemsize > 4 else a[:0]
    m = float(np.abs(finite).max()) if finite.size else 0.0
    if m == 0.0:
        return a
    lo, hi = float(finite.min()) / m, float(finite.max()) / m
    return (a / m - lo) / (hi - lo) if hi > lo else a / m - lo


def normalise(slice_: np.ndarray, mode: str = "percentile") -> np.ndarray:
    """(Y, X) slice -> float32 network input in [-1, 1] (see :func:`normalise01`)."""
    return normalise01(slice_, mode) * np.float32(2.0) - np.float32(1.0)

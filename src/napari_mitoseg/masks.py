"""Tell a mask or label volume from a grey-scale image (numpy only).

A widget offers the EM stack, not its ground truth, as the image to segment or fine-tune on,
and refuses a mask chosen as the image; both use :func:`looks_like_mask`.
"""

from __future__ import annotations

import numpy as np

#: central crop (pixels per side) of each sampled slice that :func:`looks_like_mask` reads
SAMPLE_SIDE = 512
#: fraction of horizontally neighbouring pixels that are equal, above which whole-number data
#: with more than two values reads as a label volume (EM noise keeps it far lower: ~0.1)
FLAT_FRACTION = 0.9


def _sample(image) -> np.ndarray:
    """Up to three slices (first, middle, last) of a (Z, Y, X) or (Y, X) array, each cropped to
    its central :data:`SAMPLE_SIDE` square; a lazy array reads only those pixels."""
    shape = tuple(image.shape)
    h, w = shape[-2:]
    y0, x0 = max(0, (h - SAMPLE_SIDE) // 2), max(0, (w - SAMPLE_SIDE) // 2)
    crop = (slice(y0, y0 + SAMPLE_SIDE), slice(x0, x0 + SAMPLE_SIDE))
    if len(shape) == 2:
        return np.asarray(image[crop])[None]
    zs = sorted({0, shape[0] // 2, shape[0] - 1})
    return np.stack([np.asarray(image[(z, *crop)]) for z in zs])


def looks_like_mask(image) -> bool:
    """Whether ``image`` ((Z, Y, X) or (Y, X), numpy, dask or zarr) reads as a mask or label
    volume rather than a grey-scale image.

    True for bool data; for whole-number data (any dtype) with at most two distinct values
    (0/1, 0/255, a blank stack); and for whole-number data whose neighbouring pixels are
    nearly all equal (at least :data:`FLAT_FRACTION`, as in labelled objects on a background).
    Only a sample is read (see :func:`_sample`), so a large lazy stack stays unread.
    """
    shape = tuple(getattr(image, "shape", ()))
    if len(shape) not in (2, 3) or 0 in shape:
        return False
    if np.dtype(image.dtype) == bool:
        return True
    s = _sample(image)
    if not (np.issubdtype(s.dtype, np.integer) or np.issubdtype(s.dtype, np.floating)):
        return False
    if np.issubdtype(s.dtype, np.floating) and not (np.isfinite(s).all() and (s == np.round(s)).all()):
        return False
    values = np.unique(s)
    if values.size <= 2:
        return True
    if s.shape[-1] < 2:
        return False
    return float(np.mean(s[..., 1:] == s[..., :-1])) >= FLAT_FRACTION

"""Masks to objects: small specks removed, one id per 3D-connected mitochondrion."""

from __future__ import annotations

import numpy as np


def remove_small(mask, min_size: int = 64) -> np.ndarray:
    """(Z, Y, X) mask -> bool mask without 3D connected objects smaller than ``min_size`` voxels."""
    from skimage.morphology import remove_small_objects

    m = np.asarray(mask) > 0
    if min_size <= 0:
        return m
    return remove_small_objects(m, max_size=min_size - 1, connectivity=1)


def instances(mask, min_size: int = 64) -> np.ndarray:
    """(Z, Y, X) binary mask -> (Z, Y, X) int32 labels, one id per 3D-connected mitochondrion.

    Objects smaller than ``min_size`` voxels are dropped; ids are consecutive from 1.
    """
    from skimage.measure import label

    m = remove_small(mask, min_size)
    return label(m, connectivity=1).astype(np.int32)

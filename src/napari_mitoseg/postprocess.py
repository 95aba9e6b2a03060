"""From a binary mask to one object per mitochondrion, and measurements of each.

All on scikit-image / scipy: 3D connected components, small-object removal, region properties.
"""

from __future__ import annotations

import csv
import os
from dataclasses import asdict, dataclass
from pathlib import Path

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


@dataclass(frozen=True)
class ObjectMeasure:
    """One mitochondrion. ``volume`` is in the units of ``voxel_size`` cubed."""

    id: int
    voxels: int
    volume: float
    centroid_z: float
    centroid_y: float
    centroid_x: float
    z_first: int
    z_last: int
    slices: int


def measure(labels, voxel_size: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> list[ObjectMeasure]:
    """Per-object measurements of a (Z, Y, X) label volume; centroids in physical units."""
    from skimage.measure import regionprops

    lab = np.asarray(labels)
    if lab.ndim == 2:
        lab = lab[None]
    vz, vy, vx = (float(v) for v in voxel_size)
    out = []
    for r in regionprops(lab.astype(np.int64, copy=False)):
        cz, cy, cx = r.centroid
        z0, _, _, z1, _, _ = r.bbox
        out.append(
            ObjectMeasure(
                id=int(r.label), voxels=int(r.area), volume=float(r.area) * vz * vy * vx,
                centroid_z=cz * vz, centroid_y=cy * vy, centroid_x=cx * vx,
                z_first=int(z0), z_last=int(z1 - 1), slices=int(z1 - z0),
            )
        )
    return out


def write_csv(rows: list[ObjectMeasure], path: str | os.PathLike) -> Path:
    """Write measurements as CSV (header = field names), atomically."""
    from .io import _atomic_file

    fields = list(ObjectMeasure.__dataclass_fields__)

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields)
            w.writeheader()
            for r in rows:
                w.writerow(asdict(r))

    return _atomic_file(Path(path), write)

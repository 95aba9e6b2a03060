"""Object-level corrections of a (Z, Y, X) instance label volume: delete, merge, split.

Each function returns an :class:`Edit` (which voxels get which ids) instead of changing the
array, so a caller can apply it as one undoable step (napari: ``Labels.data_setitem`` inside
``block_history``) or with :func:`apply`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from .morphology import MeasureError, check_voxel_size


@dataclass(frozen=True)
class Edit:
    """New ``values`` for the voxels at ``index`` (a tuple of 1D coordinate arrays, Z, Y, X)."""

    index: tuple[np.ndarray, ...]
    values: np.ndarray

    @property
    def size(self) -> int:
        return int(self.values.size)


#: a watershed split leaving a part smaller than this share of the object falls back to a cut
MIN_PART = 0.15


def apply(labels: np.ndarray, edit: Edit) -> np.ndarray:
    """Apply ``edit`` to ``labels`` in place; returns it."""
    labels[edit.index] = edit.values
    return labels


def _present(lab: np.ndarray, ids: Iterable[int]) -> list[int]:
    ids = sorted({int(i) for i in ids})
    if not ids or min(ids) <= 0:
        raise MeasureError(f"object ids must be positive, got {ids}")
    missing = [i for i in ids if not np.any(lab == i)]
    if missing:
        raise MeasureError(f"no object with id {', '.join(map(str, missing))} in the labels")
    return ids


def delete(labels, ids: Iterable[int]) -> Edit:
    """Set the objects ``ids`` to background (0)."""
    lab = np.asarray(labels)
    ids = _present(lab, ids)
    index = np.nonzero(np.isin(lab, ids))
    return Edit(index, np.zeros(index[0].size, lab.dtype))


def merge(labels, ids: Iterable[int]) -> Edit:
    """Give the objects ``ids`` (two or more) the smallest of their ids."""
    lab = np.asarray(labels)
    ids = _present(lab, ids)
    if len(ids) < 2:
        raise MeasureError("choose at least two objects to merge")
    index = np.nonzero(np.isin(lab, ids[1:]))
    return Edit(index, np.full(index[0].size, ids[0], lab.dtype))


def split(labels, obj_id: int, voxel_size, new_id: int | None = None) -> Edit:
    """Split object ``obj_id`` in two; the second part gets ``new_id`` (default: max id + 1).

    A seeded watershed on the distance to the object's boundary (in physical units, from
    ``voxel_size`` (Z, Y, X) nm), seeded at its two deepest separated points: two touching
    mitochondria part along their neck. When the distance map has one maximum only (a plain
    tube or ball), or the watershed leaves a part under :data:`MIN_PART` of the object, it is
    cut through its centroid, across its longest axis.
    """
    from scipy import ndimage as ndi
    from skimage.feature import peak_local_max
    from skimage.segmentation import watershed

    lab = np.asarray(labels)
    if lab.ndim == 2:
        lab = lab[None]
    vox = check_voxel_size(voxel_size)
    (obj_id,) = _present(lab, [obj_id])
    new_id = int(lab.max()) + 1 if new_id is None else int(new_id)
    if new_id <= 0 or (new_id != obj_id and np.any(lab == new_id)):
        raise MeasureError(f"id {new_id} is already used; choose a free id for the new part")
    if new_id > np.iinfo(lab.dtype).max:
        raise MeasureError(f"id {new_id} does not fit the labels' type {lab.dtype}")
    box = ndi.find_objects((lab == obj_id).astype(np.uint8))[0]
    mask = np.pad(lab[box] == obj_id, 1)
    if mask.sum() < 2:
        raise MeasureError(f"object {obj_id} is a single voxel; nothing to split")
    dist = ndi.distance_transform_edt(mask, sampling=vox)
    min_dist = max(1, int(dist.max() / min(vox)))
    peaks = peak_local_max(dist, labels=mask.astype(np.int32), num_peaks=2, min_distance=min_dist,
                           exclude_border=False)
    parts = None
    if len(peaks) == 2:
        markers = np.zeros(mask.shape, np.int32)
        markers[tuple(peaks[0])] = 1
        markers[tuple(peaks[1])] = 2
        parts = watershed(-dist, markers, mask=mask)
        smaller = min(np.count_nonzero(parts == 1), np.count_nonzero(parts == 2))
        if smaller < MIN_PART * np.count_nonzero(mask):  # two maxima on one ridge: not a neck
            parts = None
    if parts is None:
        parts = _cut_across_major_axis(mask, vox)
    second = np.nonzero(parts[1:-1, 1:-1, 1:-1] == 2)
    index = tuple(c + s.start for c, s in zip(second, box, strict=True))
    if np.ndim(labels) == 2:
        index = index[1:]
    return Edit(index, np.full(index[0].size, new_id, lab.dtype))


def _cut_across_major_axis(mask: np.ndarray, vox) -> np.ndarray:
    """1 / 2 on either side of the plane through the centroid normal to the longest axis."""
    coords = np.argwhere(mask).astype(float) * np.asarray(vox)
    centred = coords - coords.mean(axis=0)
    _, vecs = np.linalg.eigh(np.cov(centred.T) + np.eye(3) * 1e-9)
    side = centred @ vecs[:, -1] > 0
    if side.all() or not side.any():  # one voxel thick along the axis: split the list in half
        side = np.arange(len(side)) >= len(side) // 2
    parts = np.zeros(mask.shape, np.int32)
    idx = tuple(np.argwhere(mask).T)
    parts[idx] = np.where(side, 2, 1)
    return parts

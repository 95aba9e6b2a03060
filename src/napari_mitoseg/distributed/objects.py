"""Instances across blocks: 3D connected components of the mask with ``dask-image``
(:func:`dask_image.ndmeasure.label`: blockwise labels merged across block faces), small objects
dropped and ids renumbered in raster order, so the ids equal the in-memory
:func:`~napari_mitoseg.postprocess.instances`; each object's bounding box is found block-wise,
then the objects are measured on the workers (:mod:`.measure`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .common import LABEL_TMP_ARRAY, MASK_ARRAY
from .measure import measure_on_cluster

#: columns of the per-block label table: id, voxels, first raster index, sums of z, y, x, then
#: the bounding box (min z, max z, min y, max y, min x, max x)
_STATS = 12
_SUMS, _MINS, _MAXS = (1, 3, 4, 5), (2, 6, 8, 10), (7, 9, 11)


def _block_stats(block: np.ndarray, offset: tuple[int, int, int], shape: tuple[int, int, int]) -> np.ndarray:
    """Per-label figures in one block of a label volume (see :data:`_STATS`), as float64."""
    flat = block.ravel()
    idx = np.flatnonzero(flat)
    if idx.size == 0:
        return np.zeros((0, _STATS))
    ids = flat[idx]
    zz, yy, xx = np.unravel_index(idx, block.shape)
    zz, yy, xx = zz + offset[0], yy + offset[1], xx + offset[2]
    raster = np.ravel_multi_index((zz, yy, xx), shape)
    uniq, inv = np.unique(ids, return_inverse=True)
    k = uniq.size
    cols = [uniq, np.bincount(inv, minlength=k), raster,
            np.bincount(inv, zz, k), np.bincount(inv, yy, k), np.bincount(inv, xx, k),
            zz, zz, yy, yy, xx, xx]
    out = np.zeros((k, _STATS))
    for c, v in enumerate(cols):
        if c in _MINS:
            out[:, c] = np.iinfo(np.int64).max
            np.minimum.at(out[:, c], inv, v)
        elif c in _MAXS:
            out[:, c] = -1
            np.maximum.at(out[:, c], inv, v)
        else:
            out[:, c] = v
    return out


def merge_stats(tables: list[np.ndarray]) -> np.ndarray:
    """Combine :func:`_block_stats` rows of the same labels from several blocks."""
    t = np.concatenate([x for x in tables if len(x)] or [np.zeros((0, _STATS))])
    if not len(t):
        return t
    uniq, inv = np.unique(t[:, 0], return_inverse=True)
    out = np.zeros((uniq.size, _STATS))
    out[:, 0] = uniq
    for c in _SUMS:
        np.add.at(out[:, c], inv, t[:, c])
    for c in _MINS:
        out[:, c] = np.inf
        np.minimum.at(out[:, c], inv, t[:, c])
    for c in _MAXS:
        out[:, c] = -1
        np.maximum.at(out[:, c], inv, t[:, c])
    return out


def _relabel_write(block: np.ndarray, lut: np.ndarray, target: str, region: tuple) -> None:
    import zarr

    zarr.open_array(target, mode="r+")[region] = lut[block]


def _label_blocks(group, shape, chunks, client):
    """Connected components of the mask in ``group`` stored block-wise into its temporary label
    array; returns that array as dask blocks, their regions and their offsets."""
    import dask
    import dask.array as da
    from dask_image.ndmeasure import label

    from .. import ngff

    mask = da.from_zarr(group[MASK_ARRAY], chunks=chunks) > 0
    labelled, _ = label(mask)  # face connectivity, as skimage.measure.label(connectivity=1)
    # overwrite: a resumed run redoes this stage
    tmp = ngff._create_array(group, LABEL_TMP_ARRAY, shape, labelled.dtype, overwrite=True)
    dask.compute(da.store(labelled, tmp, lock=False, compute=False), scheduler=client)
    stored = da.from_zarr(group[LABEL_TMP_ARRAY], chunks=chunks)
    regions = da.core.slices_from_chunks(stored.chunks)  # block order of np.ndindex
    offsets = [tuple(r.start for r in reg) for reg in regions]
    return stored.to_delayed().ravel(), regions, offsets


def _renumbering(stats: np.ndarray, min_size: int) -> tuple[np.ndarray, np.ndarray]:
    """The rows of ``stats`` kept (at least ``min_size`` voxels), in raster order of each
    object's first voxel, and the look-up table from block labels to the new ids 1..n."""
    keep = stats[stats[:, 1] >= max(min_size, 1)]
    keep = keep[np.argsort(keep[:, 2], kind="stable")]
    top = int(stats[:, 0].max()) if len(stats) else 0
    lut = np.zeros(top + 1, np.int32)
    lut[keep[:, 0].astype(np.int64)] = np.arange(1, len(keep) + 1, dtype=np.int32)
    return keep, lut


def instances_on_cluster(partial: Path, shape, block_slices: int, min_size: int, voxel, client):
    """3D connected components of the mask in ``partial`` into its level ``0``; returns
    (number of objects, measurements). Same ids as :func:`postprocess.instances`."""
    import dask
    import zarr

    from .. import ngff

    group = zarr.open_group(str(partial), mode="r+")
    chunks = (block_slices, *ngff._chunks(shape)[1:])
    blocks, regions, offsets = _label_blocks(group, shape, chunks, client)
    tables = dask.compute(*[dask.delayed(_block_stats)(b, o, shape) for b, o in zip(blocks, offsets, strict=True)],
                          scheduler=client)
    keep, lut = _renumbering(merge_stats(list(tables)), min_size)
    lut_d = dask.delayed(lut, pure=True)
    target = str(partial / "0")
    writes = [dask.delayed(_relabel_write)(b, lut_d, target, reg) for b, reg in zip(blocks, regions, strict=True)]
    dask.compute(*writes, scheduler=client)
    boxes = [(new_id, tuple(slice(int(r[lo]), int(r[hi]) + 1) for lo, hi in ((6, 7), (8, 9), (10, 11))))
             for new_id, r in enumerate(keep, start=1)]
    return len(keep), measure_on_cluster(target, boxes, shape, voxel.zyx, client)

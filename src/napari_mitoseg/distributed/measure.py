"""Measuring objects on the workers, each from its own bounding box: the figures
:func:`~napari_mitoseg.morphology.measure` gives on the whole volume, without the volume."""

from __future__ import annotations

import numpy as np


def measure_objects(target: str, boxes: list[tuple[int, tuple[slice, ...]]], shape, voxel_nm) -> list:
    """Measure objects of the label array at ``target``, each from its own bounding box
    (``boxes``: (id, box)); returns one :class:`~napari_mitoseg.morphology.MitoMeasure` per box."""
    import dataclasses

    import zarr

    from ..morphology import iter_objects

    arr = zarr.open_array(target, mode="r")
    um = [v / 1000.0 for v in voxel_nm]
    rows = []
    for obj_id, box in boxes:
        crop = np.asarray(arr[box])
        crop = np.where(crop == obj_id, crop, 0)
        (m, _, _), = iter_objects(crop, voxel_nm)
        z0, y0, x0 = (b.start for b in box)
        border = any(b.start == 0 or b.stop == n for b, n in zip(box, shape, strict=True))
        rows.append(dataclasses.replace(
            m, z_first=m.z_first + z0, z_last=m.z_last + z0, touches_border=border,
            centroid_z_um=m.centroid_z_um + z0 * um[0], centroid_y_um=m.centroid_y_um + y0 * um[1],
            centroid_x_um=m.centroid_x_um + x0 * um[2]))
    return rows


def measure_on_cluster(target: str, boxes: list, shape, voxel_nm, client, per_task: int = 64) -> list:
    """:func:`measure_objects` in tasks of ``per_task`` objects on ``client``'s cluster, in the
    order of ``boxes``."""
    import dask

    tasks = [dask.delayed(measure_objects)(target, boxes[i : i + per_task], shape, voxel_nm)
             for i in range(0, len(boxes), per_task)]
    return [m for part in dask.compute(*tasks, scheduler=client) for m in part]

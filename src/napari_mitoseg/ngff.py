"""OME-Zarr label volumes: multiscale pyramids written and read through ome-zarr-py.

- :func:`create_label_pyramid`: a new zarr v2 group laid out as an NGFF v0.4 label image
  (``multiscales`` + ``image-label``): level ``0`` at full resolution and coarser levels halved in
  Y and X (and in Z while Z is no coarser than Y), with ``scale`` transforms in physical units, so
  napari opens a huge result lazily and shows the level that fits the screen. The arrays are
  created empty (chunked one slice deep), so slices or blocks of slices can be written one at a
  time by one process or many; the metadata is written and checked by ``ome_zarr.writer``.
- :func:`fill_pyramid`: compute levels 1.. from level 0 with dask (a 2 x 2 (x 2) **max**: a label
  never invents an id by averaging, and a thin mitochondrion stays visible when zoomed out;
  ome-zarr-py's own downsampling picks the nearest voxel, which drops thin objects).
- :func:`label_stream`: the two above for one process: fill level 0 slice by slice, and the
  pyramid is computed and the folder moved into place when complete.
- :func:`open_label_pyramid`: the levels of a label image, read by ``ome_zarr.reader``.

Every label image written here carries a ``napari-mitoseg`` attribute (:func:`is_our_labels`):
an existing zarr folder is replaced by a new result only when it holds one.

NGFF v0.4 (zarr format 2, https://ngff.openmicroscopy.org/0.4/) rather than v0.5 (zarr
format 3): it is the version that napari-ome-zarr, Fiji/MoBIE, neuroglancer and the validator
all read today; ome-zarr-py reads and writes both.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import __version__
from ._atomic import atomic_dir, swap_dir, write_errors

logger = logging.getLogger(__name__)

NGFF_VERSION = "0.4"
#: the attribute that marks a label image as written by this package
MARKER = "napari-mitoseg"
#: stop adding pyramid levels once both Y and X are at most this many pixels
PYRAMID_MIN_SIDE = 256
#: Y and X chunk side of the label arrays (Z chunks are one slice)
CHUNK_SIDE = 1024


@dataclass(frozen=True)
class VoxelSize:
    """Physical size of one voxel along (Z, Y, X), in ``unit`` (None: unknown unit)."""

    z: float = 1.0
    y: float = 1.0
    x: float = 1.0
    unit: str | None = None

    @property
    def zyx(self) -> tuple[float, float, float]:
        return (self.z, self.y, self.x)


def pyramid_factors(shape: tuple[int, int, int], voxel: VoxelSize,
                    min_side: int | None = None) -> list[tuple[int, int, int]]:
    """Per-level (Z, Y, X) downsampling factors relative to the previous level.

    Y and X halve until both are at most ``min_side``; Z halves too while its voxels are no
    larger than the Y voxels of the level being made (keeps the coarse levels near isotropic;
    thin serial sections keep every slice).
    """
    min_side = PYRAMID_MIN_SIDE if min_side is None else min_side
    z, y, x = shape
    vz, vy = voxel.z, voxel.y
    out = []
    while max(y, x) > min_side and min(y, x) >= 2:
        fz = 2 if (vz <= vy and z >= 2) else 1
        out.append((fz, 2, 2))
        z, y, x, vz, vy = z // fz, y // 2, x // 2, vz * fz, vy * 2
    return out


def _chunks(shape: tuple[int, ...]) -> tuple[int, int, int]:
    return (1, min(shape[1], CHUNK_SIDE), min(shape[2], CHUNK_SIDE))


def _create_array(group, name: str, shape, dtype, overwrite: bool = False):
    return group.create_array(name, shape=tuple(int(s) for s in shape), chunks=_chunks(shape),
                              dtype=dtype, fill_value=0, overwrite=overwrite,
                              chunk_key_encoding={"name": "v2", "separator": "/"})


def _format():
    from ome_zarr.format import format_from_version

    return format_from_version(NGFF_VERSION)


def _levels(shape, voxel: VoxelSize, levels: int | None) -> tuple[list, list]:
    """(shapes, scales) of the pyramid levels, full resolution first."""
    shapes = [tuple(int(s) for s in shape)]
    scales = [[float(v) for v in voxel.zyx]]
    factors = pyramid_factors(shapes[0], voxel)
    for fz, fy, fx in factors[: None if levels is None else levels - 1]:
        z, y, x = shapes[-1]
        shapes.append((z // fz, y // fy, x // fx))
        sz, sy, sx = scales[-1]
        scales.append([sz * fz, sy * fy, sx * fx])
    return shapes, scales


def create_label_pyramid(path: str | os.PathLike, shape: tuple[int, int, int], dtype,
                         voxel: VoxelSize | None = None, name: str = "labels",
                         levels: int | None = None):
    """A new zarr v2 group at ``path`` with empty NGFF v0.4 multiscale levels ``0``, ``1``, ...
    for a (Z, Y, X) label volume of ``shape``; returns the group. ``levels``: at most this many
    (None: down to :data:`PYRAMID_MIN_SIDE`).

    Level 0 is chunked one slice deep (``(1, <=1024, <=1024)``), so blocks of whole slices
    written by different processes never share a chunk.
    """
    import zarr
    from ome_zarr.writer import add_metadata, write_multiscales_metadata

    voxel = voxel or VoxelSize()
    fmt = _format()
    group = zarr.open_group(str(path), mode="w", zarr_format=fmt.zarr_format)
    shapes, scales = _levels(shape, voxel, levels)
    for level, s in enumerate(shapes):
        _create_array(group, str(level), s, dtype)
    axes = [{"name": n, "type": "space", **({"unit": voxel.unit} if voxel.unit else {})} for n in "zyx"]
    datasets = [{"path": str(level), "coordinateTransformations": [{"type": "scale", "scale": sc}]}
                for level, sc in enumerate(scales)]
    write_multiscales_metadata(group, datasets, fmt=fmt, axes=axes, name=name, metadata={
        "description": "2x max-pooling per level (labels keep their ids)", "method": "numpy.max"})
    add_metadata(group, {"image-label": {"version": fmt.version}}, fmt=fmt)
    group.attrs[MARKER] = {"version": __version__}
    return group


def is_our_labels(path: str | os.PathLike) -> bool:
    """Whether the folder ``path`` is a label image this package wrote (its attributes carry
    :data:`MARKER`), read from the zarr metadata file alone."""
    p = Path(path)
    for meta, key in ((".zattrs", None), ("zarr.json", "attributes")):
        try:
            attrs = json.loads((p / meta).read_text())
        except (OSError, ValueError):
            continue
        attrs = attrs.get(key, {}) if key else attrs
        if isinstance(attrs, dict) and (MARKER in attrs or MARKER in attrs.get("ome", {})):
            return True
    return False


@contextlib.contextmanager
def _quiet_reader():
    """ome-zarr-py warns that a label image has no parent image (ours stand alone) and that a
    v0.4 store is not the newest version; neither is a problem here."""
    logs = [logging.getLogger(n) for n in ("ome_zarr.reader", "ome_zarr.io")]
    old = [log.level for log in logs]
    for log in logs:
        log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for log, level in zip(logs, old, strict=True):
            log.setLevel(level)


def _label_node(path: str | os.PathLike):
    """ome-zarr-py's node for the label image at ``path``, or None when it is not one."""
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Label, Multiscales, Reader

    try:
        with _quiet_reader():
            loc = parse_url(str(path), mode="r")
            node = next(iter(Reader(loc)()), None) if loc is not None else None
    except Exception as exc:  # noqa: BLE001 - not an OME-Zarr label image, in any of many ways
        logger.debug("%s is not an OME-Zarr label image: %s", path, exc)
        return None
    if node is None or node.load(Label) is None or node.load(Multiscales) is None:
        return None
    return node


def open_label_pyramid(path: str | os.PathLike) -> list | None:
    """The levels of the OME-Zarr label image at ``path`` as lazy dask arrays, full
    resolution first; None when ``path`` is not one (no ``image-label`` and ``multiscales``)."""
    node = _label_node(path)
    return None if node is None else list(node.data)


def level_paths(group) -> list[str]:
    """The dataset paths of a multiscale group, full resolution first."""
    from ome_zarr.writer import get_metadata

    return [d["path"] for d in get_metadata(group)["multiscales"][0]["datasets"]]


def fill_pyramid(path: str | os.PathLike, scheduler=None) -> None:
    """Compute levels 1.. of the pyramid at ``path`` from level 0 (2x max-pooling per level).

    ``scheduler``: anything ``dask.compute`` takes (a ``distributed.Client``; None: dask's
    default). Each level is read from the one above, written chunk-aligned, never held whole.
    """
    import dask.array as da
    import zarr

    group = zarr.open_group(str(path), mode="r+")
    paths = level_paths(group)
    for prev_name, name in zip(paths[:-1], paths[1:], strict=False):
        prev, arr = group[prev_name], group[name]
        f = tuple(p // n for p, n in zip(prev.shape, arr.shape, strict=True))
        src = da.from_zarr(prev, chunks=tuple(c * k for c, k in zip(arr.chunks, f, strict=True)))
        src = src[tuple(slice(0, n * k) for n, k in zip(arr.shape, f, strict=True))]
        small = da.coarsen(np.max, src, dict(enumerate(f)))
        da.store(small.rechunk(arr.chunks), arr, lock=False, compute=True, scheduler=scheduler)


def write_ome_labels(path: str | os.PathLike, labels, voxel: VoxelSize | None = None) -> Path:
    """Write an in-memory (Z, Y, X) integer label volume as an OME-Zarr pyramid, atomically."""
    labels = np.asarray(labels)
    if labels.ndim == 2:
        labels = labels[None]
    if labels.dtype == bool:
        labels = labels.astype(np.uint8)

    def write(tmp: Path) -> None:
        group = create_label_pyramid(tmp, labels.shape, labels.dtype, voxel)
        group["0"][:] = labels
        fill_pyramid(tmp, scheduler="sync")

    return atomic_dir(Path(path), write)


@contextlib.contextmanager
def label_stream(path: str | os.PathLike, shape: tuple[int, int, int], dtype,
                 voxel: VoxelSize | None = None):
    """Write a (Z, Y, X) label volume slice by slice as an OME-Zarr pyramid at ``path``.

    Yields level 0 (a zarr array chunked one slice deep) to be filled; when the block ends
    without an error the coarser levels are computed from it and the folder, written beside
    ``path``, replaces whatever was there. On an error (or Ctrl+C) nothing at ``path`` changes.
    Memory: one chunk of each level at a time, never the volume.
    """
    final = Path(path)
    with write_errors(final):
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        tmp.chmod(0o755)
        with write_errors(final):
            group = create_label_pyramid(tmp, shape, dtype, voxel)
        yield group["0"]
        with write_errors(final):
            fill_pyramid(tmp, scheduler="sync")
            swap_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

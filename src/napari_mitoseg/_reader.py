"""npe2 reader: TIFF, zarr / OME-Zarr, single PNG slices and folders of PNG/TIFF slices, via
:func:`io.read_stack`.

TIFFs over :data:`io.LAZY_BYTES` and every zarr open lazily (dask), so napari reads only the
slices it shows. Mask-like files (integer, binary or piecewise-constant labels, see
:func:`metrics.looks_like_labels`) open as a Labels layer; the voxel size the file records
(:func:`io.read_voxel_size`, nm) becomes the layer's ``scale`` (``units`` nm) and
``metadata["voxel_size_nm"]``.
An OME-Zarr label pyramid (as ``mitoseg segment --workers`` writes) opens as a multiscale
Labels layer.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from .io import SLICE_SUFFIXES, TIFF_SUFFIXES

_ZARR_MARKERS = (".zarray", ".zgroup", "zarr.json")
#: PIL modes of a grey-scale PNG (colour PNGs are left to other readers)
_GREY_PNG_MODES = ("1", "L", "I", "I;16", "I;16B", "I;16L", "F")


def _is_zarr(p: Path) -> bool:
    return p.suffix.lower() == ".zarr" or (p.is_dir() and any((p / m).exists() for m in _ZARR_MARKERS))


def _zarr_has_array(p: Path) -> bool:
    """A zarr array, or a group holding at least one array (an empty group is not a stack)."""
    try:
        import zarr

        node = zarr.open(str(p), mode="r")
    except Exception:  # noqa: BLE001 - not a zarr store napari should hand to us
        return False
    return hasattr(node, "shape") or any(True for _ in node.array_keys())


def _grey_png(p: Path) -> bool:
    try:
        from PIL import Image

        with Image.open(p) as im:
            return im.mode in _GREY_PNG_MODES
    except Exception:  # noqa: BLE001 - unreadable: not ours
        return False


def _readable(p: Path) -> bool:
    if _is_zarr(p):
        return _zarr_has_array(p)
    if p.is_dir():
        return any(f.suffix.lower() in SLICE_SUFFIXES for f in p.iterdir())
    if p.suffix.lower() == ".png":
        return _grey_png(p)
    return p.suffix.lower() in TIFF_SUFFIXES


def get_reader(path: str | os.PathLike | list) -> Callable | None:
    """Return :func:`read` if ``path`` looks like an EM stack this plugin can open, else None."""
    if isinstance(path, list | tuple):
        if len(path) != 1:
            return None
        path = path[0]
    return read if _readable(Path(os.fsdecode(path))) else None


def read(path: str | os.PathLike | list) -> list[tuple]:
    """Read one stack as a (Z, Y, X) image layer, or a labels layer when it is mask-like
    (numpy, or dask when opened lazily), scaled by the voxel size its file records."""
    from .io import read_stack, read_voxel_size
    from .metrics import label_sample, looks_like_labels

    if isinstance(path, list | tuple):
        path = path[0]
    p = Path(os.fsdecode(path))
    name = p.name[: -len(p.suffix)] if p.suffix else p.name
    meta: dict = {"name": name}
    voxel = read_voxel_size(p)
    if voxel is not None:
        meta["scale"] = voxel
        meta["units"] = ("nm",) * len(voxel)  # so that napari's scale bar reads nm / um
        meta["metadata"] = {"voxel_size_nm": voxel}
    if p.suffix.lower() == ".zarr":
        from .ngff import open_label_pyramid

        levels = open_label_pyramid(p)
        if levels is not None:  # an OME-Zarr label pyramid: napari reads the level it shows
            return [(levels, {**meta, "multiscale": True}, "labels")]
    data = read_stack(p)
    kind = "labels" if data.dtype.kind in "iu" and looks_like_labels(label_sample(data)) else "image"
    return [(data, meta, kind)]

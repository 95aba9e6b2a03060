"""npe2 reader: TIFF, zarr / OME-Zarr and folders of PNG/TIFF slices, via :func:`io.read_stack`.

Large TIFFs and every zarr open lazily (dask), so napari reads only the slices it shows.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from .io import SLICE_SUFFIXES, TIFF_SUFFIXES

_ZARR_MARKERS = (".zarray", ".zgroup", "zarr.json")


def _readable(p: Path) -> bool:
    if p.suffix.lower() == ".zarr" or (p.is_dir() and any((p / m).exists() for m in _ZARR_MARKERS)):
        return True
    if p.is_dir():
        return any(f.suffix.lower() in SLICE_SUFFIXES for f in p.iterdir())
    return p.suffix.lower() in TIFF_SUFFIXES


def get_reader(path: str | os.PathLike | list) -> Callable | None:
    """Return :func:`read` if ``path`` looks like an EM stack this plugin can open, else None."""
    if isinstance(path, list | tuple):
        if len(path) != 1:
            return None
        path = path[0]
    return read if _readable(Path(path)) else None


def read(path: str | os.PathLike | list) -> list[tuple]:
    """Read one stack as a (Z, Y, X) image layer (numpy, or dask when opened lazily)."""
    from .io import read_stack

    if isinstance(path, list | tuple):
        path = path[0]
    p = Path(path)
    data = read_stack(p)
    name = p.name[: -len(p.suffix)] if p.suffix else p.name
    return [(data, {"name": name}, "image")]

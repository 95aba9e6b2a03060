"""Read EM stacks as (Z, Y, X) arrays and write label volumes atomically.

Readers: TIFF (single page, multipage, ImageJ hyperstacks), zarr / OME-Zarr, and folders of
PNG/TIFF slices. Large TIFFs and zarr open lazily (tifffile ``aszarr`` / zarr / dask) so a
stack larger than memory is read slice by slice. Writers: compressed TIFF and zarr, each first
written to a temporary path and then renamed, so a crash never leaves half a file where a good
one was.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from ._atomic import (  # noqa: F401 - kept importable from io
    _atomic_dir_unchecked,
    _atomic_file_unchecked,
    atomic_dir,
    atomic_file,
    check_not_input,
    check_writable_dir,
    swap_dir,
    write_errors,
)
from ._paths import (  # noqa: F401 - kept importable from io
    LABEL_SUFFIXES,
    SLICE_SUFFIXES,
    TIFF_SUFFIXES,
    ReadError,
    WriteError,
    as_path,
    quiet_tifffile,
    same_file,
)
from ._paths import is_zarr as _is_zarr
from ._paths import multiscales as _multiscales
from .metadata import read_voxel_size  # noqa: F401 - kept importable from io

logger = logging.getLogger(__name__)

#: TIFFs larger than this (bytes, 100 MiB) open lazily (a dask array over tifffile's zarr view,
#: one chunk per page) instead of loading whole.
LAZY_BYTES = 100 << 20

_atomic_file = atomic_file


def check_label_path(path: str | os.PathLike, inputs: Iterable = ()) -> Path:
    """Raise :class:`WriteError` unless :func:`write_labels` can write ``path``: a label suffix,
    a writable folder, and not one of ``inputs`` (the files the same command reads).

    Call it before long work, so a bad output fails at once, not after the work.
    """
    p = as_path(path, WriteError)
    if p.suffix.lower() not in LABEL_SUFFIXES:
        raise WriteError(f"{p}: write labels as {', '.join(LABEL_SUFFIXES)}")
    check_not_input(p, inputs)
    if p.is_dir() and p.suffix.lower() != ".zarr":
        raise WriteError(f"{p} is a folder; name a file to write")
    check_writable_dir(p.parent)
    return p


def _to_zyx(arr, source: str, rgb: str = "refuse"):
    """Bring an array to (Z, Y, X): 2D becomes one slice; singleton axes dropped; RGB refused."""
    shape = tuple(arr.shape)
    if len(shape) >= 3 and shape[-1] in (3, 4) and rgb == "refuse":
        raise ReadError(
            f"{source} looks like an RGB(A) image (shape {shape}); EM stacks are grey-scale: "
            "convert it to grey first"
        )
    while arr.ndim > 3 and 1 in arr.shape:  # ImageJ hyperstack: drop singleton T / C axes
        axis = list(arr.shape).index(1)
        arr = arr[(slice(None),) * axis + (0,)]
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise ReadError(
            f"{source} has shape {shape}; expected (Z, Y, X), (Y, X) or a hyperstack with a "
            "single channel and time point"
        )
    dtype = np.dtype(arr.dtype)
    if not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)):
        raise ReadError(f"{source} has unsupported dtype {dtype}")
    if 0 in arr.shape:
        raise ReadError(f"{source} is empty (shape {shape})")
    return arr


def read_stack(path: str | os.PathLike, lazy: bool | None = None):
    """Read ``path`` as a (Z, Y, X) array (numpy, or dask when lazy).

    ``lazy=None`` opens files larger than :data:`LAZY_BYTES` and every zarr lazily.
    """
    p = as_path(path)
    if not p.exists():
        raise ReadError(f"{p} does not exist")
    if p.is_dir() and not _is_zarr(p):
        return _read_folder(p)
    if _is_zarr(p):
        return _read_zarr(p, lazy=lazy is not False)
    if p.suffix.lower() in TIFF_SUFFIXES:
        return _read_tiff(p, lazy)
    if p.suffix.lower() == ".png":
        import skimage.io

        return _to_zyx(_read_image_file(p, skimage.io), str(p))
    raise ReadError(f"{p}: unsupported format; use TIFF, zarr/OME-Zarr or a folder of PNG/TIFF")


def _read_image_file(p: Path, skio):
    try:
        return np.asarray(skio.imread(str(p)))
    except Exception as exc:  # noqa: BLE001 - any decoder error becomes one clear message
        raise ReadError(f"{p} could not be read: {exc}") from exc


def _read_tiff(p: Path, lazy: bool | None):
    if lazy is None:
        lazy = p.stat().st_size > LAZY_BYTES
    with quiet_tifffile():
        arr = _open_tiff(p, lazy)
    return _to_zyx(arr, str(p))


def _open_tiff(p: Path, lazy: bool):
    import tifffile

    try:
        _check_tiff_complete(p)
        if lazy:
            import dask.array as da
            import zarr

            store = tifffile.imread(str(p), aszarr=True)
            z = zarr.open(store, mode="r")
            if hasattr(z, "shape"):
                arr = da.from_zarr(z)
            else:  # multiscale group: level 0
                arr = da.from_zarr(z[0] if "0" in z else z[next(iter(z.array_keys()))])
        else:
            arr = tifffile.imread(str(p))
    except (ReadError, MemoryError):
        raise
    except Exception as exc:  # noqa: BLE001 - a corrupt TIFF fails in many ways inside tifffile
        raise ReadError(f"{p} is not a readable TIFF: {type(exc).__name__}: {exc}") from exc
    return arr


def _check_tiff_complete(p: Path) -> None:
    """Raise :class:`ReadError` if ``p`` was cut short (an interrupted copy or download).

    tifffile reads such a file without an error, as fewer pages than its metadata declares
    (a stack of 40 slices becomes one slice), or fails only when the missing pixels are read.
    """
    import tifffile

    with tifffile.TiffFile(str(p)) as tif:
        pages = list(tif.pages)
        end = max((int(np.max(np.add(page.dataoffsets, page.databytecounts, dtype=np.int64)))
                   for page in pages if len(page.dataoffsets)), default=0)
        if tif.imagej_metadata:  # counts images (pages)
            declared, held = int(tif.imagej_metadata.get("images", 0)), len(pages)
            if held == 1 and declared > 1 and len(pages[0].dataoffsets):
                # ImageJ saves stacks over 4 GB with one IFD and the slices' pixels contiguous
                held, end = declared, int(pages[0].dataoffsets[0]) + declared * pages[0].nbytes
        else:  # tifffile's shaped metadata counts pixels (a page may hold several planes)
            declared = sum(int(np.prod(m["shape"])) for m in tif.shaped_metadata or () if "shape" in m)
            held = sum(page.size for page in pages)
    if declared > held:
        raise ReadError(f"{p} is truncated: its metadata declares more images than it holds; "
                        "copy or save it again")
    if end > p.stat().st_size:
        raise ReadError(f"{p} is truncated: its pixel data runs past the end of the file; "
                        "copy or save it again")


def _read_zarr(p: Path, lazy: bool = True):
    import dask.array as da
    import zarr

    try:
        node = zarr.open(str(p), mode="r")
    except Exception as exc:  # noqa: BLE001
        raise ReadError(f"{p} is not a readable zarr store: {exc}") from exc
    if not hasattr(node, "shape"):  # group: OME-Zarr multiscales, take the full resolution
        node = _zarr_group_array(node, p)
    arr = da.from_zarr(node)
    arr = _to_zyx(arr, str(p))
    return arr if lazy else np.asarray(arr)


def _zarr_group_array(group, p: Path):
    """The array of a zarr group to read: the first dataset of its OME-Zarr multiscales (full
    resolution), else its first array by name; :class:`ReadError` when it holds none."""
    ms = _multiscales(group.attrs)
    try:
        if ms:
            return group[ms[0]["datasets"][0]["path"]]
    except (KeyError, IndexError, TypeError) as exc:
        raise ReadError(f"{p}: its OME-Zarr multiscales name no readable array ({exc})") from exc
    keys = sorted(group.array_keys())
    if not keys:
        raise ReadError(f"{p} is a zarr group holding no array: nothing to read")
    return group[keys[0]]


def _read_folder(p: Path):
    import skimage.io

    files = sorted(f for f in p.iterdir() if f.suffix.lower() in SLICE_SUFFIXES)
    if not files:
        raise ReadError(f"{p} holds no PNG or TIFF slices")
    slices = [_read_image_file(f, skimage.io) for f in files]
    shapes = {s.shape for s in slices}
    if len(shapes) != 1:
        raise ReadError(f"slices in {p} differ in shape: {sorted(shapes)}")
    return _to_zyx(np.stack(slices), str(p))


# --------------------------------------------------------------------------- writing


def write_labels(path: str | os.PathLike, labels, voxel_size=None) -> Path:
    """Write a (Z, Y, X) label volume to ``.tif``/``.tiff`` (zlib) or ``.zarr``, atomically."""
    p = check_label_path(path)
    labels = np.asarray(labels)
    if labels.dtype.kind not in "biu":
        raise WriteError(f"labels must be integer, got {labels.dtype}")
    if labels.dtype == bool:
        labels = labels.astype(np.uint8)
    if p.suffix.lower() in TIFF_SUFFIXES:
        import tifffile

        def write_tiff(tmp: Path) -> None:
            # minisblack: else tifffile stores a stack of 3 or 4 slices as one RGB(A) image
            tifffile.imwrite(str(tmp), labels, photometric="minisblack", compression="zlib",
                             metadata={"axes": "ZYX"[-labels.ndim :]})

        return _atomic_file(p, write_tiff)

    def write_zarr(tmp: Path) -> None:  # .zarr: a folder, written beside and swapped in
        open_labels_zarr(tmp, labels.shape, labels.dtype)[:] = labels

    return atomic_dir(p, write_zarr)


def open_labels_zarr(path: Path, shape: tuple[int, ...], dtype):
    """A new zarr label array at ``path``, chunked by slice (so slices can be written and read
    one at a time). Used inside :func:`atomic_dir`."""
    import zarr

    return zarr.open(str(path), mode="w", shape=tuple(shape), dtype=dtype,
                     chunks=(1, *shape[1:]))

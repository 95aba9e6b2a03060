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
import uuid
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
    check_not_input(p, inputs, whole_folder=p.suffix.lower() == ".zarr")
    if p.suffix.lower() == ".zarr":
        _check_zarr_target(p)
    elif p.is_dir():
        raise WriteError(f"{p} is a folder; name a file to write")
    check_writable_dir(p.parent)
    return p


def _check_zarr_target(p: Path) -> None:
    """A ``.zarr`` output replaces what is at ``p`` whole: refuse unless that is nothing, an
    empty folder, or a label image this package wrote (never the user's own zarr groups)."""
    from .ngff import is_our_labels

    if not os.path.lexists(p):
        return
    if not p.is_dir():
        raise WriteError(f"{p} exists and is not a folder (a zarr store is one); nothing was "
                         "written: choose another name or remove it")
    if any(p.iterdir()) and not is_our_labels(p):
        raise WriteError(f"{p} exists and is not a label image written by mitoseg; it would be "
                         "replaced whole, with everything in it: choose a new name, or delete it first")


def _to_zyx(arr, source: str, rgb: str = "refuse"):
    """Bring an array to (Z, Y, X): 2D becomes one slice; singleton axes dropped; RGB refused."""
    shape = tuple(arr.shape)
    if len(shape) >= 3 and shape[-1] in (3, 4) and shape[-2] >= 8 and rgb == "refuse":
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
    check_regular(p)
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


def check_regular(p: Path) -> None:
    """Raise :class:`ReadError` unless ``p`` is a regular file or a folder: a named pipe, a
    socket or a device named like a stack would block the reader, or read as something else."""
    if not (p.is_file() or p.is_dir()):
        raise ReadError(f"{p} is not a regular file (a named pipe, socket or device?); "
                        "give a file or folder holding the stack")


def _read_image_file(p: Path, skio):
    try:
        arr = np.asarray(skio.imread(str(p)))
    except Exception as exc:  # noqa: BLE001 - any decoder error becomes one clear message
        raise ReadError(f"{p} could not be read: {exc}") from exc
    if arr.ndim == 3 and arr.shape[-1] == 2:  # grey + alpha: not a (Z, Y, X) stack of width 2
        raise ReadError(f"{p} is a grey image with an alpha channel (shape {arr.shape}); save it "
                        "as plain grey (no alpha) first")
    return arr


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
        dangling = _dangling_next_page(tif, pages[-1].offset, p.stat().st_size) if pages else False
    if declared > held:
        raise ReadError(f"{p} is truncated: its metadata declares more images than it holds; "
                        "copy or save it again")
    if dangling:
        raise ReadError(f"{p} is truncated: {len(pages)} page(s) read, and the last one points "
                        "to a next page past the end of the file; copy or save it again")
    if end > p.stat().st_size:
        raise ReadError(f"{p} is truncated: its pixel data runs past the end of the file; "
                        "copy or save it again")


def _dangling_next_page(tif, offset: int, size: int) -> bool:
    """Whether the TIFF page (IFD) at ``offset`` links to a next page that the file does not
    hold whole: a multi-page file cut between (or inside) pages, which tifffile reads as fewer
    pages without an error."""
    import struct

    fmt, fh = tif.tiff, tif.filehandle
    try:
        fh.seek(offset)
        (ntags,) = struct.unpack(fmt.tagnoformat, fh.read(fmt.tagnosize))
        fh.seek(offset + fmt.tagnosize + ntags * fmt.tagsize)
        (nxt,) = struct.unpack(fmt.offsetformat, fh.read(fmt.offsetsize))
        if nxt == 0:
            return False
        if nxt + fmt.tagnosize > size:
            return True
        fh.seek(nxt)
        (ntags,) = struct.unpack(fmt.tagnoformat, fh.read(fmt.tagnosize))
    except (struct.error, OSError):
        return True
    return nxt + fmt.tagnosize + ntags * fmt.tagsize + fmt.offsetsize > size


def _read_zarr(p: Path, lazy: bool = True):
    import dask.array as da
    import zarr

    try:
        node = zarr.open(str(p), mode="r")
    except Exception as exc:  # noqa: BLE001
        raise ReadError(f"{p} is not a readable zarr store: {exc}") from exc
    if not hasattr(node, "shape"):  # group: OME-Zarr multiscales, take the full resolution
        node = _zarr_group_array(node, p)
    arr = da.from_array(_CheckedChunks(node, p), chunks=node.chunks, name=f"zarr-{uuid.uuid4().hex}",
                        meta=np.empty((0,) * node.ndim, node.dtype))
    arr = _to_zyx(arr, str(p))
    return arr if lazy else np.asarray(arr)


class _CheckedChunks:
    """A zarr array whose reads raise one clear :class:`ReadError` when a chunk cannot be
    decoded (a damaged copy), instead of the codec's own error from deep inside dask."""

    def __init__(self, node, path: Path):
        self.node, self.path = node, path
        self.shape, self.dtype, self.ndim = tuple(node.shape), node.dtype, node.ndim

    def __getitem__(self, key):
        try:
            return self.node[key]
        except (MemoryError, ReadError):
            raise
        except Exception as exc:  # noqa: BLE001 - codecs fail in many ways
            z = key[0] if isinstance(key, tuple) and key else key
            if isinstance(z, slice) and z.start is not None and z.stop is not None:
                z = z.start if z.stop - z.start == 1 else f"{z.start}-{z.stop - 1}"
            where = f" (slice {z})" if isinstance(z, (int, np.integer, str)) else ""
            raise ReadError(f"{self.path}: a chunk{where} cannot be decoded ({type(exc).__name__}: "
                            f"{exc}); the store is damaged: copy it again") from exc


def warn_missing_chunks(path: str | os.PathLike) -> int:
    """Warn when ``path`` is a zarr store whose array lacks stored chunks; return how many.

    zarr reads a missing chunk as its fill value without a word: an interrupted copy of an EM
    image would be segmented with blank blocks. A writer may also leave out chunks holding only
    the fill value on purpose (zarr-python 3 does by default, as for an aligned volume's empty
    margins), and the store cannot tell which, so this warns rather than refuses. Label volumes
    leave empty chunks out routinely, so only images are checked. Other files: 0."""
    import zarr

    p = as_path(path)
    if not _is_zarr(p):
        return 0
    node = zarr.open(str(p), mode="r")
    if not hasattr(node, "shape"):
        node = _zarr_group_array(node, p)
    missing = node.nchunks - node.nchunks_initialized
    if missing:
        fill = node.fill_value.item() if hasattr(node.fill_value, "item") else node.fill_value
        logger.warning("%s: %d of %d chunks are not stored and read as %r: if the store was copied, "
                       "check that the copy is complete", p, missing, node.nchunks, fill)
    return missing


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


def _voxel(voxel_size):
    """(Z, Y, X) nm, or None, as :class:`ngff.VoxelSize`."""
    from .ngff import VoxelSize

    return VoxelSize(*(float(v) for v in voxel_size), unit="nanometer") if voxel_size else None


def write_labels(path: str | os.PathLike, labels, voxel_size=None) -> Path:
    """Write a (Z, Y, X) label volume to ``.tif``/``.tiff`` (zlib) or ``.zarr``, atomically.

    ``.zarr`` is an OME-Zarr label image (NGFF v0.4, a max-pooled pyramid) with ``voxel_size``
    ((Z, Y, X) nm; None: unit-less scale 1) as its scale."""
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
    from .ngff import write_ome_labels

    return write_ome_labels(p, labels, _voxel(voxel_size))


def labels_zarr(path: str | os.PathLike, shape: tuple[int, int, int], dtype, voxel_size=None):
    """A context manager that streams a (Z, Y, X) label volume into the OME-Zarr label image
    ``path``: it yields the full-resolution zarr array (chunked one slice deep) to fill slice by
    slice; on leaving the block the pyramid is computed and the folder moved into place. An
    error inside the block leaves ``path`` as it was. ``voxel_size``: (Z, Y, X) nm or None.

    ``with io.labels_zarr(out, image.shape, np.uint8, voxel) as arr: arr[z] = mask``
    """
    from .ngff import label_stream

    p = check_label_path(path)
    if p.suffix.lower() != ".zarr":
        raise WriteError(f"{p}: slices stream into a .zarr label image only")
    return label_stream(p, tuple(int(s) for s in shape), dtype, _voxel(voxel_size))


def open_labels_zarr(path: Path, shape: tuple[int, ...], dtype, voxel_size=None):
    """A new single-level OME-Zarr label image at ``path`` (a temporary folder inside
    :func:`atomic_dir`); returns its array, chunked by slice. :func:`labels_zarr` also writes
    the coarser levels."""
    from .ngff import create_label_pyramid

    return create_label_pyramid(path, tuple(shape), dtype, _voxel(voxel_size), levels=1)["0"]

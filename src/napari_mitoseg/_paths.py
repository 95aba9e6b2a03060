"""Paths and file formats, below every reader and writer: what a path names (TIFF, zarr,
OME-Zarr multiscales), the errors for unreadable input and unwritable output, and a quiet
tifffile. Imports nothing of the package."""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

logger = logging.getLogger(__name__)

TIFF_SUFFIXES = (".tif", ".tiff")
SLICE_SUFFIXES = (".tif", ".tiff", ".png")
LABEL_SUFFIXES = (".tif", ".tiff", ".zarr")


class ReadError(ValueError):
    """A file could not be read as an EM stack; the message says why."""


class WriteError(ValueError):
    """Labels cannot be written as asked; the message says why."""


def as_path(path, error: type[Exception] = ReadError) -> Path:
    """``path`` (str, bytes or os.PathLike) as a :class:`Path`; anything else raises ``error``."""
    try:
        return Path(os.fsdecode(path))
    except TypeError:
        raise error(f"expected a file path (str or os.PathLike), got {type(path).__name__}") from None


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """True when ``a`` and ``b`` name the same file or folder (after resolving links)."""
    a, b = as_path(a), as_path(b)
    if a.exists() and b.exists():
        return os.path.samefile(a, b)
    return a.resolve() == b.resolve()


def is_zarr(p: Path) -> bool:
    """Whether the folder ``p`` is a zarr store (a ``.zarr`` name or zarr metadata inside)."""
    return p.is_dir() and (
        p.suffix.lower() == ".zarr"
        or any((p / n).exists() for n in (".zarray", ".zgroup", "zarr.json"))
    )


def multiscales(attrs) -> list:
    """The OME-Zarr ``multiscales`` list of a group's attributes (NGFF 0.4 at the top level,
    0.5 under ``ome``); empty when there is none."""
    attrs = dict(attrs)
    return attrs.get("multiscales") or dict(attrs.get("ome", {})).get("multiscales") or []


class _DropRecords(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        logger.debug("tifffile: %s", record.getMessage())
        return False


@contextlib.contextmanager
def quiet_tifffile():
    """Hold back tifffile's own log lines (``ERROR ... corrupted page``) while we read: a file
    that cannot be read gets one message of ours; tifffile's lines go to our debug log."""
    tlog = logging.getLogger("tifffile")
    drop = _DropRecords()
    tlog.addFilter(drop)
    try:
        yield
    finally:
        tlog.removeFilter(drop)

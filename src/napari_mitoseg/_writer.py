"""npe2 writer: a labels layer to a zlib-compressed (Z, Y, X) TIFF, via :func:`io.write_labels`."""

from __future__ import annotations

from typing import Any


def write_labels(path: str, data: Any, meta: dict) -> list[str]:
    """Write labels ``data`` to ``path`` (.tif / .tiff) atomically; return the written path."""
    from .io import write_labels as _write

    return [str(_write(path, data))]

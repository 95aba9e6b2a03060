"""Voxel sizes from file metadata: OME-XML, ImageJ, TIFF resolution tags and OME-Zarr.

:func:`read_voxel_size` returns (Z, Y, X) in nanometres, or None when a file records no
physical size (or only an image program's default resolution).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from ._paths import TIFF_SUFFIXES, as_path, quiet_tifffile
from ._paths import is_zarr as _is_zarr
from ._paths import multiscales as _multiscales

logger = logging.getLogger(__name__)

#: nanometres per unit, for the unit names TIFF, ImageJ, OME-XML and OME-Zarr use
_NM_PER_UNIT = {
    "nm": 1.0, "nanometer": 1.0, "nanometre": 1.0,
    "um": 1e3, "µm": 1e3, "μm": 1e3, "\\u00b5m": 1e3, "micron": 1e3, "microns": 1e3,
    "micrometer": 1e3, "micrometre": 1e3,
    "mm": 1e6, "millimeter": 1e6, "millimetre": 1e6,
    "cm": 1e7, "centimeter": 1e7, "centimetre": 1e7,
    "m": 1e9, "meter": 1e9, "metre": 1e9,
    "å": 0.1, "angstrom": 0.1, "ångström": 0.1,
    "pm": 1e-3, "picometer": 1e-3,
}
#: TIFF ResolutionUnit codes (2 inch, 3 centimetre; 4, 5 are tifffile's mm and µm) in nm
_NM_PER_RESUNIT = {2: 2.54e7, 3: 1e7, 4: 1e6, 5: 1e3}
#: dots per inch that image programs write by default: never a real pixel size
_DEFAULT_DPI = (1.0, 72.0, 96.0, 150.0, 300.0, 600.0)
#: a pixel size outside this range (nm) is not an electron micrograph's: treated as absent
PLAUSIBLE_NM = (0.01, 10_000.0)

VoxelSize = tuple[float, float, float]


def _unit_nm(unit) -> float | None:
    return _NM_PER_UNIT.get(str(unit).strip().lower()) if unit else None


def _plausible(zyx) -> VoxelSize | None:
    """(Z, Y, X) in nm when every size is a plausible EM pixel size, else None."""
    if zyx is None or any(v is None for v in zyx):
        return None
    lo, hi = PLAUSIBLE_NM
    vals = tuple(float(v) for v in zyx)
    return vals if all(np.isfinite(v) and lo <= v <= hi for v in vals) else None


def read_voxel_size(path: str | os.PathLike) -> VoxelSize | None:
    """The voxel size (Z, Y, X) in nanometres that a file's metadata records, or None.

    Read from OME-XML (``PhysicalSize*``), ImageJ metadata (``unit``, ``spacing`` and the
    resolution tags), plain TIFF resolution tags with a ResolutionUnit of inch or centimetre,
    and OME-Zarr ``multiscales`` scale transformations with axis units. None when the file
    records none, only a unitless or default (72 dpi ...) resolution, or sizes no electron
    micrograph has (outside :data:`PLAUSIBLE_NM`). A missing Z spacing takes the X size.
    """
    p = as_path(path)
    try:
        if _is_zarr(p):
            return _plausible(_zarr_voxel_nm(p))
        if p.suffix.lower() in TIFF_SUFFIXES and p.is_file():
            with quiet_tifffile():
                return _plausible(_tiff_voxel_nm(p))
    except Exception as exc:  # noqa: BLE001 - metadata is a hint: unreadable means absent
        logger.debug("no voxel size from %s: %s", p, exc)
    return None


def _tiff_voxel_nm(p: Path):
    import tifffile

    with tifffile.TiffFile(str(p)) as tif:
        if tif.is_ome and tif.ome_metadata:
            return _ome_xml_voxel_nm(tif.ome_metadata)
        page = tif.pages[0]
        xy = _resolution_nm(page)
        if tif.imagej_metadata:
            return _imagej_voxel_nm(tif.imagej_metadata, page)
        if xy is None:
            return None
        return (xy[1], *xy)


def _resolution_nm(page, nm_per_unit: float | None = None):
    """(Y, X) pixel size in nm from the resolution tags (pixels per unit), or None."""
    tags = page.tags
    if "XResolution" not in tags or "YResolution" not in tags:
        return None
    if nm_per_unit is None:
        unit = int(tags["ResolutionUnit"].value) if "ResolutionUnit" in tags else 2
        nm_per_unit = _NM_PER_RESUNIT.get(unit)
        if nm_per_unit is None:
            return None
        default_dpi = unit == 2
    else:
        default_dpi = False
    out = []
    for name in ("YResolution", "XResolution"):
        num, den = tags[name].value
        per_unit = num / den if den else 0.0
        if per_unit <= 0 or (default_dpi and per_unit in _DEFAULT_DPI):
            return None
        out.append(nm_per_unit / per_unit)
    return tuple(out)


def _imagej_voxel_nm(meta: dict, page):
    nm = _unit_nm(meta.get("unit"))
    if nm is None:  # 'pixel' or no unit: not a physical size
        return None
    xy = _resolution_nm(page, nm)
    if xy is None:
        return None
    spacing = meta.get("spacing")
    z = float(spacing) * nm if spacing else xy[1]
    return (z, *xy)


def _ome_xml_voxel_nm(xml: str):
    import xml.etree.ElementTree as ET

    root = ET.fromstring(xml)
    pixels = next((el for el in root.iter() if el.tag.rsplit("}", 1)[-1] == "Pixels"), None)
    if pixels is None:
        return None

    def size(axis: str) -> float | None:
        value = pixels.get(f"PhysicalSize{axis}")
        nm = _unit_nm(pixels.get(f"PhysicalSize{axis}Unit", "µm"))
        return float(value) * nm if value is not None and nm is not None else None

    x, y = size("X"), size("Y")
    if x is None or y is None:
        return None
    z = size("Z")
    return (z if z is not None else x, y, x)


def _zarr_voxel_nm(p: Path):
    """(Z, Y, X) nm from OME-Zarr ``multiscales``: the first dataset's scale (times a global
    scale, if any) on the last three axes, each with a length unit."""
    import zarr

    node = zarr.open(str(p), mode="r")
    ms = _multiscales(node.attrs) if not hasattr(node, "shape") else []
    if not ms:
        return None
    ms0 = ms[0]
    axes = ms0.get("axes") or []
    scale = None
    for tr in ms0["datasets"][0].get("coordinateTransformations", []):
        if tr.get("type") == "scale":
            scale = list(tr["scale"])
    if scale is None or len(axes) != len(scale) or len(scale) < 2:
        return None
    for tr in ms0.get("coordinateTransformations", []) or []:
        if tr.get("type") == "scale" and len(tr["scale"]) == len(scale):
            scale = [a * b for a, b in zip(scale, tr["scale"], strict=True)]
    sizes = []
    for ax, s in zip(axes[-3:], scale[-3:], strict=True):
        nm = _unit_nm(ax.get("unit")) if isinstance(ax, dict) else None
        if nm is None or (isinstance(ax, dict) and ax.get("type", "space") != "space"):
            return None
        sizes.append(float(s) * nm)
    return tuple(sizes) if len(sizes) == 3 else (sizes[-1], *sizes)

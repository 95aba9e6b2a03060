"""Where the 3D widget's voxel size comes from: the layer's file or scale, else a layer of the
same shape that records one (said so), else unknown (the user types it). Layers of the same
shape drawn at different scales do not line up in the viewer; the note says so."""

from __future__ import annotations

import numpy as np

from ._common import VOXEL_SIZE_NM, layer_array, same_layer

#: the voxel sizes (nm) the boxes accept: an EM voxel is between a tenth of a nm and 10 um
VOXEL_RANGE_NM = (0.1, 10_000.0)


def layer_voxel_size(layer) -> tuple[float, float, float] | None:
    """(Z, Y, X) nm of a layer: its ``metadata["voxel_size_nm"]``, else its scale when that is
    not all ones (taken as nm); None when unknown."""
    meta = layer.metadata.get(VOXEL_SIZE_NM) if layer is not None else None
    if meta is not None and len(meta) >= 2:
        vals = tuple(float(v) for v in meta)
    elif layer is not None and not np.allclose(layer.scale, 1.0):
        vals = tuple(float(s) for s in layer.scale)
    else:
        return None
    vals = vals[-3:] if len(vals) >= 3 else (vals[0], *vals)
    return vals  # type: ignore[return-value]


def _shape(layer) -> tuple:
    return tuple(np.shape(layer_array(layer)))


def _fmt(values) -> str:
    return "(" + ", ".join(f"{float(v):g}" for v in values) + ")"


def voxel_size_for(layer, layers) -> tuple[tuple[float, float, float] | None, str]:
    """(voxel size in nm or None, a note saying where it came from) for ``layer`` among the
    viewer's ``layers``."""
    own = layer_voxel_size(layer)
    mates = [ly for ly in layers if not same_layer(ly, layer) and _shape(ly) == _shape(layer)]
    off = [ly for ly in mates if not np.allclose(ly.scale, layer.scale)]
    if own is not None:
        note = "From the file." if layer.metadata.get(VOXEL_SIZE_NM) is not None else "From the layer's scale."
    else:
        known = [(ly, layer_voxel_size(ly)) for ly in mates if layer_voxel_size(ly) is not None]
        if not known:
            return None, (f"Voxel size unknown: '{layer.name}' records none; type it (nm) before "
                          "measuring.")
        mate, own = known[0]
        note = f"Taken from '{mate.name}' (same shape); '{layer.name}' records none."
    if off:
        note += (f" '{off[0].name}' has the same shape but is drawn at {_fmt(off[0].scale)} and "
                 f"'{layer.name}' at {_fmt(layer.scale)}: they do not line up in the viewer (a file "
                 "without a pixel size?); measuring puts this one at the voxel size.")
    return own, note

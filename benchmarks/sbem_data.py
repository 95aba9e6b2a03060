"""The SBEM stacks the benchmarks measure on (``shared/data/sbem``, or ``$MITOSEG_SBEM_DIR``).

- ``"val"``: the validation block, the last :data:`VAL_SLICES` slices of the training stack
  (what ``mitoseg train --val-fraction 0.2`` holds out); settings are chosen here;
- ``"test"``: the whole testing stack, for the reported figures only;
- ``"fit"``: the training slices before the validation block, the ones a model learns from
  (to see how closely it fits them).
"""

from __future__ import annotations

import numpy as np
import tifffile

from napari_mitoseg.api import sbem_dir

VAL_SLICES = 4

#: which stack (file prefix) and which of its slices each name means
SPLITS = {
    "val": ("train", slice(-VAL_SLICES, None)),
    "test": ("test", slice(None)),
    "fit": ("train", slice(None, -VAL_SLICES)),
}


def load(which: str) -> tuple[np.ndarray, np.ndarray]:
    """(image uint8, mask bool) of ``"val"``, ``"test"`` or ``"fit"``; exits without the data."""
    if which not in SPLITS:
        raise ValueError(f"which must be one of {sorted(SPLITS)}, got {which!r}")
    d = sbem_dir()
    if d is None:
        raise SystemExit("SBEM data not found; set MITOSEG_SBEM_DIR")
    stack, z = SPLITS[which]
    return (tifffile.imread(d / f"{stack}_image.tif")[z],
            tifffile.imread(d / f"{stack}_mask.tif")[z] > 0)

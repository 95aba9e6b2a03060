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


def load(which: str) -> tuple[np.ndarray, np.ndarray]:
    """(image uint8, mask bool) of ``"val"``, ``"test"`` or ``"fit"``; exits without the data."""
    d = sbem_dir()
    if d is None:
        raise SystemExit("SBEM data not found; set MITOSEG_SBEM_DIR")
    if which == "val":
        return (tifffile.imread(d / "train_image.tif")[-VAL_SLICES:],
                tifffile.imread(d / "train_mask.tif")[-VAL_SLICES:] > 0)
    if which == "test":
        return tifffile.imread(d / "test_image.tif"), tifffile.imread(d / "test_mask.tif") > 0
    if which == "fit":
        return (tifffile.imread(d / "train_image.tif")[:-VAL_SLICES],
                tifffile.imread(d / "train_mask.tif")[:-VAL_SLICES] > 0)
    raise ValueError(f"which must be 'val', 'test' or 'fit', got {which!r}")

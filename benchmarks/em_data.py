"""The reference EM volumes the benchmarks measure on (``shared/data/<volume>``, or
``$MITOSEG_DATA_DIR/<volume>``): ``sbem`` (CDeep3M SBEM sample) and ``lucchipp`` (Lucchi++ FIB-SEM).

Splits of each volume:
- ``"val"``: the validation block, the last slices of the training stack (what ``mitoseg train
  --val-fraction`` holds out: 0.2 of SBEM's 20 slices, 0.12 of Lucchi++'s 165); settings are
  chosen here;
- ``"test"``: the whole testing stack, for the reported figures only;
- ``"fit"``: the training slices before the validation block, the ones a model learns from;
- ``"train"``: the whole training stack (to score a model trained on the *other* volume).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tifffile

from napari_mitoseg.api import data_dir


@dataclass(frozen=True)
class RefVolume:
    val_slices: int
    val_fraction: float
    #: pixel size in nm (Y, X); for SBEM an estimate, see docs/benchmarks.md
    pixel_nm: float


VOLUMES = {
    "sbem": RefVolume(val_slices=4, val_fraction=0.2, pixel_nm=9.3),
    "lucchipp": RefVolume(val_slices=20, val_fraction=0.12, pixel_nm=5.0),
}


def splits(volume: str) -> dict[str, tuple[str, slice]]:
    """Which stack (file prefix) and which of its slices each split name means."""
    n = VOLUMES[volume].val_slices
    return {"val": ("train", slice(-n, None)), "test": ("test", slice(None)),
            "fit": ("train", slice(None, -n)), "train": ("train", slice(None))}


def load(which: str, volume: str = "sbem") -> tuple[np.ndarray, np.ndarray]:
    """(image uint8, mask bool) of split ``which`` of ``volume``; exits without the data."""
    if volume not in VOLUMES:
        raise ValueError(f"volume must be one of {sorted(VOLUMES)}, got {volume!r}")
    table = splits(volume)
    if which not in table:
        raise ValueError(f"which must be one of {sorted(table)}, got {which!r}")
    d = data_dir(volume)
    if d is None:
        raise SystemExit(f"{volume} data not found; set MITOSEG_DATA_DIR")
    stack, z = table[which]
    return (tifffile.imread(d / f"{stack}_image.tif")[z],
            tifffile.imread(d / f"{stack}_mask.tif")[z] > 0)

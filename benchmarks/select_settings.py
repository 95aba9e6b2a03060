"""Choose threshold, TTA, z-smoothing, hole filling and checkpoint on validation only (never test).

Validation = the last 4 slices of the SBEM training stack (the block held out by
``mitoseg train --val-fraction 0.2``). Prints one line per setting and the best, as JSON.

    python benchmarks/select_settings.py runs/mito-em-v1/best [more model folders...]
"""

from __future__ import annotations

import json
import sys

import em_data  # beside this script
import numpy as np

from napari_mitoseg.inference import binarise, predict_slice, smooth_z
from napari_mitoseg.metrics import score
from napari_mitoseg.model import load_model

THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7)


def main(folders: list[str]) -> int:
    image, gt = em_data.load("val")
    best = None
    for folder in folders:
        model = load_model(folder, "cpu")
        for tta in (False, True):
            raw = np.stack([predict_slice(model, s, tta=tta) for s in image])
            for zs in (False, True):
                prob = np.stack(list(smooth_z(iter(raw)))) if zs else raw
                for fill in (False, True):
                    for thr in THRESHOLDS:
                        mask = np.stack([binarise(p, thr, fill) for p in prob])
                        iou = score(mask, gt).iou
                        row = {"model": folder, "tta": tta, "z_smooth": zs, "fill_holes": fill,
                               "threshold": thr, "val_iou": round(iou, 4)}
                        print(json.dumps(row), flush=True)
                        if best is None or iou > best["val_iou"]:
                            best = row
    print("best:", json.dumps(best))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Where a model's errors are: whole objects, boundaries, or inside objects.

For the validation block (last 4 training slices) and the testing stack (``--data`` adds
``fit``: the 16 training slices the model learnt from), segments with the model's default
settings and splits the errors, summed over the slices:

- false positives in predicted objects (2D, per slice) that touch no ground-truth object;
- false negatives in ground-truth objects the prediction misses entirely;
- false positives within 3 px outside a ground-truth outline, and false negatives within 3 px
  inside one: boundary disagreement. More of the second than of the first means the ground
  truth's outlines run wider than the prediction's.

    python benchmarks/error_analysis.py [--model mito-em-v2] [--data fit val test]
"""

from __future__ import annotations

import argparse
import json
import sys

import em_data  # beside this script
import numpy as np
from scipy import ndimage as ndi

from napari_mitoseg.api import get_model, segment
from napari_mitoseg.metrics import score


def breakdown(pred: np.ndarray, gt: np.ndarray) -> dict:
    fp, fn = pred & ~gt, gt & ~pred
    fp_objects = fn_objects = fp_edge = fn_edge = 0
    for p, g in zip(pred, gt, strict=True):
        lab, _ = ndi.label(p)
        fp_objects += int((~np.isin(lab, np.unique(lab[g])) & (lab > 0)).sum())
        lab, _ = ndi.label(g)
        fn_objects += int((~np.isin(lab, np.unique(lab[p])) & (lab > 0)).sum())
        fp_edge += int((p & ~g & (ndi.distance_transform_edt(~g) <= 3)).sum())
        fn_edge += int((g & ~p & (ndi.distance_transform_edt(g) <= 3)).sum())
    return {"iou": round(score(pred, gt).iou, 4), "tp": int((pred & gt).sum()),
            "fp": int(fp.sum()), "fp_in_false_objects": fp_objects, "fp_within_3px": fp_edge,
            "fn": int(fn.sum()), "fn_in_missed_objects": fn_objects, "fn_within_3px": fn_edge}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None, help="default: the shipped model")
    ap.add_argument("--data", nargs="+", choices=["fit", "val", "test"], default=["val", "test"])
    args = ap.parse_args(argv)
    model = get_model(args.model, "cpu")
    for name in args.data:
        image, mask = em_data.load(name)
        pred = segment(image, model).astype(bool)
        print(json.dumps({"data": name, "model": model.name, "slices": len(image),
                          **breakdown(pred, mask)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

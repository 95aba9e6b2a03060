"""Choose threshold, z-smoothing, hole filling and checkpoint on validation only (never test).

Validation = the held-out block of each volume's training stack (``em_data``: SBEM's last 4
slices, Lucchi++'s last 20), each segmented at its pixel size (``em_data.VOLUMES``; a model
without a recorded pixel size is taken as trained on the first volume named). The score of a
setting is the mean of the volumes' IoUs, so each volume counts equally. Prints one JSON line
per setting and the best.

    python benchmarks/select_settings.py runs/mito-em-v3/best runs/mito-em-v3/last \
        [--volumes sbem lucchipp] [--tta] [--scales 1 1,1.5 1,2]

``--scales``: the sets of scales to try (multi-scale averaging, ``PredictOptions.scales``), each
comma-separated; each scale's probabilities are computed once and shared by the sets.
"""

from __future__ import annotations

import argparse
import json
import sys

import em_data  # beside this script
import numpy as np

from napari_mitoseg.inference import at_scales, binarise, for_stack, predict_slice
from napari_mitoseg.metrics import score
from napari_mitoseg.model import load_model
from napari_mitoseg.neighbours import smooth_stack

THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="+")
    ap.add_argument("--volumes", nargs="+", choices=sorted(em_data.VOLUMES), default=["sbem", "lucchipp"])
    ap.add_argument("--tta", action="store_true", help="also try test-time augmentation (8x slower)")
    ap.add_argument("--scales", nargs="+", default=["1"], metavar="K[,K...]",
                    help="sets of scales to try, e.g. 1 1,1.5 (default: 1)")
    ap.add_argument("--thresholds", nargs="+", type=float, default=list(THRESHOLDS),
                    help="thresholds to try (default: %(default)s)")
    args = ap.parse_args(argv)
    sets = [tuple(float(k) for k in group.split(",")) for group in args.scales]
    data = {v: em_data.load("val", v) for v in args.volumes}
    best = None
    cache: dict = {}
    for folder in args.models:
        model = load_model(folder, "cpu")
        model_nm = model.spec.pixel_size_nm or em_data.VOLUMES[args.volumes[0]].pixel_nm
        for tta, scales in ((t, k) for t in ((False, True) if args.tta else (False,)) for k in sets):
            raw = {}
            for v, (image, _) in data.items():
                m = for_stack(model, em_data.VOLUMES[v].pixel_nm / model_nm)
                raw[v] = np.mean([_probs(cache, m, image, (folder, v), tta, k) for k in scales], axis=0)
            for zs in (False, True):
                prob = {v: np.stack(smooth_stack(r, data[v][0])) if zs else r for v, r in raw.items()}
                for fill in (False, True):
                    for thr in args.thresholds:
                        ious = {v: score(np.stack([binarise(p, thr, fill) for p in prob[v]]), data[v][1]).iou
                                for v in data}
                        row = {"model": folder, "tta": tta, "scales": list(scales), "z_smooth": zs,
                               "fill_holes": fill, "threshold": thr,
                               "val_iou": round(float(np.mean(list(ious.values()))), 4),
                               **{f"val_iou_{v}": round(i, 4) for v, i in ious.items()}}
                        print(json.dumps(row), flush=True)
                        if best is None or row["val_iou"] > best["val_iou"]:
                            best = row
    print("best:", json.dumps(best))
    return 0


def _probs(cache: dict, model, image, where: tuple, tta: bool, scale: float) -> np.ndarray:
    """The probabilities of ``image``'s slices with the network at ``scale``: computed once per
    ``where`` (model folder, volume), ``tta`` and ``scale``, kept in ``cache``."""
    key = (*where, tta, scale)
    if key not in cache:
        m = at_scales(model, (scale,))[0]
        cache[key] = np.stack([predict_slice(m, s, tta=tta) for s in image])
    return cache[key]


if __name__ == "__main__":
    sys.exit(main())

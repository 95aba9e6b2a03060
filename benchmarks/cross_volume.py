"""Leave-one-volume-out: score a model on the *training* stack of a volume it never saw.

Each model is scored twice on the whole training stack of ``--on``: as it is (the stack's pixels
taken for the model's), and told the stack's pixel size (slices resized to the model's pixel
size: its recorded ``pixel_size_nm``, else the pixel size of the volume it was trained on,
``--trained-on``). Testing stacks are never read. Prints one JSON line per model and setting.

    python benchmarks/cross_volume.py runs/lovo/v2-sbem/best --trained-on sbem --on lucchipp
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import em_data  # beside this script

from napari_mitoseg.api import segment
from napari_mitoseg.inference import PredictOptions
from napari_mitoseg.metrics import score
from napari_mitoseg.model import load_model


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="+")
    ap.add_argument("--trained-on", choices=sorted(em_data.VOLUMES), required=True)
    ap.add_argument("--on", choices=sorted(em_data.VOLUMES), required=True)
    ap.add_argument("--every", type=int, default=1, help="score every N-th slice (default all)")
    args = ap.parse_args(argv)
    image, mask = em_data.load("train", args.on)
    image, mask = image[:: args.every], mask[:: args.every]
    for folder in args.models:
        model = load_model(folder, "cpu")
        model_nm = model.spec.pixel_size_nm or em_data.VOLUMES[args.trained_on].pixel_nm
        ratio = em_data.VOLUMES[args.on].pixel_nm / model_nm
        for told in (False, True):
            t0 = time.perf_counter()
            pred = segment(image, model, PredictOptions(pixel_ratio=ratio if told else 1.0))
            rep = score(pred, mask)
            print(json.dumps({"model": folder, "trained_on": args.trained_on, "on": args.on,
                              "slices": int(image.shape[0]), "pixel_size_given": told,
                              "pixel_ratio": round(ratio if told else 1.0, 3),
                              "iou": round(rep.iou, 4), "precision": round(rep.precision, 4),
                              "recall": round(rep.recall, 4),
                              "seconds": round(time.perf_counter() - t0, 1)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

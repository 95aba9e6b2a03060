"""Stacks from "other microscopes": the SBEM data resampled and contrast-reversed, segmented
with and without telling the model so (``PredictOptions.pixel_ratio`` / ``invert``).

For each stack scale (0.5x, 0.75x, 1.5x, 2x: the pixel size multiplied by 2, 1.33, 0.67, 0.5)
and for reversed contrast, prints the IoU of the shipped model as it is ("plain") and with the
stack's pixel ratio and contrast set ("set"). Ground truth is resampled with the image
(linear, > 0.5). Nothing is chosen here: the ratio is a fact about the stack.

``--data val``: the validation block of the training stack (its last 4 slices);
``--data test``: the whole testing stack.

    python benchmarks/other_microscopes.py [--data val|test] [--model mito-em-v2]
"""

from __future__ import annotations

import argparse
import json
import sys

import em_data  # beside this script
import numpy as np
from skimage.transform import rescale

from napari_mitoseg.api import get_model, segment
from napari_mitoseg.inference import PredictOptions
from napari_mitoseg.metrics import score

SCALES = (0.5, 0.75, 1.0, 1.5, 2.0)


def resample(image: np.ndarray, mask: np.ndarray, s: float) -> tuple[np.ndarray, np.ndarray]:
    if s == 1.0:
        return image, mask
    im = rescale(image, (1, s, s), order=1, anti_aliasing=s < 1, preserve_range=True)
    mk = rescale(mask.astype(np.float32), (1, s, s), order=1) > 0.5
    return np.round(im).astype(np.uint8), mk


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", choices=["val", "test"], default="val")
    ap.add_argument("--model", default=None, help="default: the shipped model")
    args = ap.parse_args(argv)
    image, mask = em_data.load(args.data)
    model = get_model(args.model, "cpu")
    for s in SCALES:
        im, mk = resample(image, mask, s)
        for inverted in (False, True):
            if inverted:
                im = 255 - im
            plain = score(segment(im, model), mk).iou
            told = PredictOptions(pixel_ratio=1.0 / s, invert=inverted)
            matched = score(segment(im, model, told), mk).iou
            print(json.dumps({"data": args.data, "model": model.name, "stack_scale": s,
                              "inverted": inverted, "pixel_ratio": round(1.0 / s, 4),
                              "iou_plain": round(plain, 4), "iou_set": round(matched, 4)}),
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

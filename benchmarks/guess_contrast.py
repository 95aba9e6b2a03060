"""The contrast guess (``stack_setup.guess_contrast``) on stacks "from other microscopes": each
volume's block resampled (its pixel size multiplied by 1/scale, the ground truth with it), as it
is and contrast-reversed, each told its pixel ratio. Prints one JSON line per stack: the model's
mean slice uncertainty on it as it is and inverted, the decision, whether it is right, the
seconds the guess took, and for the reversed stacks the IoU (default settings) taken as they are
and as guessed.

    python benchmarks/guess_contrast.py --data val [--volumes sbem lucchipp] [--scales 0.5 1 2]
    python benchmarks/guess_contrast.py --data test --scales 1
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import em_data  # beside this script
from other_microscopes import resample

from napari_mitoseg.api import get_model, segment
from napari_mitoseg.inference import PredictOptions
from napari_mitoseg.metrics import score
from napari_mitoseg.stack_setup import MARGIN, guess_contrast


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", choices=["val", "test"], default="val")
    ap.add_argument("--volumes", nargs="+", choices=sorted(em_data.VOLUMES), default=["sbem", "lucchipp"])
    ap.add_argument("--scales", nargs="+", type=float, default=[0.5, 0.75, 1.0, 1.5, 2.0])
    ap.add_argument("--model", default=None, help="default: the shipped model")
    args = ap.parse_args(argv)
    model = get_model(args.model, "cpu")
    for vol in args.volumes:
        image, mask = em_data.load(args.data, vol)
        ratio_at_1 = em_data.VOLUMES[vol].pixel_nm / model.spec.pixel_size_nm
        for s in args.scales:
            im, mk = resample(image, mask, s)
            ratio = ratio_at_1 / s
            for reversed_ in (False, True):
                x = 255 - im if reversed_ else im
                t0 = time.perf_counter()
                g = guess_contrast(model, x, ratio)
                row = {"data": args.data, "volume": vol, "shape": list(x.shape), "stack_scale": s,
                       "pixel_ratio": round(ratio, 3), "reversed": reversed_,
                       "uncertainty_as_is": round(g.plain, 4), "uncertainty_inverted": round(g.inverted, 4),
                       "share": round(min(g.plain, g.inverted) / max(g.plain, g.inverted), 3), "margin": MARGIN,
                       "inverted": g.invert, "right": g.invert == reversed_,
                       "guess_seconds": round(time.perf_counter() - t0, 2)}
                if reversed_:
                    for name, inv in (("iou_as_is", False), ("iou_guessed", g.invert)):
                        opts = PredictOptions(pixel_ratio=ratio, invert=inv)
                        row[name] = round(score(segment(x, model, opts, guess_contrast=False), mk).iou, 4)
                print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

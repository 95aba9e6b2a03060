"""Ortho-plane inference on Lucchi++: IoU of the XY, XZ and YZ passes and of their mean (what
``mitoseg segment --ortho`` computes), with and without z-smoothing, and how well the per-slice
uncertainty ranks the slices' errors with and without ortho. On the testing stack (final figures)
or, with ``--validation``, on the training stack's held-out block (slices 145-164; to choose a
model by).

The three passes are run one by one with :func:`napari_mitoseg.inference.predict_planes` (the
function :func:`napari_mitoseg.ortho.window_probs` averages; the stack fits one window) and kept
under ``--cache`` so that a second run only scores.

    python benchmarks/ortho_planes.py --cache /tmp/ortho [--slices 165] [--model NAME] [--validation]
    python benchmarks/ortho_planes.py --cache /tmp/x --validation --side-step 8 --model NAME

(one ``--cache`` folder per model and stack: the passes are cached by name).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from napari_mitoseg.api import get_model
from napari_mitoseg.inference import binarise, predict_planes
from napari_mitoseg.io import read_stack
from napari_mitoseg.metrics import score
from napari_mitoseg.neighbours import estimate_z_step, neighbour_pairs, smooth_stack
from napari_mitoseg.uncertainty import slice_uncertainty

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "lucchipp"


def _pass(model, image, axis: int, keep=None) -> np.ndarray:
    """Float32 probabilities of the planes normal to ``axis`` (0 XY, 1 XZ, 2 YZ), those at
    indices ``keep`` (default all), stacked along ``axis``."""
    keep = range(image.shape[axis]) if keep is None else keep
    planes = (np.take(image, k, axis=axis) for k in keep)
    return np.stack(list(predict_planes(model, planes)), axis=axis)


def side_views(model, image: np.ndarray, gt: np.ndarray, step: int) -> None:
    """How good the XZ and YZ passes are against XY, on every ``step``-th row (XZ) and column
    (YZ) alone: a thin block's side planes are many and small, so all of them cost many times
    the XY pass. Prints each view's IoU on its planes beside XY's on the same voxels."""
    thr = model.spec.threshold
    xy = _pass(model, image, 0)
    print(f"| view | planes | its IoU | XY's IoU on the same voxels | seconds |  (every {step}th plane)")
    print("|---|---:|---:|---:|---:|")
    for name, axis in (("XZ", 1), ("YZ", 2)):
        keep = list(range(0, image.shape[axis], step))
        t = time.perf_counter()
        side = _pass(model, image, axis, keep)
        sec = time.perf_counter() - t
        truth = np.take(gt, keep, axis=axis)
        same = np.take(xy, keep, axis=axis)
        print(f"| {name} | {len(keep)} | {score(side > thr, truth).iou:.3f} | {score(same > thr, truth).iou:.3f} "
              f"| {sec:.0f} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", type=Path, required=True)
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--slices", type=int, default=165)
    ap.add_argument("--model", default=None, help="a model name or folder (default: the default model)")
    ap.add_argument("--validation", action="store_true",
                    help="the training stack's held-out block (slices 145-164) instead of the testing stack")
    ap.add_argument("--val-start", type=int, default=145,
                    help="with --validation: the block's first slice, for a model trained with a deeper "
                         "held-out block (default: %(default)s, the shipped models' block)")
    ap.add_argument("--side-step", type=int, default=None, metavar="K",
                    help="only compare the XZ and YZ passes with XY, on every K-th plane (no cache)")
    args = ap.parse_args()
    which, part = ("train", slice(args.val_start, 165)) if args.validation else ("test", slice(0, args.slices))
    image = np.asarray(read_stack(args.data / f"{which}_image.tif"))[part]
    gt = np.asarray(read_stack(args.data / f"{which}_mask.tif"))[part] > 0
    model = get_model(args.model, "cpu")
    if args.side_step:
        print(f"Lucchi++ {which}ing slices {part.start}-{part.stop - 1}, model {args.model or 'default'}")
        side_views(model, image, gt, args.side_step)
        return
    args.cache.mkdir(parents=True, exist_ok=True)
    probs, seconds = {}, {}
    for name, axis in (("XY", 0), ("XZ", 1), ("YZ", 2)):
        f = args.cache / f"{name}_{args.slices}.npy"
        if not f.exists():
            t = time.perf_counter()
            np.save(f, _pass(model, image, axis).astype(np.float16))
            (args.cache / f"{name}_{args.slices}.s").write_text(f"{time.perf_counter() - t:.1f}")
            print(f"{name} pass done", flush=True)
        probs[name] = np.load(f).astype(np.float32)
        seconds[name] = float((args.cache / f"{name}_{args.slices}.s").read_text())
    probs["mean"] = (probs["XY"] + probs["XZ"] + probs["YZ"]) / 3
    links = neighbour_pairs(image)
    thr = model.spec.threshold
    print(f"Lucchi++ {which}ing slices {part.start}-{part.stop - 1}, model {args.model or 'default'}; "
          f"{int((~links).sum())} pair(s) not neighbours")
    print(f"z step estimated: {estimate_z_step(image):.2f} pixels")
    print("| probabilities | IoU, no z-smoothing | IoU, z-smoothed (default) | adjacent slices only "
          "| pass seconds |")
    print("|---|---:|---:|---:|---:|")
    smoothed = {}
    for name, p in probs.items():
        plain = score(p > thr, gt).iou
        smoothed[name] = np.stack(smooth_stack(p, image))
        smooth = np.stack([binarise(s, thr) for s in smoothed[name]])
        adjacent = np.stack([binarise(s, thr) for s in smooth_stack(p, image, z_step=np.inf)])  # as if thick
        sec = sum(seconds.values()) if name == "mean" else seconds[name]
        print(f"| {name} | {plain:.3f} | {score(smooth, gt).iou:.3f} | {score(adjacent, gt).iou:.3f} "
              f"| {sec:.0f} |")
    print("\nSpearman of per-slice uncertainty with per-slice error (1 - IoU), z-smoothed:")
    for name in ("XY", "mean"):
        p = smoothed[name]
        err = [1 - score(p[i] > thr, gt[i]).iou for i in range(len(p))]
        print(f"  {name}: {spearmanr([slice_uncertainty(s, thr) for s in p], err).statistic:.2f}")


if __name__ == "__main__":
    main()

"""Which slices should a user correct? Suggested vs evenly spaced vs random, as a user would.

For each testing stack: segment it once with the base model (default settings, the stack's pixel
size told), take each slice's uncertainty, and pick 2 slices to correct by each rule:
- ``suggested``: :func:`napari_mitoseg.uncertainty.suggest_slices` (what *Suggest slices* and
  ``mitoseg suggest`` propose);
- ``even``: evenly spaced (``Z // 4`` and ``3 Z // 4``);
- ``random``: 2 distinct slices drawn at random (seeds 0, 1, 2).
Each pair plays the user's corrections (their ground truth): fine-tune with the defaults
(``api.iter_finetune``), segment the other slices with the new model, and score them. The IoU of
the same other slices before (the base model) is reported beside it, so each row's gain is
measured on its own remaining slices.

    python benchmarks/suggest_slices.py [--volume sbem lucchipp] [--n 2] [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time

import em_data  # beside this script
import numpy as np

from napari_mitoseg.api import get_model, iter_finetune, segment
from napari_mitoseg.inference import PredictOptions
from napari_mitoseg.metrics import score
from napari_mitoseg.uncertainty import UncertaintyRecorder, suggest_slices


def _drive(gen):
    """Run a generator to its end; its return value."""
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            return stop.value


def rules(uncertainty: list[float], n: int, seeds: list[int]) -> list[tuple[str, list[int]]]:
    z = len(uncertainty)
    out = [("suggested", sorted(suggest_slices(uncertainty, n))),
           ("even", sorted({(2 * i + 1) * z // (2 * n) for i in range(n)}))]
    for s in seeds:
        rng = np.random.default_rng(s)
        out.append((f"random (seed {s})", sorted(int(i) for i in rng.choice(z, n, replace=False))))
    return out


def run_volume(volume: str, n: int, seeds: list[int], model: str) -> list[dict]:
    image, mask = em_data.load("test", volume)
    mask = mask.astype(np.uint8)
    base = get_model(model, "cpu")
    nm = base.spec.pixel_size_nm
    ratio = em_data.VOLUMES[volume].pixel_nm / nm if nm else 1.0
    told = PredictOptions(pixel_ratio=ratio)
    rec = UncertaintyRecorder()
    t0 = time.perf_counter()
    base_labels = segment(image, base, told, on_slice=rec)
    print(f"# {volume}: base segmentation {time.perf_counter() - t0:.0f} s, "
          f"IoU {score(base_labels, mask).iou:.4f}", file=sys.stderr, flush=True)
    rows = []
    for name, chosen in rules(rec.values, n, seeds):
        others = [z for z in range(image.shape[0]) if z not in chosen]
        before = score(base_labels[others], mask[others]).iou
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            res = _drive(iter_finetune(image, mask, chosen, base=model, device="cpu", out_root=tmp,
                                       pixel_ratio=ratio))
            seconds = time.perf_counter() - t0
            after = score(segment(image[others], get_model(res.path, "cpu")), mask[others]).iou
        row = {"volume": volume, "rule": name, "slices": chosen,
               "uncertainty": [rec.values[i] for i in chosen],
               "iou_others_before": round(before, 4), "iou_others_after": round(after, 4),
               "gain": round(after - before, 4), "finetune_seconds": round(seconds, 1)}
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--volume", nargs="+", choices=sorted(em_data.VOLUMES), default=["sbem", "lucchipp"])
    ap.add_argument("--model", default="mito-em-v3")
    ap.add_argument("--n", type=int, default=2)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = ap.parse_args(argv)
    rows = [r for v in args.volume for r in run_volume(v, args.n, args.seeds, args.model)]
    print("\n| stack | rule | slices | IoU others before | after | gain | fine-tune s |")
    print("|---|---|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['volume']} | {r['rule']} | {r['slices']} | {r['iou_others_before']:.3f} | "
              f"{r['iou_others_after']:.3f} | {r['gain']:+.3f} | {r['finetune_seconds']:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

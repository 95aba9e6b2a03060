"""Are adjacent slices neighbours in space? The measure's figures, and what smoothing only across
neighbours gives.

1. Correlation of adjacent slices' signatures (:func:`napari_mitoseg.neighbours.signature`) on
   z-series (the Lucchi++ and SBEM training and testing stacks), on separate images (10 Lucchi++
   and 10 SBEM testing slices interleaved, SBEM cropped to Lucchi++'s 768 x 1024) and on shuffled
   slices of one stack, by how far apart they really lie.
2. IoU of the interleaved stack and of a 40-slice Lucchi++ z-series (testing slices 0-39): no
   z-smoothing, smoothing every pair (before), smoothing neighbours only (the default now). The
   probabilities are one plain pass of the shipped model; smoothing and thresholding are applied
   as :func:`napari_mitoseg.inference.iter_predict` applies them.

    python benchmarks/neighbours.py
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from napari_mitoseg.api import get_model
from napari_mitoseg.inference import predict_slice
from napari_mitoseg.io import read_stack
from napari_mitoseg.metrics import score
from napari_mitoseg.neighbours import (
    MIN_CORRELATION,
    correlation,
    estimate_z_step,
    neighbour_pairs,
    signature,
    smooth_stack,
    smooth_z,
)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def _read(name: str):
    image = np.asarray(read_stack(DATA / f"{name}_image.tif"))
    return image, np.asarray(read_stack(DATA / f"{name}_mask.tif")) > 0


def _adjacent(stack) -> np.ndarray:
    s = [signature(x) for x in stack]
    return np.array([correlation(s[i], s[i + 1]) for i in range(len(s) - 1)])


def correlations(stacks: dict) -> None:
    print(f"| stack | adjacent pairs | correlation min | median | max | pairs below {MIN_CORRELATION} |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, stack in stacks.items():
        c = _adjacent(stack)
        print(f"| {name} | {len(c)} | {c.min():.3f} | {np.median(c):.3f} | {c.max():.3f} | "
              f"{int((c < MIN_CORRELATION).sum())} |")


def shuffled(stack, name: str, seed: int = 0) -> None:
    """Shuffled slices of one stack: adjacent correlation by true distance along z."""
    perm = np.random.default_rng(seed).permutation(len(stack))
    c = _adjacent(stack[perm])
    d = np.abs(np.diff(perm))
    for lo, hi in ((1, 2), (2, 4), (4, 9), (9, 17), (17, 10**6)):
        sel = (d >= lo) & (d < hi)
        if sel.any():
            print(f"| {name} shuffled, {lo}-{hi - 1 if hi < 10**6 else 'more'} apart | {int(sel.sum())} | "
                  f"{c[sel].min():.3f} | {np.median(c[sel]):.3f} | {c[sel].max():.3f} | "
                  f"{int((c[sel] < MIN_CORRELATION).sum())} |")


def smoothing(model, image, gt, name: str) -> None:
    thr = model.spec.threshold
    raw = [predict_slice(model, s) for s in image]
    links = neighbour_pairs(image)
    rows = {"no z-smoothing (--no-z-smooth)": raw, "every pair smoothed (before)": list(smooth_z(iter(raw))),
            "neighbours only, adjacent slices": list(smooth_z(iter(raw), map(signature, image))),
            "neighbours only, z step estimated (default)": smooth_stack(raw, image)}
    for label, probs in rows.items():
        iou = score(np.stack(probs) > thr, gt).iou
        print(f"| {name} | {label} | {iou:.3f} |")
    print(f"| {name} | pairs not neighbours | {int((~links).sum())} of {len(links)} |")


def main() -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    lt, lt_gt = _read("lucchipp/test")
    st, st_gt = _read("sbem/test")
    ltr, _ = _read("lucchipp/train")
    s_tr, _ = _read("sbem/train")
    h = lt.shape[1]
    inter = np.stack([x for pair in zip(lt[:10], st[:10, :h], strict=True) for x in pair])
    inter_gt = np.stack([x for pair in zip(lt_gt[:10], st_gt[:10, :h], strict=True) for x in pair])
    correlations({"Lucchi++ training (z-series)": ltr, "Lucchi++ testing (z-series)": lt,
                  "SBEM training (z-series)": s_tr, "SBEM testing (z-series)": st,
                  "10 Lucchi++ + 10 SBEM interleaved (separate images)": inter})
    print("\n| stack | z step estimated (pixels) |\n|---|---:|")
    stacks = {"Lucchi++ training": ltr, "Lucchi++ testing": lt, "Lucchi++ testing, every 2nd slice": lt[::2],
              "Lucchi++ testing, every 3rd slice": lt[::3], "SBEM training": s_tr, "SBEM testing": st,
              "10 Lucchi++ + 10 SBEM interleaved": inter}
    for name, stack in stacks.items():
        step = estimate_z_step(stack)
        print(f"| {name} | {'-' if step is None else f'{step:.2f}'} |")
    shuffled(lt, "Lucchi++ testing")
    shuffled(s_tr, "SBEM training")
    model = get_model(None, "cpu")
    print("\n| stack | smoothing | IoU |\n|---|---|---:|")
    smoothing(model, inter, inter_gt, "10 Lucchi++ + 10 SBEM interleaved")
    smoothing(model, lt[:40], lt_gt[:40], "Lucchi++ testing 0-39 (z-series)")


if __name__ == "__main__":
    main()

"""Which per-slice uncertainty tells the wrong slices apart, without ground truth?

Runs the shipped model (plain XY passes, cached under ``--cache``) over the validation blocks of
the training stacks (the last 20 % of each, held out in training) and over the testing stacks,
applies the default z-smoothing (neighbours only), and prints, for each candidate measure, the
Spearman rank correlation between it and the per-slice error (1 - IoU against the ground truth).
The candidate chosen on the validation blocks is :func:`napari_mitoseg.uncertainty.slice_uncertainty`;
the testing stacks give the final figures.

    python benchmarks/uncertainty.py --cache /tmp/unc
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from napari_mitoseg.api import get_model
from napari_mitoseg.inference import predict_slice
from napari_mitoseg.io import read_stack
from napari_mitoseg.metrics import score
from napari_mitoseg.neighbours import estimate_z_step, neighbour_pairs, signature, smooth_z, smoothing_is_wide
from napari_mitoseg.uncertainty import BAND, PRIOR_PIXELS, slice_uncertainty

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
#: name -> (stack, slices): validation blocks (last 20 %) and testing stacks
SETS = {
    "Lucchi++ validation": ("lucchipp/train", slice(132, None)),
    "SBEM validation": ("sbem/train", slice(16, None)),
    "Lucchi++ testing": ("lucchipp/test", slice(None)),
    "SBEM testing": ("sbem/test", slice(None)),
}


def _entropy(p: np.ndarray) -> np.ndarray:
    q = np.clip(p, 1e-6, 1 - 1e-6)
    return -(q * np.log2(q) + (1 - q) * np.log2(1 - q))


def _objects_weakness(p: np.ndarray, thr: float, prior: float) -> float:
    """Area-weighted (1 - mean probability) of the predicted objects, over foreground."""
    from scipy import ndimage as ndi

    m = p > thr
    lab, n = ndi.label(m)
    if n == 0:
        return 0.0
    idx = np.arange(1, n + 1)
    mean, area = ndi.mean(p, lab, idx), ndi.sum(m, lab, idx)
    return float(((1 - mean) * area).sum() / (area.sum() + prior))


def candidates(raw: np.ndarray, smooth: np.ndarray, links: np.ndarray, thr: float) -> dict[str, np.ndarray]:
    """Per-slice values of each candidate measure; ``raw`` / ``smooth``: (Z, Y, X) probabilities."""
    prior = PRIOR_PIXELS * raw[0].size
    names = (f"unsure (within {BAND}) / (foreground + unsure) [chosen]",
             "unsure (within 0.3) / (foreground + unsure)",
             "share of unsure pixels (within 0.2)", "mean entropy", "entropy / (foreground + entropy)",
             "objects' 1 - mean probability, by area", "z-neighbour disagreement / foreground",
             "smoothing change / foreground")
    out: dict[str, list[float]] = {k: [] for k in names}
    masks = raw > thr
    for i in range(len(raw)):
        p, m = smooth[i], smooth[i] > thr
        fg = float(np.count_nonzero(m))
        h = float(_entropy(p).sum())
        u3 = float(np.count_nonzero(np.abs(p - thr) < 0.3))
        nb = [j for j, ok in ((i - 1, i > 0 and links[i - 1]), (i + 1, i < len(raw) - 1 and links[i])) if ok]
        dis = np.mean([np.count_nonzero(masks[i] ^ masks[j]) for j in nb]) if nb else 0.0
        values = (slice_uncertainty(p, thr), u3 / (fg + u3 + prior),
                  np.count_nonzero(np.abs(p - thr) < 0.2) / p.size, h / p.size, h / (fg + h + prior),
                  _objects_weakness(p, thr, prior), float(dis) / (fg + prior),
                  float(np.count_nonzero(masks[i] ^ m)) / (fg + prior))
        for k, v in zip(names, values, strict=True):
            out[k].append(float(v))
    return {k: np.asarray(v) for k, v in out.items()}


def _probs(cache: Path, model, name: str, stack: str, sl: slice):
    f = cache / (name.replace(" ", "_").replace("+", "p") + "_v2.npz")  # v2: with signatures and z step
    if not f.exists():
        image = np.asarray(read_stack(DATA / f"{stack}_image.tif"))[sl]
        gt = np.asarray(read_stack(DATA / f"{stack}_mask.tif"))[sl] > 0
        t = time.perf_counter()
        p = np.stack([predict_slice(model, s) for s in image]).astype(np.float16)
        links = neighbour_pairs(image)
        sigs = np.stack([signature(s) for s in image])
        step = estimate_z_step(image)
        np.savez(f, p=p, gt=gt, links=links, sigs=sigs, z_step=np.nan if step is None else step,
                 seconds=time.perf_counter() - t)
    d = np.load(f)
    step = float(d["z_step"])
    return d["p"].astype(np.float32), d["gt"], d["links"], d["sigs"], None if np.isnan(step) else step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", type=Path, required=True)
    args = ap.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    model = get_model(None, "cpu")
    thr = model.spec.threshold
    rows, pooled = {}, {}
    for name, (stack, sl) in SETS.items():
        raw, gt, links, sigs, step = _probs(args.cache, model, name, stack, sl)
        smooth = np.stack(list(smooth_z(iter(raw), iter(sigs), wide=smoothing_is_wide(step))))
        err = np.array([1 - score(smooth[i] > thr, gt[i]).iou for i in range(len(raw))])
        for k, v in candidates(raw, smooth, links, thr).items():
            rows.setdefault(k, {})[name] = spearmanr(v, err).statistic
            if "validation" in name:
                pooled.setdefault(k, ([], []))
                pooled[k][0].extend(v)
                pooled[k][1].extend(err)
        print(f"{name}: {len(raw)} slices, mean error {err.mean():.3f}", flush=True)
    names = list(SETS)
    print("\n| per-slice measure | both validation blocks | " + " | ".join(names) + " |")
    print("|---|" + "---:|" * (len(names) + 1))
    for k, r in rows.items():
        both = spearmanr(*pooled[k]).statistic
        print(f"| {k} | {both:.2f} | " + " | ".join(f"{r[n]:.2f}" for n in names) + " |")


if __name__ == "__main__":
    main()

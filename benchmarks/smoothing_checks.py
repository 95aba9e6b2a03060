"""Validation-only checks of how probabilities are resized, averaged over ortho passes and
smoothed along z (docs/benchmarks.md, "Checked on validation and left as they are"). The
testing stacks take no part.

    python benchmarks/smoothing_checks.py upsampling
    python benchmarks/smoothing_checks.py ortho-weights --cache /tmp/o100   # after ortho_planes.py
        --cache /tmp/o100 --validation --val-start 100 has cached the three passes
    python benchmarks/smoothing_checks.py finetuned --model runs/ftcal/lucchipp-val-0/model
        # a model fine-tuned on slices 5 and 15 of Lucchi++'s validation block
        # (finetune_figures.py --data val --volume lucchipp --cases same, with a kept model)
    python benchmarks/smoothing_checks.py small-objects

``upsampling``: the network's probabilities resized to the slice bilinearly as they are (what
the pipeline does) or as logits; ``ortho-weights``: the weight of the XY pass in the average of
the three passes, scored on slices 145-164 (the shipped model never trained on them; their XZ
and YZ planes reach up to slice 100 for context); ``finetuned``: wide against adjacent
z-smoothing for a fine-tuned model on Lucchi++'s validation block; ``small-objects``: the default
segmentation with connected components under a size (pixels per slice or voxels in 3D) removed.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import em_data  # beside this script
import numpy as np
from scipy import ndimage as ndi

import napari_mitoseg.inference as inference
from napari_mitoseg.api import segment
from napari_mitoseg.io import read_stack
from napari_mitoseg.metrics import score
from napari_mitoseg.model import load_model
from napari_mitoseg.neighbours import smooth_stack
from napari_mitoseg.tiling import resize

LUCCHI = Path(__file__).resolve().parents[2] / "shared" / "data" / "lucchipp"


def _iou(p: np.ndarray, gt: np.ndarray, thr: float = 0.5) -> float:
    return round(score(p > thr, gt).iou, 4)


def _smoothed(raw: np.ndarray, image: np.ndarray, how: str) -> np.ndarray:
    if how == "none":
        return raw
    return np.stack(smooth_stack(raw, image, z_step=np.inf if how == "adjacent" else None))


def upsampling(model_name: str) -> None:
    plain = inference._to_slices

    def via_logits(probs, shape):
        p = np.clip(probs, 1e-4, 1 - 1e-4)
        return (1 / (1 + np.exp(-resize((np.log(p) - np.log1p(-p)).astype(np.float32), shape)))).astype(np.float32)

    model = load_model(model_name, "cpu")
    for v in ("lucchipp", "sbem"):
        image, mask = em_data.load("val", v)
        m = inference.for_stack(model, em_data.VOLUMES[v].pixel_nm / model.spec.pixel_size_nm)
        for name, fn in (("probabilities", plain), ("logits", via_logits)):
            inference._to_slices = fn
            try:
                raw = np.stack([inference.predict_slice(m, s) for s in image])
            finally:
                inference._to_slices = plain
            for how in ("none", "auto"):
                print(json.dumps({"volume": v, "resized": name, "z_smoothing": how,
                                  "iou": _iou(_smoothed(raw, image, how), mask)}), flush=True)


def ortho_weights(cache: Path) -> None:
    image = np.asarray(read_stack(LUCCHI / "train_image.tif"))[100:165]
    gt = np.asarray(read_stack(LUCCHI / "train_mask.tif"))[100:165] > 0
    p = {n: np.load(cache / f"{n}_165.npy").astype(np.float32) for n in ("XY", "XZ", "YZ")}
    scored = slice(45, 65)  # slices 145-164
    rows = [(n, p[n]) for n in p]
    for w in (1 / 3, 0.4, 0.5, 0.6):
        rows.append((f"XY weight {w:.2f}", w * p["XY"] + (1 - w) / 2 * (p["XZ"] + p["YZ"])))
    for name, q in rows:
        print(json.dumps({"probabilities": name, **{
            how: _iou(_smoothed(q, image, how)[scored], gt[scored]) for how in ("none", "adjacent", "auto")}}),
            flush=True)


def finetuned(model_folder: str) -> None:
    image, mask = em_data.load("val", "lucchipp")
    mask = mask > 0
    others = [i for i in range(image.shape[0]) if i not in (5, 15)]
    for name in ("mito-em-v3", model_folder):
        model = load_model(name, "cpu")
        raw = np.stack([inference.predict_slice(model, s) for s in image])
        print(json.dumps({"model": name, **{how: _iou(_smoothed(raw, image, how)[others], mask[others])
                                            for how in ("none", "adjacent", "auto")}}), flush=True)


def _drop_small(mask: np.ndarray, size: int, dims: int) -> np.ndarray:
    out = mask.copy()
    for part in ([out] if dims == 3 else list(out)):
        lab, n = ndi.label(part)
        if n:
            small = np.bincount(lab.ravel()) < size
            small[0] = False
            part[small[lab]] = 0
    return out


def small_objects(model_name: str) -> None:
    model = load_model(model_name, "cpu")
    means: dict[tuple[int, int], list[float]] = {}
    for v in ("sbem", "lucchipp"):
        image, mask = em_data.load("val", v)
        told = inference.PredictOptions(pixel_ratio=em_data.VOLUMES[v].pixel_nm / model.spec.pixel_size_nm)
        pred = np.asarray(segment(image, model, told)) > 0
        for dims in (2, 3):
            for size in (0, 50, 200, 500, 1000, 2000, 5000):
                iou = _iou(_drop_small(pred, size, dims), mask > 0)
                means.setdefault((dims, size), []).append(iou)
                print(json.dumps({"volume": v, "dims": dims, "min_size": size, "iou": iou}), flush=True)
    for (dims, size), ious in means.items():
        mean = round(float(np.mean(ious)), 4)
        print(json.dumps({"volume": "mean", "dims": dims, "min_size": size, "iou": mean}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("check", choices=["upsampling", "ortho-weights", "finetuned", "small-objects"])
    ap.add_argument("--cache", type=Path, default=Path("/tmp/o100"))
    ap.add_argument("--model", default="mito-em-v3")
    args = ap.parse_args()
    if args.check == "upsampling":
        upsampling(args.model)
    elif args.check == "ortho-weights":
        ortho_weights(args.cache)
    elif args.check == "small-objects":
        small_objects(args.model)
    else:
        finetuned(args.model)


if __name__ == "__main__":
    main()

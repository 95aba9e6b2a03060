"""Fine-tuning figures: correct a few slices, fine-tune with the default settings, score the rest.

Cases (``--cases``):
- ``same``: the stack as it is, told its pixel size in nm (``em_data.VOLUMES``);
- ``shifted``: the stack rescaled by 0.5x and with inverted contrast (another "microscope"),
  told nothing;
- ``shifted-set``: the same, with the user telling the model its pixel size and contrast, for
  the segmentation before and for the fine-tune (whose model keeps both).
The corrected slices (``--corrected``, default: 2 of the stack, spread out) play the user's
corrections (their ground truth); the IoU on the other slices is reported before and after
fine-tuning, with the fine-tune's wall time.

``--data val`` runs the same protocol on the validation block of the training stack: that is
where the fine-tuning defaults (``training.FINETUNE``) are chosen, trying settings with
``--config '{"steps": 300}'``. Several ``--config`` run one after another in one process, the
base model's scores ("before") computed once per case; ``{}`` is the defaults.

    python benchmarks/finetune_figures.py [--model mito-em-v3] [--volume sbem|lucchipp] \
        [--cases same shifted] [--data test|val] [--config JSON ...] [--corrected Z ...] [--scales 1 1.5] \
        [--interpolate 0.9 0.8 ...]

``--interpolate``: also score the fine-tuned weights interpolated with the base model's
(``alpha * tuned + (1 - alpha) * base``, weight-space ensembling as in WiSE-FT).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time

import em_data  # beside this script
import numpy as np
import torch
from skimage.transform import rescale

from napari_mitoseg.api import get_model, iter_finetune, segment
from napari_mitoseg.inference import PredictOptions
from napari_mitoseg.metrics import score
from napari_mitoseg.model import load_model
from napari_mitoseg.training import FINETUNE


def shifted(image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    small = rescale(image, (1, 0.5, 0.5), order=1, anti_aliasing=True, preserve_range=True)
    msk = rescale(mask, (1, 0.5, 0.5), order=0, anti_aliasing=False, preserve_range=True)
    return (255 - small).astype(np.uint8), (msk > 0).astype(np.uint8)


def score_before(image, mask, model: str, corrected, pixel_ratio=1.0, invert=False, scales=(1.0,)) -> float:
    """IoU of the base model on the slices not corrected."""
    others = [z for z in range(image.shape[0]) if z not in corrected]
    told = PredictOptions(pixel_ratio=pixel_ratio, invert=invert, scales=scales)
    return score(segment(image[others], get_model(model, "cpu"), told), mask[others]).iou


def interpolated(tuned_path, base: str, alpha: float):
    """The fine-tuned model with its weights ``alpha * tuned + (1 - alpha) * base``."""
    base_sd = load_model(base, "cpu").net.state_dict()
    m = load_model(tuned_path, "cpu")
    sd = m.net.state_dict()
    m.net.load_state_dict({k: alpha * v + (1 - alpha) * base_sd[k] if v.is_floating_point() else v
                           for k, v in sd.items()})
    return m


def run_case(name: str, image, mask, model: str, corrected, config, pixel_ratio=1.0,
             invert=False, before: float | None = None, scales=(1.0,), alphas=()) -> dict:
    others = [z for z in range(image.shape[0]) if z not in corrected]
    if before is None:
        before = score_before(image, mask, model, corrected, pixel_ratio, invert, scales)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        gen = iter_finetune(image, mask, corrected, base=model, device="cpu", out_root=tmp,
                            config=config, pixel_ratio=pixel_ratio, invert=invert)
        while True:
            try:
                next(gen)
            except StopIteration as stop:
                res = stop.value
                break
        seconds = time.perf_counter() - t0
        tuned = get_model(res.path, "cpu")
        after = score(segment(image[others], tuned, PredictOptions(scales=scales)), mask[others]).iou
        mixed = {str(a): round(score(segment(image[others], interpolated(res.path, model, a),
                                             PredictOptions(scales=scales)), mask[others]).iou, 4)
                 for a in alphas}
    return {"case": name, "shape": list(image.shape), "corrected_slices": list(corrected),
            "iou_others_before": round(before, 4), "iou_others_after": round(after, 4),
            **({"iou_others_interpolated": mixed} if mixed else {}),
            "iou_corrected_before": round(res.iou_before, 4),
            "iou_corrected_after": round(res.iou_after, 4),
            "steps": res.steps, "lr": config.lr, "pixel_ratio": round(pixel_ratio, 3), "scales": list(scales),
            "finetune_seconds": round(seconds, 1), "train_seconds": round(res.seconds, 1),
            "threads": torch.get_num_threads(), "load_1min": round(os.getloadavg()[0], 2)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="mito-em-v3")
    ap.add_argument("--volume", choices=sorted(em_data.VOLUMES), default="sbem")
    ap.add_argument("--cases", nargs="+", default=["same", "shifted", "shifted-set"],
                    choices=["same", "shifted", "shifted-set"])
    ap.add_argument("--data", choices=["test", "val"], default="test")
    ap.add_argument("--config", nargs="+", default=["{}"],
                    help="JSON overrides of training.FINETUNE; several run one after another")
    ap.add_argument("--corrected", type=int, nargs="+", default=None,
                    help="the corrected slices (default: 2 spread over the stack)")
    ap.add_argument("--scales", type=float, nargs="+", default=[1.0],
                    help="segment before and after at these scales (multi-scale averaging; default: 1)")
    ap.add_argument("--interpolate", type=float, nargs="+", default=[], metavar="ALPHA",
                    help="also score the tuned weights interpolated with the base's (alpha: the tuned share)")
    args = ap.parse_args(argv)
    configs = [(c, dataclasses.replace(FINETUNE, **json.loads(c))) for c in args.config]
    image, mask = em_data.load(args.data, args.volume)
    mask = mask.astype(np.uint8)
    z = image.shape[0]
    corrected = tuple(args.corrected or (z // 4, (3 * z) // 4))
    model_nm = get_model(args.model, "cpu").spec.pixel_size_nm
    ratio = em_data.VOLUMES[args.volume].pixel_nm / model_nm if model_nm else 1.0
    for case in args.cases:
        im, mk = (image, mask) if case == "same" else shifted(image, mask)
        told = {"same": {"pixel_ratio": ratio}, "shifted": {},
                "shifted-set": {"pixel_ratio": 2.0 * ratio, "invert": True}}[case]
        before = score_before(im, mk, args.model, corrected, scales=tuple(args.scales), **told)
        for text, config in configs:
            row = run_case(case, im, mk, args.model, corrected, config, before=before, scales=tuple(args.scales),
                           alphas=args.interpolate, **told)
            print(json.dumps({"volume": args.volume, "data": args.data, "config": text, **row}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

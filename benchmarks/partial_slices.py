"""Learning from part of a slice: fine-tune on the checked half of two corrected slices, against
fine-tuning on the two whole slices, and score the other slices.

The protocol of ``finetune_figures.py`` (case ``same``: the stack told its pixel size): the
corrected slices (``--corrected``; SBEM testing stack: 0 and 5, else 2 spread over the stack)
play the user's corrections (their ground truth). Fine-tune with the defaults
(``training.FINETUNE``) twice from the same base: on the whole corrected slices, and on only their
``--half`` (default: the left half, ``checked=`` of ``api.iter_finetune``; the rest of each slice
unlabelled). Reports the IoU on the other slices before, after "whole" and after "half", and each
fine-tune's wall time, as JSON lines and a markdown table.

    python benchmarks/partial_slices.py [--volume sbem lucchipp] [--model mito-em-v3] \
        [--half left|right|top|bottom] [--corrected Z ...] [--config JSON]

``--synthetic`` runs the same on the synthetic sample (no data needed; a quick check of the
script, e.g. with a tiny model folder and ``--config '{"steps": 2, "tile": 64}'``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time

import numpy as np
import torch

from napari_mitoseg._generators import result_of
from napari_mitoseg.api import get_model, iter_finetune, segment
from napari_mitoseg.inference import PredictOptions
from napari_mitoseg.metrics import score
from napari_mitoseg.training import FINETUNE

#: the corrected slices of the SBEM testing stack (as in docs/benchmarks.md's fine-tune figures)
SBEM_CORRECTED = (0, 5)


def half_regions(shape: tuple[int, int, int], slices, half: str) -> dict[int, np.ndarray]:
    """{z: (Y, X) bool}: the ``half`` ("left", "right", "top", "bottom") of each of ``slices``."""
    h, w = shape[1:]
    plane = np.zeros((h, w), bool)
    cut = {"left": np.s_[:, : w // 2], "right": np.s_[:, w // 2 :],
           "top": np.s_[: h // 2, :], "bottom": np.s_[h // 2 :, :]}[half]
    plane[cut] = True
    return {int(z): plane for z in slices}


def finetune_and_score(image, mask, others, model, corrected, config, ratio, checked=None) -> tuple:
    """(IoU on the ``others`` slices after fine-tuning, seconds, the FinetuneResult)."""
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        res = result_of(iter_finetune(image, mask, corrected, base=model, device="cpu", out_root=tmp,
                                      config=config, pixel_ratio=ratio, checked=checked))
        seconds = time.perf_counter() - t0
        after = score(segment(image[others], get_model(res.path, "cpu")), mask[others]).iou
    return after, seconds, res


def run_volume(name: str, image, mask, model: str, corrected, config, ratio: float, half: str) -> dict:
    others = [z for z in range(image.shape[0]) if z not in corrected]
    base = get_model(model, "cpu")
    before = score(segment(image[others], base, PredictOptions(pixel_ratio=ratio)), mask[others]).iou
    whole, s_whole, _ = finetune_and_score(image, mask, others, model, corrected, config, ratio)
    regions = half_regions(image.shape, corrected, half)
    part, s_part, res = finetune_and_score(image, mask, others, model, corrected, config, ratio, regions)
    return {"volume": name, "shape": list(image.shape), "corrected_slices": list(corrected),
            "half": half, "checked_share": round(res.checked_share, 3),
            "iou_others_before": round(before, 4), "iou_others_after_whole": round(whole, 4),
            "iou_others_after_half": round(part, 4), "seconds_whole": round(s_whole, 1),
            "seconds_half": round(s_part, 1), "steps": config.steps, "threads": torch.get_num_threads()}


def table(rows: list[dict]) -> str:
    lines = ["| volume | corrected | IoU others before | after, whole slices | after, checked half | "
             "s whole | s half |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['volume']} | {r['corrected_slices']} | {r['iou_others_before']:.3f} | "
                     f"{r['iou_others_after_whole']:.3f} | {r['iou_others_after_half']:.3f} "
                     f"({r['half']}, {r['checked_share']:.0%}) | {r['seconds_whole']:.0f} | "
                     f"{r['seconds_half']:.0f} |")
    return "\n".join(lines)


def _load(volume: str, synthetic: bool):
    """(image, mask uint8, pixel size in nm or None) of the testing stack, or the synthetic one."""
    if synthetic:
        from napari_mitoseg.synthetic import make_sample

        image, mask = make_sample(shape=(6, 128, 128), seed=0)
        return image, (mask > 0).astype(np.uint8), None
    import em_data  # beside this script

    image, mask = em_data.load("test", volume)
    return image, mask.astype(np.uint8), em_data.VOLUMES[volume].pixel_nm


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="mito-em-v3")
    ap.add_argument("--volume", nargs="+", default=["sbem"], choices=["sbem", "lucchipp"])
    ap.add_argument("--half", choices=["left", "right", "top", "bottom"], default="left")
    ap.add_argument("--corrected", type=int, nargs="+", default=None,
                    help="the corrected slices (default: 0 and 5 on SBEM, else 2 spread over the stack)")
    ap.add_argument("--config", default="{}", help="JSON overrides of training.FINETUNE")
    ap.add_argument("--synthetic", action="store_true", help="the synthetic sample instead of the data")
    args = ap.parse_args(argv)
    config = dataclasses.replace(FINETUNE, **json.loads(args.config))
    model_nm = get_model(args.model, "cpu").spec.pixel_size_nm
    rows = []
    for volume in ["synthetic"] if args.synthetic else args.volume:
        image, mask, nm = _load(volume, args.synthetic)
        z = image.shape[0]
        default = SBEM_CORRECTED if volume == "sbem" else (z // 4, (3 * z) // 4)
        corrected = tuple(args.corrected or default)
        ratio = nm / model_nm if nm and model_nm else 1.0
        row = run_volume(volume, image, mask, args.model, corrected, config, ratio, args.half)
        print(json.dumps(row), flush=True)
        rows.append(row)
    print()
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())

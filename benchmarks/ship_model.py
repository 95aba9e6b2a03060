"""Package a trained run as a shipped model: settings from validation, figures from the test stack.

    python benchmarks/ship_model.py runs/mito-em-v2/best --threshold T [--z-smooth] \
        [--fill-holes] --name mito-em-v2 --card-notes NOTES.md

1. Loads the chosen checkpoint (chosen on validation by ``select_settings.py``).
2. Writes the settings chosen on validation into its spec (threshold) and config
   (z-smoothing and hole filling by default or not).
3. Measures the whole SBEM testing stack: default settings, with TTA, and with each
   post-processing step switched the other way (the figures only; nothing is chosen here).
4. Saves ``src/napari_mitoseg/models/<name>`` (fp16 safetensors, config.json, README.md card).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import time
from pathlib import Path

import em_data  # beside this script
import torch

from napari_mitoseg.api import segment
from napari_mitoseg.inference import PredictOptions
from napari_mitoseg.metrics import score
from napari_mitoseg.model import SHIPPED_DIR, load_model, read_config, save_model

NOTICE = (
    "Trained on the CDeep3M mitochondria sample (SBEM of brain tissue): Haberl et al., "
    '"CDeep3M - Plug-and-Play cloud-based deep learning for image segmentation", Nature Methods '
    "15, 677-680 (2018). Data Copyright 2018 The Regents of the University of California; "
    "used and redistributed (as trained weights) for educational, research and non-profit purposes."
)


def measure(model, image, gt, **opts) -> dict:
    t0 = time.perf_counter()
    mask = segment(image, model, PredictOptions(**opts))
    s = score(mask, gt).as_dict()
    return {**{k: round(v, 4) for k, v in s.items()}, "seconds": round(time.perf_counter() - t0, 1)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("run", help="trained model folder, e.g. runs/mito-em-v1/best")
    ap.add_argument("--name", default="mito-em-v2")
    ap.add_argument("--threshold", type=float, required=True)
    ap.add_argument("--z-smooth", action="store_true", help="recorded as chosen on validation")
    ap.add_argument("--fill-holes", action="store_true", help="recorded as chosen on validation")
    ap.add_argument("--card-notes", help="markdown appended to the card (choices, baseline)")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    image, gt = em_data.load("test")
    spec, info = read_config(args.run)
    spec = dataclasses.replace(spec, threshold=args.threshold)
    src = load_model(args.run, "cpu")
    # the weights are stored as fp16: measure the model exactly as it will be shipped
    tmp = SHIPPED_DIR / f".{args.name}.measure"
    save_model(src.net, spec, tmp, info=info)
    model = load_model(tmp, "cpu")
    zs, fh = args.z_smooth, args.fill_holes
    figures = {
        "default": measure(model, image, gt, z_smooth=zs, fill_holes=fh),
        "tta": measure(model, image, gt, tta=True, z_smooth=zs, fill_holes=fh),
        "no_z_smooth" if zs else "z_smooth": measure(model, image, gt, z_smooth=not zs, fill_holes=fh),
        "no_fill_holes" if fh else "fill_holes": measure(model, image, gt, z_smooth=zs, fill_holes=not fh),
    }
    import shutil

    shutil.rmtree(tmp)
    info = {
        **info,
        "summary": f"SBEM mitochondria, {spec.arch}/{spec.encoder}; test IoU "
                   f"{figures['default']['iou']:.3f}",
        "default_z_smooth": args.z_smooth,
        "default_fill_holes": args.fill_holes,
        "test_figures": figures,
        "hardware": f"{platform.processor() or platform.machine()}, "
                    f"{torch.get_num_threads()} CPU threads",
        "licence_notice": NOTICE,
    }
    notes = Path(args.card_notes).read_text() if args.card_notes else ""
    rows = "\n".join(
        f"| {k} | {v['iou']:.4f} | {v['dice']:.4f} | {v['precision']:.4f} | {v['recall']:.4f} |"
        for k, v in figures.items()
    )
    card = f"""# {args.name}

Mitochondria in electron-microscopy slices: {spec.arch} with a `{spec.encoder}` encoder
(segmentation-models-pytorch, random initialisation, no pretrained weights), one grey channel,
per-slice percentile normalisation; the network sees slices resized by {spec.input_scale}
(probabilities resized back). Threshold {spec.threshold}, z-smoothing {"on" if zs else "off"} and
hole filling {"on" if fh else "off"} by default, all chosen on validation.

## Training
- Command: `{info.get('command', '')}`
- Data: SBEM training stack, slices 0-15 for training, 16-19 held out for validation
  (checkpoint, threshold, z-smoothing and hole filling chosen there); the testing stack was used only for
  the figures below.
- Steps: {info.get('step')} x {info.get('train_config', {}).get('batch_size')} crops of
  {info.get('train_config', {}).get('tile')} px; best validation IoU {info.get('best_val_iou', 0):.4f}.
- Hardware: {info['hardware']}; training time about {info.get('train_seconds', 0) / 60:.0f} min
  of compute (the run was paused and resumed in chunks).

## Figures on the whole SBEM testing stack (10 x 1024 x 1024)
Reproduce: `mitoseg segment test_image.tif --gt test_mask.tif --json` (add `--tta`).

| settings | IoU | Dice | precision | recall |
|---|---|---|---|---|
{rows}

{notes}

## Licence and citation
{NOTICE}
"""
    out = save_model(model.net, spec, SHIPPED_DIR / args.name, info=info, card=card)
    print(json.dumps({"saved": str(out), **figures}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

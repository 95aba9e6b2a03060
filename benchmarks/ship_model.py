"""Package a trained run as a shipped model: settings from validation, figures from the test stacks.

    python benchmarks/ship_model.py runs/mito-em-v3/best --threshold T [--z-smooth] \
        [--fill-holes] --name mito-em-v3 --card-notes NOTES.md [--volumes sbem lucchipp]

1. Loads the chosen checkpoint (chosen on validation by ``select_settings.py``).
2. Writes the settings chosen on validation into its spec (threshold) and config
   (z-smoothing and hole filling by default or not).
3. Measures the whole testing stack of each volume: with the default settings as they are
   (the stack's pixels taken for the model's), told the stack's pixel size in nm, with TTA
   (SBEM only: 8x the time) and with z-smoothing switched the other way (the figures only;
   nothing is chosen here).
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

LUCCHI_NOTICE = (
    "Trained on Lucchi++ (FIB-SEM, mouse CA1 hippocampus): Lucchi, Becker, Marquez Neila, Fua, "
    '"Exploiting enclosing membranes and contextual cues for mitochondria segmentation", MICCAI '
    "2014, with the corrected labels of Casser, Kang, Pfister, Haehn, \"Fast Mitochondria "
    'Detection for Connectomics", MIDL 2020.'
)
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


def test_figures(model, volume: str, zs: bool, fh: bool) -> dict:
    """Figures on ``volume``'s whole testing stack (see the module's docstring)."""
    image, gt = em_data.load("test", volume)
    nm = em_data.VOLUMES[volume].pixel_nm
    ratio = nm / model.spec.pixel_size_nm if model.spec.pixel_size_nm else 1.0
    figures = {"default": measure(model, image, gt, z_smooth=zs, fill_holes=fh)}
    if ratio != 1.0:
        figures[f"pixel_size_{nm:g}nm"] = measure(model, image, gt, z_smooth=zs, fill_holes=fh,
                                                  pixel_ratio=ratio)
    told = {"pixel_ratio": ratio, "z_smooth": zs, "fill_holes": fh}
    at = f"_pixel_size_{nm:g}nm" if ratio != 1.0 else ""
    if volume == "sbem":
        figures[f"tta{at}"] = measure(model, image, gt, tta=True, **told)
    figures[("no_z_smooth" if zs else "z_smooth") + at] = measure(model, image, gt, **{**told, "z_smooth": not zs})
    return figures


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("run", help="trained model folder, e.g. runs/mito-em-v3/best")
    ap.add_argument("--name", default="mito-em-v3")
    ap.add_argument("--threshold", type=float, required=True)
    ap.add_argument("--z-smooth", action="store_true", help="recorded as chosen on validation")
    ap.add_argument("--fill-holes", action="store_true", help="recorded as chosen on validation")
    ap.add_argument("--guess-contrast", action="store_true",
                    help="recorded as chosen on validation: invert a stack the model is clearly surer of "
                         "inverted, unless told (benchmarks/guess_contrast.py)")
    ap.add_argument("--card-notes", help="markdown appended to the card (choices, baseline)")
    ap.add_argument("--volumes", nargs="+", choices=sorted(em_data.VOLUMES), default=["sbem", "lucchipp"])
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    spec, info = read_config(args.run)
    spec = dataclasses.replace(spec, threshold=args.threshold)
    src = load_model(args.run, "cpu")
    # the weights are stored as fp16: measure the model exactly as it will be shipped
    tmp = SHIPPED_DIR / f".{args.name}.measure"
    save_model(src.net, spec, tmp, info=info)
    model = load_model(tmp, "cpu")
    zs, fh = args.z_smooth, args.fill_holes
    figures = {v: test_figures(model, v, zs, fh) for v in args.volumes}
    import shutil

    shutil.rmtree(tmp)
    notices = [LUCCHI_NOTICE] * ("lucchipp" in args.volumes) + [NOTICE] * ("sbem" in args.volumes)
    info = {
        **info,
        "summary": f"mitochondria in EM, {spec.arch}/{spec.encoder} at {spec.pixel_size_nm} nm; test IoU "
                   + ", ".join(f"{v} {f['default']['iou']:.3f}" for v, f in figures.items()),
        "default_z_smooth": args.z_smooth,
        "default_fill_holes": args.fill_holes,
        "default_guess_contrast": args.guess_contrast,
        "test_figures": figures,
        "hardware": f"{platform.processor() or platform.machine()}, "
                    f"{torch.get_num_threads()} CPU threads",
        "licence_notice": " ".join(notices),
    }
    notes = Path(args.card_notes).read_text() if args.card_notes else ""
    tables = "\n\n".join(
        f"**{v}** ({em_data.VOLUMES[v].pixel_nm:g} nm pixels)\n\n| settings | IoU | Dice | precision | recall |\n"
        "|---|---|---|---|---|\n" + "\n".join(
            f"| {k} | {f['iou']:.4f} | {f['dice']:.4f} | {f['precision']:.4f} | {f['recall']:.4f} |"
            for k, f in figs.items())
        for v, figs in figures.items()
    )
    card = f"""# {args.name}

Mitochondria in electron-microscopy slices: {spec.arch} with a `{spec.encoder}` encoder
(segmentation-models-pytorch, no ImageNet weights), one grey channel, per-slice percentile
normalisation. It takes stacks of **{spec.pixel_size_nm:g} nm pixels** as they are; give any other
pixel size (`--pixel-size`, or the widgets' *Pixel size (nm)*) and slices are resized to it. The
network sees slices resized by {spec.input_scale} ({spec.pixel_size_nm / spec.input_scale:g} nm per
network pixel; probabilities resized back). Threshold {spec.threshold}, z-smoothing
{"on" if zs else "off"} and hole filling {"on" if fh else "off"} by default, all chosen on validation.

## Training
- Command: `{info.get('command', '')}`
- Steps: {info.get('step')} x {info.get('train_config', {}).get('batch_size')} crops of
  {info.get('train_config', {}).get('tile')} px; best validation IoU (mean over the volumes)
  {info.get('best_val_iou', 0):.4f}.
- Hardware: {info['hardware']}; training time about {info.get('train_seconds', 0) / 60:.0f} min
  of compute.

## Figures on the whole testing stacks
Reproduce: `mitoseg segment test_image.tif --gt test_mask.tif --json` (add `--pixel-size NM`, `--tta`).

{tables}

{notes}

## Licence and citation
{" ".join(notices)}
"""
    out = save_model(model.net, spec, SHIPPED_DIR / args.name, info=info, card=card)
    print(json.dumps({"saved": str(out), **figures}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

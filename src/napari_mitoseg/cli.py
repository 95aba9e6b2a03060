"""The ``mitoseg`` command line: segment, suggest, evaluate, train, measure, models, info, demo.

``main(argv) -> int`` parses and delegates to the public API; every expected error prints one
line (``mitoseg: error: ...``) and returns a non-zero code, with no traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import time
from pathlib import Path

logger = logging.getLogger(__name__)


DEVICES = ["auto", "cpu", "cuda", "mps"]
DEVICE_HELP = ("where the network runs: auto picks a GPU (CUDA, then Apple MPS) when there is one, else the "
               "CPU (default: %(default)s)")


def _stack_flags(p: argparse.ArgumentParser, note: str, pixel_size: bool = True) -> None:
    """--pixel-size (unless ``pixel_size`` is False) / --pixel-ratio and --invert: how a stack
    differs from the model's training data."""
    scale = p.add_mutually_exclusive_group()
    if pixel_size:
        scale.add_argument("--pixel-size", type=float, default=None, metavar="NM",
                           help="the stack's pixel size in Y and X, in nanometres (default: from "
                                f"the file's metadata when it has one); {note}")
    scale.add_argument("--pixel-ratio", type=float, default=None, metavar="RATIO",
                       help="the stack's pixel size / the model's training pixel size, a plain number (2: pixels "
                            f"twice as large; default 1); {note}")
    p.add_argument("--invert", action="store_true",
                   help="the stack's contrast is the reverse of the model's training data "
                        f"(bright membranes on dark; default: off); {note}")
    p.add_argument("--guess-contrast", action=argparse.BooleanOptionalAction, default=None,
                   help="without --invert, invert a stack the model is clearly surer of inverted (bright "
                        "membranes on dark), with a note (about a second); --no-guess-contrast takes the "
                        f"contrast as it is (default: the model's choice, on for the shipped model); {note}")


def _ignore_value(text: str) -> int | str | None:
    if text in ("auto", "none"):
        return None if text == "none" else text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, 'auto' or 'none', got {text!r}") from None


def add_cluster_flags(p: argparse.ArgumentParser) -> None:
    from .distributed import add_cli_flags

    add_cli_flags(p)


def _segment_parser(sub) -> argparse.ArgumentParser:
    s = sub.add_parser("segment", help="segment an EM stack")
    s.add_argument("image", help="the EM stack: TIFF, zarr/OME-Zarr or a folder of slices, (Z, Y, X) or one slice")
    s.add_argument("-o", "--out", help="labels to write (.tif or .zarr; default: none, print the figures only)")
    s.add_argument("--model", default=None,
                   help="model name (see `mitoseg models`), model folder or training run folder "
                        "(default: the shipped model)")
    s.add_argument("--device", default="auto", choices=DEVICES, help=DEVICE_HELP)
    s.add_argument("--threshold", type=float, default=None, metavar="P",
                   help="probability (0-1) above which a pixel is a mitochondrion (default: the model's own, "
                        "0.5 unless its card says otherwise)")
    s.add_argument("--tta", action="store_true",
                   help="test-time augmentation: average 8 flipped and rotated views (8x slower; default: off)")
    s.add_argument("--scales", type=float, nargs="+", default=[1.0], metavar="K",
                   help="multi-scale averaging: run the network at each multiple K (0.5-2) of its working "
                        "resolution and average, e.g. --scales 1 1.5 (about 3.3x slower, more accurate "
                        "outlines; default: 1)")
    s.add_argument("--z-smooth", action=argparse.BooleanOptionalAction, default=None,
                   help="smooth probabilities along z across slices that are neighbours in space (default: "
                        "the model's choice)")
    s.add_argument("--z-step", type=float, default=None, metavar="K",
                   help="the stack's z spacing over its pixel size, for z-smoothing: up to 1.5 smooths over "
                        "up to 6 slices on each side, more over the adjacent ones (default: from the file's "
                        "voxel size, else estimated from the images)")
    _stack_flags(s, "slices are adapted to the model to match")
    s.add_argument("--instances", action="store_true",
                   help="one id per mitochondrion, 3D-connected (int32 labels; default: a 0/1 mask)")
    s.add_argument("--gt", help="ground truth mask of the same shape to score against (default: no scores)")
    s.add_argument("--ortho", action=argparse.BooleanOptionalAction, default=None,
                   help="average the model over the XY, XZ and YZ planes (about 3x slower; default: on "
                        "where the file's voxel size is near-isotropic, with a note)")
    s.add_argument("--uncertainty-out", metavar="FILE",
                   help="write the per-pixel uncertainty map (.tif or .zarr, uint8, 255 = most unsure; "
                        "default: none); --json lists each slice's uncertainty either way")
    s.add_argument("--json", action="store_true", help="print one JSON object (default: plain lines)")
    add_cluster_flags(s)
    return s


def _suggest_parser(sub) -> argparse.ArgumentParser:
    g = sub.add_parser("suggest", help="which slices to correct first (the most uncertain, spread along z)")
    g.add_argument("image", help="the EM stack: TIFF, zarr/OME-Zarr or a folder of slices")
    g.add_argument("--n", type=int, default=2, help="how many slices to suggest (default: %(default)s)")
    g.add_argument("--model", default=None, help="model name or folder (default: the shipped model)")
    g.add_argument("--device", default="auto", choices=DEVICES, help=DEVICE_HELP)
    g.add_argument("--json", action="store_true", help="print one JSON object (default: plain lines)")
    return g


def _evaluate_parser(sub) -> argparse.ArgumentParser:
    e = sub.add_parser("evaluate", help="score a prediction against ground truth")
    e.add_argument("pred", help="predicted mask or labels (>0: mitochondrion)")
    e.add_argument("gt", help="ground truth mask of the same shape (>0: mitochondrion)")
    e.add_argument("--json", action="store_true", help="print one JSON object with per-slice scores "
                                                       "(default: one line of scores)")
    return e


def _train_data_flags(t: argparse.ArgumentParser) -> None:
    """The volumes to learn from and to validate on."""
    t.add_argument("--image", required=True, action="append",
                   help="training stack; repeat --image/--mask for several volumes")
    t.add_argument("--mask", required=True, action="append",
                   help="one per --image: 0 background, >0 mitochondrion; 255 unlabelled when the "
                        "mask also holds other values (a 0/255 mask reads as background/mitochondrion)")
    t.add_argument("--ignore-value", type=_ignore_value, default="auto",
                   help="mask value of unlabelled pixels, left out of training: an integer, 'none' "
                        "or 'auto' (default: %(default)s, i.e. 255 unless 0 and 255 are the mask's only values)")
    t.add_argument("--checked", action="append", metavar="FILE",
                   help="one per --image: a mask of the image's shape, nonzero where you checked the "
                        "labels; on each slice with checked pixels only those train, the rest is "
                        "unlabelled (a slice without any trains whole) (default: whole slices)")
    t.add_argument("--pixel-size", type=float, action="append", metavar="NM",
                   help="pixel size of each --image in nm (one per --image, in order; default: from "
                        "the files' metadata when each has one); each volume is resized to the "
                        "model's pixel size (the first volume's for a new model, unless --spec "
                        "gives pixel_size_nm)")
    t.add_argument("--val-image", help="a separate validation stack, with --val-mask (only with a single "
                                       "--image; default: none, see --val-fraction)")
    t.add_argument("--val-mask", help="the mask of --val-image, read as --mask is (default: none)")
    t.add_argument("--val-fraction", type=float, action="append", metavar="FRACTION",
                   help="hold out the last fraction (0-1) of slices for validation, one for all or one per "
                        "--image (default: 0, no validation)")
    t.add_argument("--views", choices=["xy", "xyz"], action="append",
                   help="the planes of each --image to learn from, one for all or one per --image: xy "
                        "(its slices) or xyz (also its XZ and YZ planes, for near-isotropic volumes, so "
                        "--ortho's side passes are as good as XY; from the training slices only) "
                        "(default: xy)")


def _train_settings_flags(t: argparse.ArgumentParser) -> None:
    """How long and how to learn; defaults are TrainConfig's (FINETUNE's with --base)."""
    t.add_argument("--config", help="JSON training settings (TrainConfig fields) over the defaults, "
                                    "e.g. '{\"val_every\": 250}'; the flags below win")
    t.add_argument("--steps", type=int, default=None,
                   help="optimiser steps in all (default: 3000 for a new model, 240 with --base)")
    t.add_argument("--batch-size", type=int, default=None,
                   help="crops per step (default: 8 for a new model, 4 with --base)")
    t.add_argument("--lr", type=float, default=None,
                   help="peak learning rate of AdamW, after warm-up and before cosine decay "
                        "(default: 0.002 for a new model, 0.001 with --base)")
    t.add_argument("--augment", choices=["full", "strong", "basic"], default=None,
                   help="augmentation: full (geometry, scale, intensity, blur, noise, elastic), strong "
                        "(full plus other microscopes' artefacts) or basic (flips, rotations, brightness) "
                        "(default: full)")
    t.add_argument("--hard-fraction", type=float, default=None,
                   help="share (0-1) of crops centred on the model's current errors (0 = off; "
                        "default: 0.3 for a new model, 0 with --base)")
    t.add_argument("--minutes", type=float, default=None,
                   help="pause after this many minutes of wall time; go on later with --resume "
                        "(default: no limit)")
    t.add_argument("--seed", type=int, default=0,
                   help="random seed of crops and augmentation (default: %(default)s)")


def _train_parser(sub) -> argparse.ArgumentParser:
    t = sub.add_parser("train", help="train a model, or fine-tune one with --base")
    _train_data_flags(t)
    t.add_argument("--base", help="start from this model: name, model folder or run folder (fine-tuning; "
                                  "default: a new model)")
    _stack_flags(t, "with --base only; the new model keeps them", pixel_size=False)
    t.add_argument("--spec", help="JSON model spec, e.g. '{\"encoder\": \"resnet18\"}' (default: the "
                                  "shipped model's architecture)")
    _train_settings_flags(t)
    t.add_argument("--out", required=True,
                   help="a new run folder (checkpoint, best/, last/); a folder holding a run needs --resume")
    t.add_argument("--resume", action="store_true", help="go on with the run in --out (default: off)")
    t.add_argument("--device", default="auto", choices=DEVICES, help=DEVICE_HELP)
    return t


def _measure_parser(sub) -> argparse.ArgumentParser:
    ms = sub.add_parser("measure", help="measure each mitochondrion of a label volume (um)")
    ms.add_argument("labels", help="instance labels, or a binary mask (split into 3D objects)")
    ms.add_argument("--voxel-size", type=float, nargs=3, default=None, metavar=("Z", "Y", "X"),
                    help="voxel size in nm, Z first (default: the one the file records)")
    ms.add_argument("-o", "--out", required=True, help="table to write (CSV, one row per object)")
    ms.add_argument("--meshes", help="folder for one PLY mesh per object (mito_<id>.ply, in um; default: none)")
    ms.add_argument("--min-size", type=int, default=64,
                    help="when splitting a mask: drop objects smaller than this, in voxels (default: %(default)s)")
    ms.add_argument("--json", action="store_true",
                    help="print the summary as one JSON object (default: plain lines)")
    return ms


def _small_parsers(sub) -> None:
    sub.add_parser("models", help="list shipped and fine-tuned models")
    sub.add_parser("info", help="versions, device and threads")
    d = sub.add_parser("demo", help="segment the sample data and score it")
    d.add_argument("-o", "--out", default=None, help="labels to write (.tif or .zarr; default: none)")


def _export_parser(sub) -> argparse.ArgumentParser:
    x = sub.add_parser("export", help="write a model as a bioimage.io model package (.zip)")
    x.add_argument("model", help="a model name ('default', a shipped or fine-tuned one), a model folder "
                                 "or a training run folder")
    x.add_argument("-o", "--out", required=True, help="the package to write (FILE.zip)")
    x.add_argument("--author", action="append", default=None,
                   help="an author's name; repeat for several (default: the model's recorded authors)")
    x.add_argument("--licence", default="BSD-3-Clause",
                   help="SPDX licence id of the weights (default: %(default)s)")
    x.add_argument("--no-torchscript", action="store_true",
                   help="leave out the TorchScript weights (default: state dict and TorchScript)")
    return x


#: one builder per sub-command (or group of small ones), in the order ``--help`` lists them
SUBCOMMANDS = [_segment_parser, _suggest_parser, _evaluate_parser, _train_parser, _measure_parser,
               _export_parser, _small_parsers]


def _parser() -> argparse.ArgumentParser:
    from . import __version__

    p = argparse.ArgumentParser(prog="mitoseg", description="Segment mitochondria in electron-microscopy stacks.")
    p.add_argument("-v", "--verbose", action="store_true", help="also log info lines, each naming its module "
                                                                "(default: warnings and notes only)")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND",
                           help="what to do; `mitoseg COMMAND --help` says more")
    for build in SUBCOMMANDS:
        build(sub)
    return p


class _CliLog(logging.Formatter):
    """``mitoseg: warning: ...`` / ``mitoseg: note: ...``; with -v, info lines name their module."""

    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        if record.levelno >= logging.WARNING:
            return f"mitoseg: {record.levelname.lower()}: {msg}"
        if getattr(record, "note", False):
            return f"mitoseg: note: {msg}"
        return f"{record.levelname} {record.name}: {msg}"


def _log_to_stderr(verbose: bool) -> logging.Handler:
    """Warnings and notes (decisions taken for the user) always; other info lines with -v."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_CliLog())
    handler.addFilter(lambda r: verbose or r.levelno >= logging.WARNING or getattr(r, "note", False))
    logging.getLogger().addHandler(handler)
    return handler


class Terminated(BaseException):
    """SIGTERM arrived: unwinds like Ctrl+C, so half-written outputs are removed."""


def _on_sigterm(signum, frame):
    raise Terminated


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    root = logging.getLogger()
    handler, level = _log_to_stderr(args.verbose), root.level
    root.setLevel(logging.INFO)
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if in_main_thread else None
    # started with SIGINT ignored (in the background by a script): Ctrl+C / kill -INT still stops it
    ignored_int = in_main_thread and signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    if ignored_int:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return _run_command(args)
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)
        if ignored_int:
            signal.signal(signal.SIGINT, signal.SIG_IGN)


def _run_command(args) -> int:
    from .inference import InputError
    from .io import ReadError, WriteError
    from .metrics import NotAMaskError, ShapeMismatchError
    from .model import ModelError
    from .morphology import MeasureError
    from .training import TrainingError

    expected = (InputError, ReadError, WriteError, ShapeMismatchError, NotAMaskError, ModelError,
                TrainingError, MeasureError, FileNotFoundError, PermissionError)
    try:
        return _COMMANDS[args.command](args)
    except expected as exc:
        print(f"mitoseg: error: {exc}", file=sys.stderr)
        return 2
    except MemoryError:
        print("mitoseg: error: out of memory; use a smaller stack or a zarr store", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print(f"mitoseg: interrupted; {_after_interrupt(args)}", file=sys.stderr)
        return 130
    except Terminated:
        print(f"mitoseg: terminated; {_after_interrupt(args)}", file=sys.stderr)
        return 143


def _after_interrupt(args) -> str:
    """What an interrupted command left: nothing half-written; a training run its checkpoint."""
    if args.command == "measure" and args.meshes:
        return f"no table was written; meshes finished so far stay in {args.meshes}"
    if args.command == "segment" and _wants_cluster(args):
        from .distributed.cli import after_interrupt

        return after_interrupt(args)
    if args.command == "train":
        from .training import CHECKPOINT

        if (Path(args.out) / CHECKPOINT).exists():
            return f"the last checkpoint stays in {args.out}: continue with --resume"
    return "nothing was written"


def _report(scores: dict, args, extra: dict | None = None) -> None:
    if args.json:
        print(json.dumps({**scores, **(extra or {})}))
    else:
        print("  ".join(f"{k}={scores[k]:.4f}" for k in ("iou", "dice", "precision", "recall")))


def _wants_cluster(args) -> bool:
    return args.workers is not None or bool(args.scheduler)


def cmd_segment(args) -> int:
    from . import api
    from ._progress import Progress

    if _wants_cluster(args):
        from .distributed import run_cli

        return run_cli(args)

    t0 = time.perf_counter()
    progress = Progress("slices", "segment")
    try:
        result = api.segment_file(
            args.image, model=args.model, device=args.device, threshold=args.threshold,
            tta=args.tta, z_smooth=args.z_smooth, instances=args.instances, out=args.out,
            gt=args.gt, pixel_ratio=args.pixel_ratio, invert=args.invert,
            pixel_size_nm=args.pixel_size, progress=progress, keep_nothing=args.json,
            ortho=args.ortho, uncertainty_out=args.uncertainty_out, scales=tuple(args.scales),
            z_step=args.z_step, guess_contrast=args.guess_contrast,
        )
    finally:
        progress.close()
    extra = {"seconds": round(time.perf_counter() - t0, 3), "model": result.model_name,
             "shape": list(result.shape), "tta": args.tta, "scales": list(args.scales),
             "pixel_ratio": result.pixel_ratio,
             "invert": result.invert, "ortho": result.ortho, "uncertainty": result.uncertainty}
    if result.report is not None:
        _report(result.report.as_dict(), args, extra)
    elif args.json:
        print(json.dumps(extra))
    elif args.out:
        print(f"wrote {args.out}")
    return 0


def cmd_suggest(args) -> int:
    from . import api
    from ._progress import Progress
    from .uncertainty import suggest_slices

    if args.n < 1:
        raise api.InputError(f"--n must be at least 1, got {args.n}")
    progress = Progress("slices", "segment")
    try:
        result = api.segment_file(args.image, model=args.model, device=args.device, progress=progress)
    finally:
        progress.close()
    chosen = suggest_slices(result.uncertainty, args.n)
    if args.json:
        print(json.dumps({"slices": chosen, "uncertainty": [result.uncertainty[i] for i in chosen],
                          "model": result.model_name}))
    else:
        for i in chosen:
            print(f"slice {i}: uncertainty {result.uncertainty[i]:.3f}")
    return 0


def cmd_evaluate(args) -> int:
    import numpy as np

    from .io import read_stack
    from .metrics import check_mask, evaluate

    pred, gt = np.asarray(read_stack(args.pred)), np.asarray(read_stack(args.gt))
    check_mask(pred, f"the prediction {args.pred}")
    check_mask(gt, f"the ground truth {args.gt}")
    _report(evaluate(pred, gt).as_dict(), args)
    return 0


def cmd_measure(args) -> int:
    from .morphology import measure_file

    res = measure_file(args.labels, args.voxel_size, args.out, meshes=args.meshes,
                       min_size=args.min_size)
    summary = res.summary.as_dict()
    if args.json:
        print(json.dumps({**summary, "voxel_size_nm": list(res.voxel_size_nm), "split_mask": res.split_mask,
                          "table": str(res.table), "meshes": len(res.meshes)}))
    else:
        print(f"voxel size {' x '.join(f'{v:g}' for v in res.voxel_size_nm)} nm (Z Y X)")
        print("  ".join(f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}"
                        for k, v in summary.items()))
        print(f"wrote {res.table}" + (f" and {len(res.meshes)} meshes in {args.meshes}" if args.meshes else ""))
    return 0


def cmd_models(args) -> int:
    from .model import list_models

    for m in list_models(include_broken=True):
        summary = f"broken: {m.broken}" if m.broken else m.summary
        print(f"{m.name}\t{'shipped' if m.shipped else 'user'}\t{m.path}\t{summary}")
    return 0


def cmd_info(args) -> int:
    import platform

    import torch

    from . import __version__
    from .model import available_devices, user_model_dir
    from .precision import PRECISION_ENV, cpu_bf16

    print(f"napari-mitoseg {__version__}  python {platform.python_version()}  torch "
          f"{torch.__version__}")
    precision = "bfloat16" if cpu_bf16() else "float32"
    print(f"devices: {', '.join(available_devices())}  threads: {torch.get_num_threads()}  "
          f"CPU inference: {precision} (set {PRECISION_ENV}=float32 or bfloat16 to fix it)")
    print(f"user models: {user_model_dir()}")
    return 0


def cmd_train(args) -> int:
    from ._cli_train import cmd_train as run_train

    return run_train(args)


def cmd_export(args) -> int:
    from .bioimageio_export import ExportError, export_bioimageio

    print(f"exporting {args.model} to {args.out} (the package is checked as it is written: up to a minute)",
          flush=True)
    try:
        out = export_bioimageio(args.model, args.out, authors=args.author, licence=args.licence,
                                torchscript=not args.no_torchscript)
    except ExportError as exc:
        print(f"mitoseg: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


def cmd_demo(args) -> int:
    from . import api

    rep = api.demo(out=args.out)
    print(json.dumps(rep, indent=1))
    return 0


_COMMANDS = {"segment": cmd_segment, "suggest": cmd_suggest, "evaluate": cmd_evaluate, "train": cmd_train,
             "measure": cmd_measure, "export": cmd_export, "models": cmd_models, "info": cmd_info,
             "demo": cmd_demo}


def run() -> None:  # console-script entry point
    sys.exit(main())

"""The ``mitoseg`` command line: segment, evaluate, train, measure, models, info, demo.

``main(argv) -> int`` parses and delegates to the public API; every expected error prints one
line (``mitoseg: error: ...``) and returns a non-zero code, with no traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import signal
import sys
import threading
import time
from pathlib import Path

logger = logging.getLogger(__name__)


def _stack_flags(p: argparse.ArgumentParser, note: str, pixel_size: bool = True) -> None:
    """--pixel-size (unless ``pixel_size`` is False) / --pixel-ratio and --invert: how a stack
    differs from the model's training data."""
    scale = p.add_mutually_exclusive_group()
    if pixel_size:
        scale.add_argument("--pixel-size", type=float, default=None, metavar="NM",
                           help="the stack's pixel size in Y and X, in nanometres (default: from "
                                f"the file's metadata when it has one); {note}")
    scale.add_argument("--pixel-ratio", type=float, default=None,
                       help="the stack's pixel size / the model's training pixel size (2: pixels "
                            f"twice as large; default 1); {note}")
    p.add_argument("--invert", action="store_true",
                   help="the stack's contrast is the reverse of the model's training data "
                        f"(bright membranes on dark); {note}")


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


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mitoseg", description=__doc__.splitlines()[0])
    p.add_argument("-v", "--verbose", action="store_true", help="log progress")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("segment", help="segment an EM stack")
    s.add_argument("image", help="TIFF, zarr/OME-Zarr or folder of slices")
    s.add_argument("-o", "--out", help="labels to write (.tif or .zarr)")
    s.add_argument("--model", default=None, help="model name or folder (default: shipped model)")
    s.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    s.add_argument("--threshold", type=float, default=None, help="default: the model's")
    s.add_argument("--tta", action="store_true", help="test-time augmentation (8 views)")
    s.add_argument("--z-smooth", action=argparse.BooleanOptionalAction, default=None,
                   help="smooth probabilities along z (default: the model's choice)")
    _stack_flags(s, "slices are adapted to the model to match")
    s.add_argument("--instances", action="store_true", help="one id per mitochondrion (3D)")
    s.add_argument("--gt", help="ground truth to score against")
    s.add_argument("--json", action="store_true", help="print one JSON object")
    add_cluster_flags(s)

    e = sub.add_parser("evaluate", help="score a prediction against ground truth")
    e.add_argument("pred")
    e.add_argument("gt")
    e.add_argument("--json", action="store_true")

    t = sub.add_parser("train", help="train a model, or fine-tune one with --base")
    t.add_argument("--image", required=True, action="append",
                   help="training stack; repeat --image/--mask for several volumes")
    t.add_argument("--mask", required=True, action="append",
                   help="one per --image: 0 background, >0 mitochondrion; 255 unlabelled when the "
                        "mask also holds other values (a 0/255 mask reads as background/mitochondrion)")
    t.add_argument("--ignore-value", type=_ignore_value, default="auto",
                   help="mask value of unlabelled pixels, left out of training: an integer, 'none' "
                        "or 'auto' (default: 255, unless 0 and 255 are the mask's only values)")
    t.add_argument("--pixel-size", type=float, action="append", metavar="NM",
                   help="pixel size of each --image in nm (one per --image, in order; default: from "
                        "the files' metadata when each has one); each volume is resized to the "
                        "model's pixel size (the first volume's for a new model, unless --spec "
                        "gives pixel_size_nm)")
    t.add_argument("--val-image")
    t.add_argument("--val-mask")
    t.add_argument("--val-fraction", type=float, action="append",
                   help="hold out the last fraction of slices for validation (one for all, or one per --image)")
    t.add_argument("--base", help="start from this model (fine-tuning)")
    _stack_flags(t, "with --base only; the new model keeps them", pixel_size=False)
    t.add_argument("--spec", help="JSON model spec, e.g. '{\"encoder\": \"resnet18\"}'")
    t.add_argument("--config", help="JSON training settings (TrainConfig fields) over the defaults, "
                                    "e.g. '{\"val_every\": 250}'; the flags below win")
    t.add_argument("--steps", type=int, default=None)
    t.add_argument("--batch-size", type=int, default=None)
    t.add_argument("--lr", type=float, default=None)
    t.add_argument("--augment", choices=["full", "strong", "basic"], default=None)
    t.add_argument("--hard-fraction", type=float, default=None,
                   help="share of crops centred on the model's current errors (0 = off)")
    t.add_argument("--minutes", type=float, default=None, help="pause after this long")
    t.add_argument("--out", required=True,
                   help="a new run folder (checkpoint, best/, last/); a folder holding a run needs --resume")
    t.add_argument("--resume", action="store_true", help="go on with the run in --out")
    t.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    t.add_argument("--seed", type=int, default=0)

    ms = sub.add_parser("measure", help="measure each mitochondrion of a label volume (um)")
    ms.add_argument("labels", help="instance labels, or a binary mask (split into 3D objects)")
    ms.add_argument("--voxel-size", type=float, nargs=3, default=None, metavar=("Z", "Y", "X"),
                    help="voxel size in nm, Z first (default: the one the file records)")
    ms.add_argument("-o", "--out", required=True, help="table to write (CSV, one row per object)")
    ms.add_argument("--meshes", help="folder for one PLY mesh per object (mito_<id>.ply, in um)")
    ms.add_argument("--min-size", type=int, default=64,
                    help="when splitting a mask: drop objects smaller than this (voxels)")
    ms.add_argument("--json", action="store_true", help="print the summary as one JSON object")

    sub.add_parser("models", help="list shipped and fine-tuned models")
    sub.add_parser("info", help="versions, device and threads")
    d = sub.add_parser("demo", help="segment the sample data and score it")
    d.add_argument("-o", "--out", default=None)
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


def cmd_segment(args) -> int:
    from . import api, distributed
    from ._progress import Progress

    if distributed.wants_cluster(args):
        return distributed.run_cli(args)

    t0 = time.perf_counter()
    progress = Progress("slices", "segment")
    try:
        result = api.segment_file(
            args.image, model=args.model, device=args.device, threshold=args.threshold,
            tta=args.tta, z_smooth=args.z_smooth, instances=args.instances, out=args.out,
            gt=args.gt, pixel_ratio=args.pixel_ratio, invert=args.invert,
            pixel_size_nm=args.pixel_size, progress=progress, keep_nothing=args.json,
        )
    finally:
        progress.close()
    extra = {"seconds": round(time.perf_counter() - t0, 3), "model": result.model_name,
             "shape": list(result.shape), "tta": args.tta, "pixel_ratio": result.pixel_ratio,
             "invert": args.invert}
    if result.report is not None:
        _report(result.report.as_dict(), args, extra)
    elif args.json:
        print(json.dumps(extra))
    elif args.out:
        print(f"wrote {args.out}")
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


def _metadata_pixel_sizes(images: list[str], model_nm: float | None, fine_tune: bool) -> list[float]:
    """Each training stack's Y/X pixel size from its file's metadata (a note says so), or []
    when a stack records none, or when fine-tuning a base that records no pixel size."""
    from .io import read_voxel_size

    found = [read_voxel_size(p) for p in images]
    if not found or any(v is None for v in found):
        return []
    sizes = [v[2] for v in found]
    if fine_tune and model_nm is None:
        logger.info("pixel size %s nm (from file metadata); the base model records no pixel size: "
                    "no rescaling", ", ".join(f"{s:g}" for s in sizes), extra={"note": True})
        return []
    logger.info("pixel size %s nm (from file metadata)%s", ", ".join(f"{s:g}" for s in sizes),
                "" if fine_tune or model_nm is not None else ": recorded as the new model's",
                extra={"note": True})
    return sizes


def _step_line(prog) -> str:
    val = f" val_iou={prog.val_iou:.4f}" if prog.val_iou is not None else ""
    by_vol = prog.history[-1].get("val_iou_by_volume") if prog.history else None
    if by_vol:
        val += " (" + ", ".join(f"{Path(k).parent.name or k}={v:.4f}" for k, v in by_vol.items()) + ")"
    return f"step {prog.step}/{prog.total} loss={prog.loss:.4f}{val} t={prog.seconds:.0f}s"


def _train_checks(args) -> tuple[list[float], list[float]]:
    """Check train's options against each other and the run folder, before any work: the
    pixel sizes (one per --image, or none) and the validation fractions (one per --image)."""
    from .inference import check_pixel_size
    from .model import ModelError
    from .training import TrainingError, check_run_dir

    n = len(args.image)
    if len(args.mask) != n:
        raise ModelError(f"give one --mask per --image ({n} images, {len(args.mask)} masks)")
    sizes = [check_pixel_size(nm) for nm in args.pixel_size or []]
    if sizes and len(sizes) != n:
        raise ModelError(f"give one --pixel-size per --image ({n} images, {len(sizes)} sizes)")
    if sizes and args.pixel_ratio is not None:
        raise ModelError("give either --pixel-size or --pixel-ratio, not both")
    fractions = args.val_fraction or [0.0]
    if len(fractions) not in (1, n):
        raise ModelError(f"give one --val-fraction, or one per --image ({n} images)")
    if (args.val_image is None) != (args.val_mask is None):
        raise TrainingError("--val-image and --val-mask go together; give both or neither")
    if args.val_image and n > 1:
        raise ModelError("--val-image/--val-mask go with a single --image; use --val-fraction")
    check_run_dir(args.out, args.resume, [*args.image, *args.mask, args.val_image, args.val_mask])
    return sizes, fractions * n if len(fractions) == 1 else fractions


def _train_model(args, sizes: list[float]):
    """(base model or None, spec of a new model or None, each volume's pixel ratio, the pixel
    sizes used, the model's pixel size) from --base, --spec, the pixel sizes (given, else the files' metadata),
    --pixel-ratio and --invert."""
    import dataclasses

    from .model import ModelError, ModelSpec

    try:
        spec_d = json.loads(args.spec) if args.spec else {}
        spec = ModelSpec.from_dict(spec_d) if args.spec and not args.base else None
    except (json.JSONDecodeError, TypeError, AttributeError) as exc:
        raise ModelError(f"--spec must be a JSON object of model spec fields: {exc}") from exc
    if (args.pixel_ratio is not None or args.invert) and not args.base:
        raise ModelError("--pixel-ratio and --invert set up a base model for a stack; they "
                         "need --base (a new model learns the stack as it is)")
    base = None
    if args.base:
        from .model import load_model

        base = load_model(args.base, device="cpu")
        if spec_d:
            from .training import respec

            base = dataclasses.replace(base, spec=respec(base.spec, spec_d))
    model_nm = base.spec.pixel_size_nm if base else (spec.pixel_size_nm if spec else None)
    if not sizes and args.pixel_ratio is None:
        sizes = _metadata_pixel_sizes(args.image, model_nm, bool(base))
    if sizes and model_nm is None:
        if base:
            raise ModelError("the base model records no pixel size; give one in --spec "
                             "('{\"pixel_size_nm\": NM}') to use --pixel-size")
        model_nm = sizes[0]
        spec = dataclasses.replace(spec or ModelSpec(), pixel_size_nm=model_nm)
    n = len(args.image)
    if sizes:
        from .inference import pixel_ratio_for

        at_nm = dataclasses.replace(base.spec if base else spec, pixel_size_nm=model_nm)
        ratios = [pixel_ratio_for(s_nm, at_nm) for s_nm in sizes]
    else:
        ratios = [1.0] * n
    if args.pixel_ratio is not None:
        ratios = [args.pixel_ratio] * n
    if base and n == 1:
        # one stack: the fine-tuned model is set up for it and needs no ratio afterwards
        from .inference import for_stack

        base = for_stack(base, ratios[0], args.invert)
        ratios = [1.0]
    return base, spec, ratios, sizes, model_nm


def _train_volumes(args, ratios: list[float], fractions: list[float], sizes: list[float], model_nm):
    """Read each --image / --mask pair into a :class:`~napari_mitoseg.training.Volume`, with its
    validation slices (--val-image / --val-mask, or the held-out fraction)."""
    import numpy as np

    from .io import read_stack
    from .training import Volume, split_validation

    volumes = []
    for k, (im_path, mk_path) in enumerate(zip(args.image, args.mask, strict=True)):
        image, mask = np.asarray(read_stack(im_path)), np.asarray(read_stack(mk_path))
        if args.val_image and args.val_mask:
            tr_i, tr_m = image, mask
            va_i, va_m = np.asarray(read_stack(args.val_image)), np.asarray(read_stack(args.val_mask))
        else:
            tr_i, tr_m, va_i, va_m = split_validation(image, mask, fractions[k])
        volumes.append(Volume(tr_i, tr_m, va_i if len(va_i) else None, va_m if len(va_m) else None,
                              pixel_ratio=ratios[k], name=str(im_path)))
        if ratios[k] != 1.0:
            print(f"{im_path}: pixel size {sizes[k] if sizes else '?'} nm, model {model_nm} nm: "
                  f"slices resized by {ratios[k]:.3g} to the model's pixel size", flush=True)
    return volumes


def cmd_train(args) -> int:
    import dataclasses

    from ._progress import Progress
    from .model import ModelError
    from .training import FINETUNE, TrainConfig, iter_train_volumes

    sizes, fractions = _train_checks(args)
    base_cfg = FINETUNE if args.base else TrainConfig()
    overrides = {k: v for k, v in {"steps": args.steps, "batch_size": args.batch_size,
                                   "lr": args.lr, "augment": args.augment,
                                   "hard_fraction": args.hard_fraction,
                                   "seed": args.seed}.items() if v is not None}
    try:
        cfg = dataclasses.replace(base_cfg, **{**(json.loads(args.config) if args.config else {}),
                                               **overrides})
    except (json.JSONDecodeError, TypeError) as exc:
        raise ModelError(f"--config must be a JSON object of training settings: {exc}") from exc
    base, spec, ratios, sizes, model_nm = _train_model(args, sizes)
    volumes = _train_volumes(args, ratios, fractions, sizes, model_nm)
    info = {"command": "mitoseg " + shlex.join(sys.argv[1:]) if sys.argv else "",
            "train_image": " ".join(str(i) for i in args.image),
            "train_slices": sum(len(v.images) for v in volumes),
            "val_slices": sum(len(v.val_images) for v in volumes if v.val_images is not None)}
    if sizes:
        info["train_pixel_sizes_nm"] = sizes
    gen = iter_train_volumes(
        volumes, spec=spec, config=cfg, base=base, out_dir=args.out, resume=args.resume,
        ignore_value=args.ignore_value, max_seconds=args.minutes * 60 if args.minutes else None,
        device=args.device, info=info,
    )
    last = None
    progress = Progress("steps", "train")
    try:
        for prog in gen:
            last = prog
            progress(prog.step, prog.total)
            if prog.val_iou is not None or prog.step % 50 == 0 or prog.done:
                progress.write(_step_line(prog))
    finally:
        progress.close()
    if last is not None and not last.done:
        print(f"paused at step {last.step}; continue with --resume", flush=True)
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

    print(f"napari-mitoseg {__version__}  python {platform.python_version()}  torch "
          f"{torch.__version__}")
    print(f"devices: {', '.join(available_devices())}  threads: {torch.get_num_threads()}")
    print(f"user models: {user_model_dir()}")
    return 0


def cmd_demo(args) -> int:
    from . import api

    rep = api.demo(out=args.out)
    print(json.dumps(rep, indent=1))
    return 0


_COMMANDS = {"segment": cmd_segment, "evaluate": cmd_evaluate, "train": cmd_train, "measure": cmd_measure,
             "models": cmd_models, "info": cmd_info, "demo": cmd_demo}


def run() -> None:  # console-script entry point
    sys.exit(main())

"""``mitoseg train``: check the options against each other and the run folder, read the
volumes at their pixel sizes, then run the training loop with progress lines."""

from __future__ import annotations

import json
import logging
import shlex
import sys
from pathlib import Path

logger = logging.getLogger(__name__)


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
    from .training import TrainingError, check_run_dir, check_thread_setting, check_val_fraction

    check_thread_setting()
    n = len(args.image)
    if len(args.mask) != n:
        raise ModelError(f"give one --mask per --image ({n} images, {len(args.mask)} masks)")
    sizes = [check_pixel_size(nm) for nm in args.pixel_size or []]
    if sizes and len(sizes) != n:
        raise ModelError(f"give one --pixel-size per --image ({n} images, {len(sizes)} sizes)")
    if sizes and args.pixel_ratio is not None:
        raise ModelError("give either --pixel-size or --pixel-ratio, not both")
    fractions = _one_or_each([check_val_fraction(f) for f in args.val_fraction or [0.0]], n, "--val-fraction")
    args.views = _one_or_each(args.views or ["xy"], n, "--views")
    if (args.val_image is None) != (args.val_mask is None):
        raise TrainingError("--val-image and --val-mask go together; give both or neither")
    if args.val_image and n > 1:
        raise ModelError("--val-image/--val-mask go with a single --image; use --val-fraction")
    checked = args.checked or []
    if checked:
        _check_checked_files(args.image, checked)
    check_run_dir(args.out, args.resume, [*args.image, *args.mask, *checked, args.val_image, args.val_mask])
    return sizes, fractions


def _one_or_each(values: list, n: int, flag: str) -> list:
    """A flag given once for all ``n`` images, or once per image: one value per image."""
    from .model import ModelError

    if len(values) not in (1, n):
        raise ModelError(f"give one {flag}, or one per --image ({n} images)")
    return values * n if len(values) == 1 else values


def _check_checked_files(images: list[str], checked: list[str]) -> None:
    """Each --checked file read (lazily) and checked against its --image's shape, before any
    model is loaded: one per --image, of the image's (Z, Y, X) shape, a mask (not floats)."""
    from .io import read_stack
    from .training import TrainingError

    if len(checked) != len(images):
        raise TrainingError(f"give one --checked per --image ({len(images)} images, {len(checked)} "
                            "checked masks)")
    for im_path, ck_path in zip(images, checked, strict=True):
        image, ck = read_stack(im_path), read_stack(ck_path)
        if tuple(ck.shape) != tuple(image.shape):
            raise TrainingError(f"--checked {ck_path} {tuple(ck.shape)} and --image {im_path} "
                                f"{tuple(image.shape)} differ in shape: give a mask of the image's "
                                "shape, nonzero where the labels were checked")
        if ck.dtype.kind not in "biu":
            raise TrainingError(f"--checked {ck_path} holds {ck.dtype} values; give a mask (0 "
                                "unchecked, nonzero checked)")


def _apply_checked(mask, ck_path: str, ignore_value):
    """(training masks, share of the pixels that train): ``mask`` read by ``training_masks`` with
    ``ignore_value``, its unchecked pixels (per --checked ``ck_path``) unlabelled on every slice
    with checked pixels; a slice without any trains whole."""
    import numpy as np

    from .io import read_stack
    from .training import checked_regions, checked_shares, mask_unchecked, overall_share, training_masks

    masks = training_masks(mask, ignore_value)
    depth = masks.shape[0] if masks.ndim == 3 else 1
    regions = checked_regions(np.asarray(read_stack(ck_path)), masks.shape, range(depth))
    share = overall_share(checked_shares(regions, range(depth)))
    logger.info("%s: checked regions on %d of %d slice(s); %.0f%% of the pixels train, the rest is "
                "unlabelled", ck_path, len(regions), depth, 100 * share, extra={"note": True})
    return mask_unchecked(masks, regions, copy=False), share


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

        base = for_stack(base, ratios[0], _invert(args, base, ratios[0]))
        ratios = [1.0]
    return base, spec, ratios, sizes, model_nm


def _invert(args, base, ratio: float) -> bool:
    """--invert, else (one stack, with --base) the contrast the base model is clearly surer of
    (:func:`~napari_mitoseg.stack_setup.settle_contrast`, as ``mitoseg segment`` decides), with a note."""
    if args.invert:
        return True
    from .io import read_stack
    from .stack_setup import settle_contrast

    return settle_contrast(base, read_stack(args.image[0]), ratio, False, args.guess_contrast)[0]


def _train_volumes(args, ratios: list[float], fractions: list[float], sizes: list[float], model_nm):
    """Read each --image / --mask pair into a :class:`~napari_mitoseg.training.Volume`, with its
    validation slices (--val-image / --val-mask, or the held-out fraction); with --checked, the
    masks are read here (unchecked pixels unlabelled, as IGNORE) and the shares that train are
    returned too (one per volume; else [])."""
    import numpy as np

    from .io import read_stack
    from .training import Volume, ortho_planes, split_validation, training_masks

    volumes, shares, checked = [], [], args.checked or []
    for k, (im_path, mk_path) in enumerate(zip(args.image, args.mask, strict=True)):
        image, mask = np.asarray(read_stack(im_path)), np.asarray(read_stack(mk_path))
        if checked:  # read here, so the validation slices are scored on their checked pixels too
            mask, share = _apply_checked(mask, checked[k], args.ignore_value)
            shares.append(share)
        if args.val_image and args.val_mask:
            tr_i, tr_m = image, mask
            va_i, va_m = np.asarray(read_stack(args.val_image)), np.asarray(read_stack(args.val_mask))
            if checked:
                va_m = training_masks(va_m, args.ignore_value)
        else:
            tr_i, tr_m, va_i, va_m = split_validation(image, mask, fractions[k])
        if args.views[k] == "xyz":
            side_i, side_m = ortho_planes(tr_i, tr_m)
            print(f"{im_path}: learning from {len(tr_i)} XY slices and {len(side_i)} XZ and YZ planes", flush=True)
            tr_i, tr_m = [*tr_i, *side_i], [*tr_m, *side_m]
        volumes.append(Volume(tr_i, tr_m, va_i if len(va_i) else None, va_m if len(va_m) else None,
                              pixel_ratio=ratios[k], name=str(im_path)))
        if ratios[k] != 1.0:
            print(f"{im_path}: pixel size {sizes[k] if sizes else '?'} nm, model {model_nm} nm: "
                  f"slices resized by {ratios[k]:.3g} to the model's pixel size", flush=True)
    return volumes, shares


def cmd_train(args) -> int:
    import dataclasses

    from ._progress import Progress
    from .model import ModelError
    from .training import FINETUNE, IGNORE, TrainConfig, iter_train_volumes

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
    volumes, shares = _train_volumes(args, ratios, fractions, sizes, model_nm)
    info = {"command": "mitoseg " + shlex.join(sys.argv[1:]) if sys.argv else "",
            "train_image": " ".join(str(i) for i in args.image),
            "train_slices": sum(len(v.images) for v in volumes),
            "val_slices": sum(len(v.val_images) for v in volumes if v.val_images is not None)}
    if sizes:
        info["train_pixel_sizes_nm"] = sizes
    if args.checked:  # the masks are read (unchecked pixels unlabelled): IGNORE marks unlabelled
        info["checked"] = " ".join(args.checked)
        info["checked_share"] = [round(s, 4) for s in shares]
    gen = iter_train_volumes(
        volumes, spec=spec, config=cfg, base=base, out_dir=args.out, resume=args.resume,
        ignore_value=IGNORE if args.checked else args.ignore_value,
        max_seconds=args.minutes * 60 if args.minutes else None,
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

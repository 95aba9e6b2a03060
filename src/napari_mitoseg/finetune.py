"""Fine-tune a model on the slices a user corrected, and save it as a new user model version.

:mod:`napari_mitoseg.api` re-exports :func:`iter_finetune` and :class:`FinetuneResult`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .inference import InputError, as_stack, check_stack, choose_pixel_ratio, for_stack
from .metrics import score
from .model import LoadedModel, next_version_name, save_model, user_model_dir
from .pipeline import NOTE, get_model, segment

logger = logging.getLogger("napari_mitoseg.api")


@dataclass
class FinetuneResult:
    name: str
    path: Path
    slices: list[int]
    iou_before: float
    iou_after: float
    seconds: float
    steps: int
    #: share (0-1) of the corrected slices' pixels that trained (checked regions), None: whole slices
    checked_share: float | None = None
    #: each corrected slice -> share of it checked, None where it trained whole (no region drawn)
    checked: dict[int, float | None] | None = None


def iter_finetune(
    image,
    labels,
    slices: Sequence[int],
    *,
    base: str | os.PathLike | None = None,
    config=None,
    device: str = "auto",
    name: str | None = None,
    out_root: str | os.PathLike | None = None,
    pixel_ratio: float = 1.0,
    invert: bool = False,
    pixel_size_nm: float | None = None,
    ignore_value: int | str | None = "auto",
    checked=None,
) -> Iterator:
    """Fine-tune ``base`` on the corrected ``slices`` of (Z, Y, X) ``image`` / ``labels``.

    ``pixel_ratio`` (the stack's pixel size over the base model's training pixel size) and
    ``invert`` (the stack's contrast is reversed) are kept in the new model's spec
    (:func:`~napari_mitoseg.inference.for_stack`): the new model segments this stack as it is.

    The uncorrected slices are unlabelled: a configuration that adapts to the stack
    (``TrainConfig.bn = "stack"``, self-training) uses up to ``stack_slices`` of them.

    Yields :class:`~napari_mitoseg.training.TrainProgress` per step; returns (as the
    generator's value) a :class:`FinetuneResult`. The new model is saved as a new version in
    the user's model folder (``<base>-ftN``), never over an existing model; its card records
    the base, the slices, the steps, the time and the IoU on those slices before and after.

    ``pixel_size_nm`` (the stack's Y/X pixel size) is the other way to give ``pixel_ratio``
    (not both). ``labels`` are read as :func:`~napari_mitoseg.training.training_masks` reads
    masks (``ignore_value``: 0/255-only labels are background / mitochondrion). ``name`` is a
    plain name (no folder: ``out_root`` chooses another folder), never a shipped model's.

    ``checked``: the regions the user checked (nonzero), as a (Z, Y, X) mask of the labels'
    shape or ``{z: (Y, X) mask}``; on each corrected slice with checked pixels only those train
    and score, the rest is unlabelled. A corrected slice without a checked pixel (no region
    drawn on it) trains whole; None (the default): every corrected slice trains whole. A mask of
    the wrong shape is refused before the model is loaded. The card records the share of the
    corrected slices' pixels that trained (:mod:`~napari_mitoseg.training.regions`).
    """
    from .training import (
        FINETUNE,
        IGNORE,
        checked_regions,
        checked_shares,
        iter_train,
        mask_unchecked,
        overall_share,
        training_masks,
    )

    if name is not None:
        _check_model_name(name)
    image, labels, sl = _finetune_inputs(image, labels, slices)
    regions = checked_regions(checked, image.shape, sl) if checked is not None else {}
    if pixel_size_nm is not None and pixel_ratio != 1.0:
        raise InputError("give the stack's pixel size or a pixel ratio, not both")
    cfg = config or FINETUNE
    model = get_model(base, device)
    if pixel_size_nm is not None:
        pixel_ratio, note = choose_pixel_ratio(model.spec, pixel_size_nm=pixel_size_nm)
        logger.info(note, extra=NOTE)
    base_model = for_stack(model, pixel_ratio, invert)
    root, name = _new_model_place(name, base_model.name, out_root)
    ims, mks = image[sl], mask_unchecked(training_masks(labels, ignore_value), regions, copy=False)[sl]
    before = score(segment(ims, base_model) > 0, mks == 1, ignore=mks == 255).iou
    t0 = time.perf_counter()
    tuned: LoadedModel = yield from iter_train(ims, mks, config=cfg, base=base_model, device=device,
                                               ignore_value=IGNORE, unlabelled=_unlabelled(image, sl, cfg))
    seconds = time.perf_counter() - t0
    after = score(segment(ims, tuned) > 0, mks == 1, ignore=mks == 255).iou
    result = FinetuneResult(name, root / name, sl, before, after, seconds, cfg.steps)
    if checked is not None:
        shares = checked_shares(regions, sl)
        result = dataclasses.replace(result, checked_share=overall_share(shares), checked=shares)
    info, card = _finetune_card(result, base_model, cfg, pixel_ratio, invert)
    path = save_model(tuned.net, tuned.spec, root / name, info=info, card=card)
    return dataclasses.replace(result, path=path)


def _unlabelled(image: np.ndarray, corrected: list[int], cfg) -> np.ndarray | None:
    """The stack's uncorrected slices the configuration adapts to (AdaBN, self-training): at
    most ``cfg.stack_slices`` of them, spread over the stack; None when it uses none."""
    from .training.adapt import spread

    done = set(corrected)
    others = [z for z in range(image.shape[0]) if z not in done]
    if not cfg.uses_stack or not others:
        return None
    return image[spread(others, cfg.stack_slices)]


def _finetune_inputs(image, labels, slices: Sequence[int]) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """(image, labels) as (Z, Y, X) arrays of one shape and the sorted corrected slices; raises
    for no slices, a mask given as the image, or shapes that differ."""
    if not slices:
        raise ValueError("no corrected slices: paint corrections on at least one slice first")
    image = np.asarray(as_stack(image))
    labels = np.asarray(as_stack(labels))
    check_stack(image)
    if image.ndim == 2:
        image, labels = image[None], labels[None]
    if labels.shape != image.shape:
        raise ValueError(f"labels {labels.shape} and image {image.shape} differ in shape")
    sl = _slice_indices(slices, image.shape[0])
    _check_not_a_mask(image)
    return image, labels, sl


def _check_model_name(name) -> None:
    """:class:`InputError` for a name a fine-tuned model cannot take: not a plain name (a path
    would write outside the model folder; use ``out_root`` for another folder), or a shipped
    model's (loading by that name finds the shipped model, never this one)."""
    from .model import list_models

    plain = isinstance(name, str) and name.strip() == name and name not in ("", ".", "..") \
        and not name.startswith(".") and not any(c in name for c in "/\\:\0")
    if not plain:
        raise InputError(f"model name {name!r} must be a plain name such as 'my-mito-v1' (no folder "
                         "and no leading dot): the model is saved in the user model folder, or in "
                         "out_root when given")
    shipped = sorted(m.name for m in list_models(include_broken=True) if m.shipped)
    if name in shipped:
        raise InputError(f"model name {name!r} is a shipped model's, which would always be loaded "
                         f"instead of yours; choose another name (shipped: {', '.join(shipped)})")


def _new_model_place(name: str | None, base_name: str, out_root) -> tuple[Path, str]:
    """(folder, name) of a fine-tuned model: ``name`` or the next version of ``base_name`` in
    ``out_root`` (default the user's model folder), never an existing model."""
    root = Path(out_root) if out_root else user_model_dir()
    name = name or next_version_name(base_name, root)
    if (root / name).exists():
        raise FileExistsError(f"model {name!r} already exists in {root}; choose another name")
    return root, name


def _finetune_card(res: FinetuneResult, base_model: LoadedModel, cfg, pixel_ratio: float,
                   invert: bool) -> tuple[dict, str]:
    """(info, card) of a fine-tuned model: its base, slices, steps, time and IoU before and after."""
    before, after, sl, seconds = res.iou_before, res.iou_after, res.slices, res.seconds
    info = {
        "summary": f"fine-tuned from {base_model.name} on {len(sl)} slice(s), IoU on them "
                   f"{before:.3f} -> {after:.3f}",
        "base_model": base_model.name, "slices": sl, "pixel_ratio": float(pixel_ratio),
        "invert": bool(invert),
        # the base model's recommended post-processing carries over
        **{k: bool(base_model.info.get(k, False)) for k in ("default_z_smooth", "default_fill_holes")},
        "steps": cfg.steps,
        "train_seconds": round(seconds, 1), "iou_before": before, "iou_after": after,
        "train_config": dataclasses.asdict(cfg),
    }
    scale_note = "".join([
        f", for pixels {pixel_ratio:g}x the size of its base model's training data" if pixel_ratio != 1 else "",
        ", for contrast the reverse of its base model's training data" if invert else "",
    ])
    checked_note, scored = "", "the corrected slices"
    if res.checked is not None:
        from .training import describe_shares

        info["checked_share"] = round(res.checked_share, 4)
        info["checked_slices"] = {str(z): (1.0 if s is None else round(s, 4)) for z, s in res.checked.items()}
        info["summary"] += f" (checked regions: {res.checked_share:.0%} of their pixels)"
        checked_note = (f"\n\nTrained on checked regions only: {res.checked_share:.0%} of the corrected "
                        f"slices' pixels ({describe_shares(res.checked)}); the rest was unlabelled.")
        scored = "the checked pixels of the corrected slices"
    card = (
        f"# {res.name}\n\nFine-tuned from `{base_model.name}` on slices {sl} "
        f"({cfg.steps} steps, {seconds:.0f} s){scale_note}.{checked_note}\n\n"
        f"| | IoU on {scored} |\n|---|---|\n"
        f"| before | {before:.4f} |\n| after | {after:.4f} |\n"
    )
    return info, card


def _check_not_a_mask(image: np.ndarray) -> None:
    """:class:`InputError` when the image to learn from is itself a mask or label volume (the
    ground truth chosen as the image): integer, at least two values, label-like."""
    from .metrics import label_sample, looks_like_labels

    if image.dtype.kind not in "iu":
        return
    sample = label_sample(image)
    if len(np.unique(sample)) >= 2 and looks_like_labels(sample):
        raise InputError("the image looks like a mask or label volume, not an EM stack: choose the "
                         "EM image as the image and the labels as the labels")


def _slice_indices(slices: Sequence[int], depth: int) -> list[int]:
    """Sorted unique slice indices; :class:`InputError` for one outside 0..depth-1."""
    try:
        sl = sorted({int(s) for s in slices})
    except (TypeError, ValueError):
        raise InputError(f"slice indices must be whole numbers, got {list(slices)!r}") from None
    outside = [s for s in sl if not 0 <= s < depth]
    if outside:
        raise InputError(f"slice index {outside} out of range: the stack has {depth} slice(s), "
                         f"numbered 0 to {depth - 1}")
    return sl

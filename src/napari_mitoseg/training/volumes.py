"""Training data: masks read as background / mitochondrion / unlabelled, image and mask pairs
checked and normalised, validation slices held out, and :class:`Volume`, one training volume."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..inference import check_stack, normalise01
from ..metrics import label_sample, looks_like_labels
from .config import AUTO, IGNORE, NOTE, TrainingError, _is_number

logger = logging.getLogger(__name__)


def _ragged(stack) -> bool:
    """A list of slices of different shapes (a volume's XY slices and its side views)."""
    return isinstance(stack, (list, tuple)) and len({np.shape(s) for s in stack}) > 1


def _as_slices(stack, name: str) -> list[np.ndarray]:
    if _ragged(stack):
        return [s for part in stack for s in _as_slices(part, name)]
    arr = np.asarray(stack)
    try:
        check_stack(arr)
    except ValueError as exc:
        raise TrainingError(f"{name}: {exc}") from exc
    return list(arr[None] if arr.ndim == 2 else arr)


def training_masks(masks, ignore_value: int | str | None = AUTO) -> np.ndarray:
    """Masks of any integer values -> uint8 0 background, 1 mitochondrion, :data:`IGNORE` unlabelled.

    ``ignore_value``: the value marking unlabelled pixels, None for none, or ``"auto"``: 255
    when the masks also hold other non-zero values (0, 1 and 255: 255 is unlabelled), none when
    255 is their only non-zero value (a binary 0/255 mask: 255 is mitochondrion; a note says so).
    Every other value > 0 is mitochondrion.
    """
    if _ragged(masks):  # decided once for all the slices, then cut back into them
        parts = [np.asarray(p) for p in masks]
        flat = training_masks(np.concatenate([p.ravel() for p in parts]), ignore_value)
        cuts = np.cumsum([p.size for p in parts])[:-1]
        return [f.reshape(p.shape) for f, p in zip(np.split(flat, cuts), parts, strict=True)]
    m = np.asarray(masks)
    if m.dtype.kind == "f":
        if not np.isfinite(m).all() or (m != np.round(m)).any():
            raise TrainingError("the mask holds non-integer values (NaN or fractions): a mask "
                                "holds 0 for background and whole numbers > 0 for mitochondria")
    elif m.dtype.kind not in "biu":
        raise TrainingError(f"the mask has dtype {m.dtype}; use integers")
    ignore = ignore_value
    if ignore_value == AUTO:
        nonzero = np.unique(m[m > 0]) if m.dtype != bool else np.array([1])
        ignore = IGNORE if (IGNORE in nonzero and len(nonzero) > 1) else None
        if len(nonzero) == 1 and nonzero[0] == IGNORE:
            logger.info("the mask holds only 0 and 255: read as background (0) and mitochondrion "
                        "(255); to mark unlabelled pixels with 255, give the ignore value 255 "
                        "(--ignore-value 255) and label mitochondria 1", extra=NOTE)
    elif ignore_value is not None and not isinstance(ignore_value, (int, np.integer)):
        raise TrainingError(f"ignore value must be an integer, None or {AUTO!r}, got {ignore_value!r}")
    _check_mask_values(m, ignore_value)
    out = (m > 0).astype(np.uint8)
    if ignore is not None:
        out[m == ignore] = IGNORE
    return out


#: masks of fewer pixels are too small to tell from a grey image by their neighbours
GREY_CHECK_PIXELS = 1024


def _check_mask_values(m: np.ndarray, ignore_value) -> None:
    """:class:`TrainingError` for a mask that cannot be one: every pixel 255 (read by ``"auto"``
    it would train everything as mitochondrion; it is unlabelled or a whole slice of
    mitochondrion, never a mask to learn from), or a grey image given as the mask."""
    if m.size and ignore_value == AUTO and m.dtype != bool and (m == IGNORE).all():
        raise TrainingError(f"every pixel of the mask is {IGNORE} (the unlabelled value): nothing to "
                            "learn from; check the mask (0 background, > 0 mitochondrion)")
    big = m.ndim in (2, 3) and m.size >= GREY_CHECK_PIXELS
    if big and not looks_like_labels(label_sample(m).astype(np.int64)):
        raise TrainingError("the mask looks like a grey image (its neighbouring pixels mostly differ), "
                            "not a mask: give the segmentation (0 background, > 0 mitochondrion) as the "
                            "mask and the EM stack as the image")


def check_not_a_mask(image, name: str = "the training image") -> None:
    """:class:`TrainingError` when an image to learn from is itself a mask or label volume (the
    ground truth chosen as the image): integer, at least two values, label-like."""
    a = np.asarray(image[0] if _ragged(image) else image)
    if a.dtype.kind not in "iu" or a.ndim not in (2, 3):
        return
    sample = label_sample(a)
    if len(np.unique(sample)) >= 2 and looks_like_labels(sample):
        raise TrainingError(f"{name} looks like a mask or label volume, not an EM stack: give the EM "
                            "stack as the image and the segmentation as the mask")


def prepare(images, masks) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Validate and normalise training pairs: ([0,1] float32 slices, uint8 masks 0/1/255)."""
    ims = _as_slices(images, "image")
    mks = _as_slices(masks, "mask")
    check_not_a_mask(images)
    if len(ims) != len(mks) or any(i.shape != m.shape for i, m in zip(ims, mks, strict=False)):
        raise TrainingError(
            f"image and mask differ in shape: {np.shape(images)} vs {np.shape(masks)}"
        )
    out_m = []
    for m in mks:
        m = np.asarray(m)
        mm = np.where(m == IGNORE, IGNORE, (m > 0).astype(np.uint8)).astype(np.uint8)
        out_m.append(mm)
    if all((m == IGNORE).all() for m in out_m):
        raise TrainingError("every mask pixel is marked as ignored: nothing to learn from")
    return [normalise01(i) for i in ims], out_m


def _check_has_mitochondria(masks: Sequence[np.ndarray], from_scratch: bool) -> None:
    """Training masks (0/1/IGNORE) without a single mitochondrion pixel: an error for a new model
    (it would learn that nothing is a mitochondrion); a warning when fine-tuning (slices whose
    false positives were erased are a valid correction)."""
    if any((np.asarray(s) == 1).any() for m in masks for s in (m if _ragged(m) else [m])):
        return
    msg = "the training mask holds no mitochondrion (no pixel > 0 outside the unlabelled value)"
    if from_scratch:
        raise TrainingError(f"{msg}: a new model would learn that nothing is a mitochondrion; "
                            "check the mask (is it the right file? a 0/255 mask with --ignore-value 255?)")
    logger.warning("%s: the model learns background only", msg)


def split_validation(images, masks, fraction: float):
    """Hold out the last contiguous block of ``fraction`` of the slices for validation."""
    if not (_is_number(fraction) and 0 <= fraction <= 1):
        raise TrainingError(f"val fraction must be a number from 0 to 1, got {fraction!r}")
    ims, mks = _as_slices(images, "image"), _as_slices(masks, "mask")
    n_val = int(round(len(ims) * fraction)) if fraction > 0 else 0
    if n_val == 0:
        return ims, mks, [], []
    if n_val >= len(ims):
        raise TrainingError(f"val fraction {fraction} leaves no training slice of {len(ims)}")
    return ims[:-n_val], mks[:-n_val], ims[-n_val:], mks[-n_val:]


#: every how many rows (XZ) and columns (YZ) a plane is taken by :func:`ortho_planes`: neighbouring
#: planes are nearly the same image, so every second one holds as much to learn from at half the memory
ORTHO_STRIDE = 2
#: the fewest slices in z whose side views are planes large enough to segment (8 x 8)
MIN_SIDE_DEPTH = 8


def ortho_planes(images, masks, stride: int = ORTHO_STRIDE) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The XZ planes (every ``stride``-th row, (Z, X) each) and YZ planes (every ``stride``-th
    column, (Z, Y) each) of a (Z, Y, X) image and its mask, oriented as the ortho passes of
    :mod:`napari_mitoseg.ortho` read them: training on them teaches the model those views of a
    near-isotropic volume. Give only the slices that train (not the validation block), so no
    validation voxel reaches training through a side view."""
    im, mk = np.asarray(images), np.asarray(masks)
    if im.ndim != 3 or im.shape != mk.shape:
        raise TrainingError(f"side views need a (Z, Y, X) image and a mask of its shape, got {im.shape} "
                            f"and {mk.shape}")
    if im.shape[0] < MIN_SIDE_DEPTH:
        raise TrainingError(f"side views (--views xyz) need at least {MIN_SIDE_DEPTH} training slices in z, "
                            f"got {im.shape[0]}: a thinner stack's XZ and YZ planes are too small to learn from")
    def planes(a: np.ndarray) -> list[np.ndarray]:
        return ([np.ascontiguousarray(a[:, y, :]) for y in range(0, a.shape[1], stride)]
                + [np.ascontiguousarray(a[:, :, x]) for x in range(0, a.shape[2], stride)])

    return planes(im), planes(mk)


@dataclass
class Volume:
    """One training volume: raw (Z, Y, X) ``images`` and ``masks`` (0 background, 1-254
    mitochondrion, 255 unlabelled), optional held-out ``val_images`` / ``val_masks``, and
    ``pixel_ratio``, the volume's pixel size over the model's (``ModelSpec.pixel_size_nm``):
    its slices reach the network resized by it, as :func:`inference.for_stack` does at
    inference, so volumes of different pixel sizes train one model. ``unlabelled``: raw
    (Z, Y, X) slices of the same stack without labels, for adapting a model to it
    (``TrainConfig.bn = "stack"``, self-training); unused otherwise."""

    images: Any
    masks: Any
    val_images: Any = None
    val_masks: Any = None
    pixel_ratio: float = 1.0
    name: str = ""
    unlabelled: Any = None


def _read_masks(vol: Volume, k: int, ignore_value) -> Volume:
    """``vol`` with its masks (and validation masks) read by :func:`training_masks`; validation
    images and masks must come together."""
    if (vol.val_images is None) != (vol.val_masks is None):
        raise TrainingError(f"{vol.name or f'volume {k + 1}'}: give validation images and masks "
                            "together, or neither")
    val = None if vol.val_masks is None else training_masks(vol.val_masks, ignore_value)
    return dataclasses.replace(vol, masks=training_masks(vol.masks, ignore_value), val_masks=val)


def volume_weights(masks: Sequence[np.ndarray], per_volume: Sequence[int]) -> np.ndarray:
    """How often to draw each slice: every volume (``per_volume`` consecutive slices of
    ``masks``) equally often, and within a volume each slice by its labelled pixels."""
    labelled = np.array([float((np.asarray(m) != IGNORE).sum()) for m in masks])
    out, start = np.zeros(len(masks)), 0
    for n in per_volume:
        part = labelled[start : start + n]
        out[start : start + n] = part / part.sum() / len(per_volume)
        start += n
    return out

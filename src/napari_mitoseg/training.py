"""Training and fine-tuning: one engine for the shipped model and for the user's corrections.

:func:`iter_train` is a generator yielding a :class:`TrainProgress` after every step (loss) and
after every validation (IoU), so the Fine-tune widget, the command line and scripts share it.
Runs are resumable: ``out_dir/checkpoint.pt`` holds model, optimiser, step and history, written
atomically; sampling and augmentation are seeded by (seed, step), so a resumed run continues
exactly as an uninterrupted one would.

Masks: 0 background, 1 (any value in 1..254) mitochondrion, :data:`IGNORE` (255) unlabelled,
left out of the loss, so a user may correct only part of a slice. A mask holding only 0 and 255
is the common binary format and reads as background / mitochondrion (with a note); see
:func:`training_masks`.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .inference import check_stack, for_stack, normalise01, predict_slice
from .io import write_errors
from .metrics import Counts, counts, scores_from_counts
from .model import (
    LoadedModel,
    ModelSpec,
    build_model,
    load_model,
    resolve_device,
    save_model,
    spare_cpu_threads,
)

logger = logging.getLogger(__name__)

IGNORE = 255
CHECKPOINT = "checkpoint.pt"
HISTORY = "history.json"
#: the augmentation recipes of :class:`TrainConfig`
AUGMENTS = ("full", "strong", "basic")
#: what a training run writes into its folder
RUN_FILES = ("best", "last", CHECKPOINT, HISTORY)
#: ``ignore_value`` of :func:`training_masks`: decide from the values the masks hold
AUTO = "auto"
#: ``extra`` of a log record that states a decision the user should see (the CLI prints it)
NOTE = {"note": True}


class TrainingError(ValueError):
    """Training data or settings are unusable; the message says why."""


@dataclass(frozen=True)
class TrainConfig:
    """Training settings (defaults: training a model from scratch).

    steps : optimiser steps in total (the schedule spans them).
    batch_size, tile : crops per step and their side in pixels.
    lr, weight_decay, warmup : AdamW with linear warm-up then cosine decay to ``lr / 50``.
    scale_range : crops are rescaled by a log-uniform factor in this range (pixel-size change).
    foreground_fraction : share of crops centred on a labelled mitochondrion pixel.
    hard_fraction, hard_every : share of crops centred on a pixel the model currently gets
        wrong (false positive or negative on the training slices), the pool refreshed every
        ``hard_every`` steps: online hard-example mining, so rare look-alikes (myelin) are seen
        often. 0 turns it off.
    augment : ``"full"`` (geometry, scale, intensity, gamma, blur, noise, elastic),
        ``"strong"`` (``full`` with wider contrast, gamma, blur and noise ranges plus the
        artefacts of other microscopes: uneven illumination, scan-line stripes, low-dose
        noise, debris and missing data) or ``"basic"`` (flips, rotations, brightness: the
        naive baseline).
    val_every, checkpoint_every : in steps (0 = only at the end).
    """

    steps: int = 3000
    batch_size: int = 8
    tile: int = 256
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup: int = 100
    scale_range: tuple[float, float] = (0.5, 2.0)
    foreground_fraction: float = 0.4
    hard_fraction: float = 0.3
    hard_every: int = 250
    augment: str = "full"
    val_every: int = 250
    checkpoint_every: int = 50
    seed: int = 0

    def __post_init__(self) -> None:
        if self.augment not in AUGMENTS:
            raise TrainingError(f"augment must be one of {', '.join(AUGMENTS)}, got {self.augment!r}")
        if not (self.hard_fraction >= 0 and self.foreground_fraction >= 0
                and self.hard_fraction + self.foreground_fraction <= 1 and self.hard_every >= 1):
            raise TrainingError("hard_fraction and foreground_fraction must be >= 0 with a sum "
                                "<= 1, and hard_every >= 1")
        if self.steps < 1 or self.batch_size < 1 or self.tile % 32:
            raise TrainingError("steps and batch_size must be >= 1 and tile a multiple of 32")


#: Defaults for fine-tuning from a few corrected slices on a CPU. Chosen on the validation
#: blocks of both training volumes (``benchmarks/finetune_figures.py --data val --volume V``,
#: 2 corrected slices): 300 steps at lr 1e-3 gave the other slices IoU 0.782 (SBEM) and 0.932
#: (Lucchi++), against 0.775 / 0.932 at 200 steps, 0.759 / 0.930 at 150, and 0.757 / 0.931 at
#: 150 steps of lr 2e-3. See :data:`FINETUNE_SECONDS` for the time.
FINETUNE = TrainConfig(
    steps=300, batch_size=4, lr=1e-3, warmup=10, val_every=0, checkpoint_every=50,
    foreground_fraction=0.5, hard_fraction=0.0,
)
#: Wall time of :data:`FINETUNE` on 2 corrected slices with the shipped model, on 2 idle CPU
#: cores (``benchmarks/finetune_figures.py --data test``: 72 s on SBEM, 75 s on Lucchi++).
FINETUNE_SECONDS = 75


@dataclass
class TrainProgress:
    """Reported after each step. ``val_iou`` is set on validation steps only."""

    step: int
    total: int
    loss: float
    seconds: float
    val_iou: float | None = None
    best_iou: float | None = None
    done: bool = False
    history: list[dict] = field(default_factory=list)


# --------------------------------------------------------------------------- data


def _as_slices(stack, name: str) -> list[np.ndarray]:
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
    out = (m > 0).astype(np.uint8)
    if ignore is not None:
        out[m == ignore] = IGNORE
    return out


def check_run_dir(out: str | os.PathLike, resume: bool, inputs=()) -> Path:
    """Raise unless ``out`` can take a training run: a folder (new, or holding a run to go on
    with when ``resume``), writable, and no input among the files a run writes there.

    A finished or paused run is never overwritten: without ``resume`` a folder that holds one
    is refused.
    """
    from .io import as_path, check_not_input, check_writable_dir

    out = as_path(out, TrainingError)
    if out.exists() and not out.is_dir():
        raise TrainingError(f"--out {out} is a file; name a folder for the run")
    check_not_input(out, inputs, "run folder")
    for name in RUN_FILES:
        check_not_input(out / name, inputs, "run file")
    held = [n for n in RUN_FILES if (out / n).exists()]
    if held and not resume:
        raise TrainingError(
            f"{out} already holds a training run ({', '.join(held)}); continue it with --resume "
            "or choose a fresh --out folder"
        )
    if resume and held and CHECKPOINT not in held and any(n in held for n in ("best", "last")):
        raise TrainingError(f"{out} holds trained models but no {CHECKPOINT} to resume from; "
                            "choose a fresh --out folder")
    check_writable_dir(out)
    return out


def prepare(images, masks) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Validate and normalise training pairs: ([0,1] float32 slices, uint8 masks 0/1/255)."""
    ims = _as_slices(images, "image")
    mks = _as_slices(masks, "mask")
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
    if any((m == 1).any() for m in masks):
        return
    msg = "the training mask holds no mitochondrion (no pixel > 0 outside the unlabelled value)"
    if from_scratch:
        raise TrainingError(f"{msg}: a new model would learn that nothing is a mitochondrion; "
                            "check the mask (is it the right file? a 0/255 mask with --ignore-value 255?)")
    logger.warning("%s: the model learns background only", msg)


def split_validation(images, masks, fraction: float):
    """Hold out the last contiguous block of ``fraction`` of the slices for validation."""
    ims, mks = _as_slices(images, "image"), _as_slices(masks, "mask")
    n_val = int(round(len(ims) * fraction)) if fraction > 0 else 0
    if n_val == 0:
        return ims, mks, [], []
    if n_val >= len(ims):
        raise TrainingError(f"val fraction {fraction} leaves no training slice of {len(ims)}")
    return ims[:-n_val], mks[:-n_val], ims[-n_val:], mks[-n_val:]


class CropSampler:
    """Draws augmented (image, mask) crops; deterministic given (seed, step).

    ``ratios`` (one per slice, default 1) is each slice's pixel size over the model's: a crop is
    resized by ``input_scale * ratio``, so every slice reaches the network at the model's pixel
    size. ``weights`` (one per slice, default: labelled pixels) set how often a slice is drawn.
    """

    def __init__(self, images: list[np.ndarray], masks: list[np.ndarray], cfg: TrainConfig,
                 input_scale: float = 1.0, invert: bool = False,
                 ratios: Sequence[float] | None = None, weights: Sequence[float] | None = None):
        import torch
        from torchvision.transforms import v2

        self.images, self.masks, self.cfg = images, masks, cfg
        self.input_scale, self.invert = input_scale, invert
        self.ratios = [1.0] * len(images) if ratios is None else [float(r) for r in ratios]
        #: flat indices of wrongly predicted pixels per slice (see :meth:`set_hard`)
        self.hard: list[np.ndarray] = [np.zeros(0, np.int64) for _ in masks]
        if weights is None:
            weights = [float((m != IGNORE).sum()) for m in masks]
        w = np.asarray(weights, float)
        self.p_slice = w / w.sum()
        self.fg = [np.flatnonzero(m.ravel() == 1) for m in masks]
        self.lab = [np.flatnonzero(m.ravel() != IGNORE) for m in masks]
        t = cfg.tile
        geo = [v2.Resize((t, t), antialias=True), v2.RandomHorizontalFlip(), v2.RandomVerticalFlip()]
        if cfg.augment in ("full", "strong"):
            strong = cfg.augment == "strong"
            self.geometry = v2.Compose(
                [*geo, v2.RandomApply([v2.ElasticTransform(alpha=25.0, sigma=6.0)], p=0.2)]
            )
            self.intensity = v2.Compose(
                [
                    v2.ColorJitter(brightness=0.5 if strong else 0.35, contrast=0.6 if strong else 0.45),
                    v2.RandomApply([v2.GaussianBlur(7 if strong else 5, sigma=(0.3, 2.2 if strong else 1.5))],
                                   p=0.35 if strong else 0.3),
                    v2.RandomApply([v2.GaussianNoise(sigma=0.1 if strong else 0.06, clip=True)],
                                   p=0.4 if strong else 0.3),
                ]
            )
        else:
            self.geometry = v2.Compose(geo)
            self.intensity = v2.ColorJitter(brightness=0.2)
        self._torch = torch

    def crop_size(self, i: int, scale: float = 1.0) -> int:
        """Side in slice ``i``'s pixels of a crop that becomes one ``tile`` at the network, for an
        augmentation rescale by ``scale``."""
        return int(round(self.cfg.tile / (scale * self.input_scale * self.ratios[i])))

    def set_hard(self, model: LoadedModel) -> int:
        """Refresh the hard-example pools from ``model``'s errors; returns their total size."""
        for i, (im, m) in enumerate(zip(self.images, self.masks, strict=True)):
            pred = predict_slice(for_stack(model, self.ratios[i]), im) > model.spec.threshold
            wrong = (pred != (m == 1)) & (m != IGNORE)
            self.hard[i] = np.flatnonzero(wrong.ravel())
        return int(sum(len(h) for h in self.hard))

    def sample(self, step: int):
        """(B, 1, T, T) float32 in [-1, 1] and (B, 1, T, T) float32 masks (0, 1, 255)."""
        from torchvision import tv_tensors
        from torchvision.transforms.v2 import functional as F

        torch, cfg = self._torch, self.cfg
        rng = np.random.default_rng([cfg.seed, step])
        torch.manual_seed(cfg.seed * 1_000_003 + step)
        xs, ys = [], []
        for _ in range(cfg.batch_size):
            i = int(rng.choice(len(self.images), p=self.p_slice))
            img, msk = self.images[i], self.masks[i]
            h, w = img.shape
            if cfg.augment != "basic":
                lo, hi = np.log(cfg.scale_range[0]), np.log(cfg.scale_range[1])
                scale = float(np.exp(rng.uniform(lo, hi)))
            else:
                scale = 1.0
            c = self.crop_size(i, scale)
            ch, cw = min(c, h), min(c, w)
            r = rng.random()
            if r < cfg.hard_fraction and len(self.hard[i]):
                pool = self.hard[i]
            elif r < cfg.hard_fraction + cfg.foreground_fraction and len(self.fg[i]):
                pool = self.fg[i]
            else:
                pool = self.lab[i]
            centre = int(pool[rng.integers(len(pool))])
            cy, cx = divmod(centre, w)
            y0 = int(np.clip(cy - ch // 2 + rng.integers(-ch // 4, ch // 4 + 1), 0, h - ch))
            x0 = int(np.clip(cx - cw // 2 + rng.integers(-cw // 4, cw // 4 + 1), 0, w - cw))
            crop = img[y0 : y0 + ch, x0 : x0 + cw]
            crop = 1.0 - crop if self.invert else crop  # the network's polarity (spec.invert)
            im = tv_tensors.Image(torch.from_numpy(np.ascontiguousarray(crop))[None])
            mk = tv_tensors.Mask(torch.from_numpy(np.ascontiguousarray(msk[y0 : y0 + ch, x0 : x0 + cw]))[None])
            im, mk = self.geometry(im, mk)
            k = int(rng.integers(4))
            im, mk = torch.rot90(im, k, (1, 2)), torch.rot90(mk, k, (1, 2))
            im = self.intensity(im)
            if cfg.augment == "strong":
                im, mk = em_artefacts(im, mk, rng)
            if cfg.augment != "basic" and rng.random() < (0.5 if cfg.augment == "strong" else 0.3):
                g = 0.7 if cfg.augment == "strong" else 0.4
                im = F.adjust_gamma(im.clamp(0, 1), float(np.exp(rng.uniform(-g, g))))
            xs.append(im.as_subclass(torch.Tensor).float() * 2.0 - 1.0)
            ys.append(mk.as_subclass(torch.Tensor).float())
        return torch.stack(xs), torch.stack(ys)


def em_artefacts(im, mask, rng: np.random.Generator):
    """Artefacts of other microscopes and preparations on a (1, T, T) float crop in [0, 1],
    each applied at random: uneven illumination (a linear ramp of brightness), scan-line
    stripes (row or column offsets), low-dose noise (Poisson-like, stronger in bright areas),
    and debris or missing data (a dark or bright blob, its pixels marked :data:`IGNORE` in the
    (1, T, T) ``mask``). Returns (image, mask)."""
    import torch

    _, h, w = im.shape
    g = torch.Generator().manual_seed(int(rng.integers(2**31)))
    if rng.random() < 0.3:  # uneven illumination or charging
        a, angle = rng.uniform(-0.35, 0.35), rng.uniform(0, 2 * np.pi)
        yy, xx = torch.meshgrid(torch.linspace(-0.5, 0.5, h), torch.linspace(-0.5, 0.5, w), indexing="ij")
        im = im * (1.0 + a * (np.cos(angle) * yy + np.sin(angle) * xx))[None]
    if rng.random() < 0.2:  # scan-line stripes
        shape = (1, h, 1) if rng.random() < 0.5 else (1, 1, w)
        im = im + torch.randn(shape, generator=g) * float(rng.uniform(0.02, 0.08))
    if rng.random() < 0.2:  # low-dose shot noise
        k = float(rng.uniform(20, 120))
        im = torch.poisson(im.clamp(0, 1) * k, generator=g) / k
    if rng.random() < 0.05:  # debris / missing data
        r = float(rng.uniform(0.05, 0.2)) * min(h, w)
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        blob = ((yy - cy) ** 2 + (xx - cx) ** 2) < r * r
        im = torch.where(blob[None], torch.tensor(float(rng.integers(2))), im)
        mask = torch.where(blob[None], torch.tensor(IGNORE, dtype=mask.dtype), mask)
    return im.clamp(0, 1), mask


# --------------------------------------------------------------------------- loss


class DiceBCELoss:
    """Soft Dice (smp) + binary cross-entropy over labelled pixels; ``IGNORE`` pixels excluded."""

    def __init__(self) -> None:
        import segmentation_models_pytorch as smp

        self.dice = smp.losses.DiceLoss("binary", from_logits=True, ignore_index=IGNORE)

    def __call__(self, logits, target):
        import torch.nn.functional as F

        keep = (target != IGNORE).float()
        t = target * keep
        bce = F.binary_cross_entropy_with_logits(logits, t, reduction="none")
        bce = (bce * keep).sum() / keep.sum().clamp_min(1.0)
        return bce + self.dice(logits, target)


# --------------------------------------------------------------------------- engine


def _lr_lambda(cfg: TrainConfig):
    def f(step: int) -> float:
        if step < cfg.warmup:
            return (step + 1) / cfg.warmup
        t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
        return 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

    return f


def _atomic_torch_save(obj, path: Path) -> None:
    import torch

    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def validate(model: LoadedModel, images: Sequence[np.ndarray], masks: Sequence[np.ndarray]) -> float:
    """Foreground IoU of ``model`` (threshold from its spec) over whole raw slices."""
    total = Counts(0, 0, 0, 0)
    for im, m in zip(images, masks, strict=True):
        m = np.asarray(m)
        pred = predict_slice(model, im) > model.spec.threshold
        total = total + counts(pred, m == 1, ignore=(m == IGNORE))
    return scores_from_counts(total).iou


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


@dataclass
class Volume:
    """One training volume: raw (Z, Y, X) ``images`` and ``masks`` (0 background, 1-254
    mitochondrion, 255 unlabelled), optional held-out ``val_images`` / ``val_masks``, and
    ``pixel_ratio``, the volume's pixel size over the model's (``ModelSpec.pixel_size_nm``):
    its slices reach the network resized by it, as :func:`inference.for_stack` does at
    inference, so volumes of different pixel sizes train one model."""

    images: Any
    masks: Any
    val_images: Any = None
    val_masks: Any = None
    pixel_ratio: float = 1.0
    name: str = ""


def _read_masks(vol: Volume, k: int, ignore_value) -> Volume:
    """``vol`` with its masks (and validation masks) read by :func:`training_masks`; validation
    images and masks must come together."""
    if (vol.val_images is None) != (vol.val_masks is None):
        raise TrainingError(f"{vol.name or f'volume {k + 1}'}: give validation images and masks "
                            "together, or neither")
    val = None if vol.val_masks is None else training_masks(vol.val_masks, ignore_value)
    return dataclasses.replace(vol, masks=training_masks(vol.masks, ignore_value), val_masks=val)


def iter_train(images, masks, *, val_images=None, val_masks=None, **kwargs) -> Iterator[TrainProgress]:
    """Train (or fine-tune from ``base``) on raw (Z, Y, X) images and masks, yielding progress.

    One volume; see :func:`iter_train_volumes` for the keywords and for several volumes.
    The generator's final value (``StopIteration.value``) is the trained :class:`LoadedModel`.
    """
    vol = Volume(images, masks, val_images, val_masks)
    return (yield from iter_train_volumes([vol], **kwargs))


def iter_train_volumes(
    volumes: Sequence[Volume],
    *,
    spec: ModelSpec | None = None,
    config: TrainConfig | None = None,
    base: str | os.PathLike | LoadedModel | None = None,
    out_dir: str | os.PathLike | None = None,
    resume: bool = False,
    max_seconds: float | None = None,
    device: str = "auto",
    info: dict | None = None,
    ignore_value: int | str | None = AUTO,
) -> Iterator[TrainProgress]:
    """Train (or fine-tune from ``base``) on one or more :class:`Volume`, yielding progress.

    Each volume is drawn from equally often, whatever its size. Validation IoU is the mean
    over the volumes that have validation slices (each volume's own IoU is in the history).
    Writes ``out_dir/checkpoint.pt`` every ``checkpoint_every`` steps, ``out_dir/best`` (the
    best model by validation IoU, or the last one without validation) and ``out_dir/last``.
    ``max_seconds`` pauses the run (checkpoint saved) so it can go on with ``resume=True``.
    The generator's final value (``StopIteration.value``) is the trained :class:`LoadedModel`.
    ``out_dir`` holding a run is refused unless ``resume`` (see :func:`check_run_dir`).
    Masks are read with ``ignore_value`` (see :func:`training_masks`); masks without any
    mitochondrion are refused when training from scratch.
    """
    import torch

    if not volumes:
        raise TrainingError("no training volume given")
    cfg = config or TrainConfig()
    if out_dir is not None:
        check_run_dir(out_dir, resume)
    volumes = [_read_masks(vol, k, ignore_value) for k, vol in enumerate(volumes)]
    _check_has_mitochondria([vol.masks for vol in volumes], base is None)
    dev = resolve_device(device)
    t_start = time.perf_counter()
    if base is not None:
        if isinstance(base, LoadedModel):  # e.g. a model set up for a stack (for_stack)
            based = dataclasses.replace(base, net=copy.deepcopy(base.net).cpu())
        else:
            based = load_model(base, device="cpu")
        spec = based.spec  # a spec passed with a base is ignored (see respec to change one)
        net = based.net.to(memory_format=torch.contiguous_format)
        base_info = {"base_model": based.name}
    else:
        spec = spec or ModelSpec()
        torch.manual_seed(cfg.seed)  # reproducible initial weights
        net = build_model(spec)
        base_info = {}
    ims, mks, ratios, vals, per_volume = [], [], [], [], []
    for k, vol in enumerate(volumes):
        name = vol.name or f"volume {k + 1}"
        if any(name == v[0] for v in vals):
            name = f"{name} #{k + 1}"
        v_ims, v_mks = prepare(vol.images, vol.masks)
        ims += v_ims
        mks += v_mks
        ratios += [float(vol.pixel_ratio)] * len(v_ims)
        per_volume.append(len(v_ims))
        if vol.val_images is not None:  # with its masks: _read_masks checked that
            vals.append((name, vol.pixel_ratio, _as_slices(vol.val_images, f"{name} validation image"),
                         _as_slices(vol.val_masks, f"{name} validation mask")))
    have_val = bool(vals)
    sampler = CropSampler(ims, mks, cfg, spec.input_scale, spec.invert, ratios=ratios,
                          weights=None if len(volumes) == 1 else volume_weights(mks, per_volume))
    net = net.to(dev)
    if dev.type == "cpu":
        net = net.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg))
    loss_fn = DiceBCELoss()
    step, best, history = 0, -1.0, []
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        ck = out / CHECKPOINT
        if resume and ck.exists():
            state = torch.load(ck, map_location=dev, weights_only=False)
            saved = {k: v for k, v in state["config"].items() if k != "steps"}
            now_cfg = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "steps"}
            # specs compare as specs: a field added since the checkpoint takes its default
            if saved != now_cfg or ModelSpec.from_dict(state["spec"]) != spec:
                raise TrainingError(
                    f"{ck} was written with other settings; resume with the same ones or "
                    "choose a new --out"
                )
            if state["config"]["steps"] != cfg.steps:
                if state["step"] >= cfg.steps:
                    raise TrainingError(f"{ck} is already at step {state['step']} >= {cfg.steps}")
                logger.warning("resuming with %d steps instead of %d: the schedule is re-spanned",
                               cfg.steps, state["config"]["steps"])
            net.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
            step, best, history = state["step"], state["best"], state["history"]
            sampler.hard = [np.asarray(h, np.int64) for h in state.get("hard", sampler.hard)]
            logger.info("resumed %s at step %d", ck, step)
        elif resume:
            logger.warning("nothing to resume in %s (no %s): starting at step 1", out, CHECKPOINT)
    wrapped = LoadedModel(net=net, spec=spec, name=out.name if out else "training")
    meta = {**(info or {}), **base_info}

    def snapshot(kind: str) -> None:
        if out is None:
            return
        elapsed = sum(h.get("seconds", 0) for h in history if "seconds" in h)
        save_model(
            net, spec, out / kind,
            info={**meta, "step": step, "steps": cfg.steps, "best_val_iou": best,
                  "train_config": dataclasses.asdict(cfg), "train_seconds": elapsed},
        )

    def checkpoint() -> None:
        if out is None:
            return
        with write_errors(out / CHECKPOINT):
            _checkpoint()

    def _checkpoint() -> None:
        _atomic_torch_save(
            {"model": net.state_dict(), "optimizer": opt.state_dict(),
             "scheduler": sched.state_dict(), "step": step, "best": best, "history": history,
             "config": dataclasses.asdict(cfg), "spec": spec.to_dict(),
             "hard": [h.astype(np.int32) for h in sampler.hard]},
            out / CHECKPOINT,
        )
        (out / HISTORY).write_text(json.dumps(history, indent=1))

    use_amp = dev.type == "cuda"
    threads_before = torch.get_num_threads()
    threads = spare_cpu_threads() if dev.type == "cpu" else None
    try:
        t_chunk = time.perf_counter()
        while step < cfg.steps:
            if cfg.hard_fraction > 0 and step > 0 and step % cfg.hard_every == 0:
                # a checkpoint holds the pool in use after its step, so a resumed run refreshes
                # exactly where an uninterrupted one does, from the same weights
                net.eval()
                n_hard = sampler.set_hard(wrapped)
                logger.info("step %d: %d hard pixels", step, n_hard)
            if threads is not None and step % 25 == 0:  # follow the machine's load as it changes
                threads = spare_cpu_threads(own=torch.get_num_threads()) or threads
                torch.set_num_threads(threads)
            net.train()
            x, y = sampler.sample(step)
            x, y = x.to(dev), y.to(dev)
            if dev.type == "cpu":
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(dev.type, enabled=use_amp, dtype=torch.bfloat16):
                logits = net(x)
            loss = loss_fn(logits.float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            now = time.perf_counter()
            rec = {"step": step, "loss": float(loss.detach()), "seconds": now - t_chunk,
                   "threads": torch.get_num_threads()}
            t_chunk = now
            val_iou = None
            last = step == cfg.steps
            if have_val and ((cfg.val_every and step % cfg.val_every == 0) or last):
                net.eval()
                by_volume = {name: validate(for_stack(wrapped, ratio), v_i, v_m)
                             for name, ratio, v_i, v_m in vals}
                val_iou = float(np.mean(list(by_volume.values())))
                rec["val_iou"] = val_iou
                if len(by_volume) > 1:
                    rec["val_iou_by_volume"] = by_volume
                if val_iou > best:
                    best = val_iou
                    snapshot("best")
            history.append(rec)
            if last or (cfg.checkpoint_every and step % cfg.checkpoint_every == 0):
                checkpoint()
            paused = max_seconds is not None and now - t_start > max_seconds and not last
            yield TrainProgress(step, cfg.steps, rec["loss"], now - t_start, val_iou,
                                best if best >= 0 else None, done=last, history=history)
            if paused:
                checkpoint()
                logger.info("paused at step %d of %d; continue with resume", step, cfg.steps)
                break
    finally:
        torch.set_num_threads(threads_before)
    net.eval()
    if step == cfg.steps:
        snapshot("last")
        if not have_val:
            snapshot("best")
    return wrapped


#: spec fields fixed by a network's weights; the rest may change when fine-tuning from a base
ARCHITECTURE_FIELDS = ("arch", "encoder", "encoder_depth", "decoder_channels", "in_channels")


def respec(base: ModelSpec, given: ModelSpec | dict) -> ModelSpec:
    """``base`` with the fields of ``given`` that differ from the defaults and are not fixed by
    the weights; raises :class:`TrainingError` for an architecture field that differs."""
    given_d = given if isinstance(given, dict) else {
        f.name: getattr(given, f.name) for f in dataclasses.fields(ModelSpec)
        if getattr(given, f.name) != getattr(ModelSpec(), f.name)}
    clash = [k for k in ARCHITECTURE_FIELDS if k in given_d and given_d[k] != getattr(base, k)]
    if clash:
        raise TrainingError(f"the base model's weights fix {', '.join(clash)}; leave them out of the spec")
    return dataclasses.replace(base, **given_d)


def train(images, masks, **kwargs) -> LoadedModel:
    """Run :func:`iter_train` to the end and return the trained model."""
    from ._generators import result_of

    return result_of(iter_train(images, masks, **kwargs))

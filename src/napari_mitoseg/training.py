"""Training and fine-tuning: one engine for the shipped model and for the user's corrections.

:func:`iter_train` is a generator yielding a :class:`TrainProgress` after every step (loss) and
after every validation (IoU), so the Fine-tune widget, the command line and scripts share it.
Runs are resumable: ``out_dir/checkpoint.pt`` holds model, optimiser, step and history, written
atomically; sampling and augmentation are seeded by (seed, step), so a resumed run continues
exactly as an uninterrupted one would.

Masks: 0 background, 1 (any value in 1..254) mitochondrion, :data:`IGNORE` (255) unlabelled,
left out of the loss, so a user may correct only part of a slice.
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

import numpy as np

from .inference import check_stack, normalise01, predict_slice
from .metrics import Counts, counts, scores_from_counts
from .model import LoadedModel, ModelSpec, build_model, load_model, resolve_device, save_model

logger = logging.getLogger(__name__)

IGNORE = 255
CHECKPOINT = "checkpoint.pt"
HISTORY = "history.json"


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
    augment : ``"full"`` (geometry, scale, intensity, gamma, blur, noise, elastic) or
        ``"basic"`` (flips, rotations, brightness: the naive baseline).
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
        if self.augment not in ("full", "basic"):
            raise TrainingError(f"augment must be 'full' or 'basic', got {self.augment!r}")
        if not (self.hard_fraction >= 0 and self.foreground_fraction >= 0
                and self.hard_fraction + self.foreground_fraction <= 1 and self.hard_every >= 1):
            raise TrainingError("hard_fraction and foreground_fraction must be >= 0 with a sum "
                                "<= 1, and hard_every >= 1")
        if self.steps < 1 or self.batch_size < 1 or self.tile % 32:
            raise TrainingError("steps and batch_size must be >= 1 and tile a multiple of 32")


#: Defaults for fine-tuning from a few corrected slices on a CPU: about 80 s on 2 cores with
#: the shipped model. Chosen on the validation block (``benchmarks/finetune_figures.py --data
#: val``): 300 steps at lr 1e-3 beat 150 at 3e-4 on a shifted stack (IoU 0.72 vs 0.54) and
#: matched it on the same microscope (0.77 vs 0.77).
FINETUNE = TrainConfig(
    steps=300, batch_size=4, lr=1e-3, warmup=10, val_every=0, checkpoint_every=50,
    foreground_fraction=0.5, hard_fraction=0.0,
)


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
    """Draws augmented (image, mask) crops; deterministic given (seed, step)."""

    def __init__(self, images: list[np.ndarray], masks: list[np.ndarray], cfg: TrainConfig,
                 input_scale: float = 1.0, invert: bool = False):
        import torch
        from torchvision.transforms import v2

        self.images, self.masks, self.cfg = images, masks, cfg
        self.input_scale, self.invert = input_scale, invert
        #: flat indices of wrongly predicted pixels per slice (see :meth:`set_hard`)
        self.hard: list[np.ndarray] = [np.zeros(0, np.int64) for _ in masks]
        labelled = np.array([float((m != IGNORE).sum()) for m in masks])
        self.p_slice = labelled / labelled.sum()
        self.fg = [np.flatnonzero(m.ravel() == 1) for m in masks]
        self.lab = [np.flatnonzero(m.ravel() != IGNORE) for m in masks]
        t = cfg.tile
        geo = [v2.Resize((t, t), antialias=True), v2.RandomHorizontalFlip(), v2.RandomVerticalFlip()]
        if cfg.augment == "full":
            self.geometry = v2.Compose(
                [*geo, v2.RandomApply([v2.ElasticTransform(alpha=25.0, sigma=6.0)], p=0.2)]
            )
            self.intensity = v2.Compose(
                [
                    v2.ColorJitter(brightness=0.35, contrast=0.45),
                    v2.RandomApply([v2.GaussianBlur(5, sigma=(0.3, 1.5))], p=0.3),
                    v2.RandomApply([v2.GaussianNoise(sigma=0.06, clip=True)], p=0.3),
                ]
            )
        else:
            self.geometry = v2.Compose(geo)
            self.intensity = v2.ColorJitter(brightness=0.2)
        self._torch = torch

    def set_hard(self, model: LoadedModel) -> int:
        """Refresh the hard-example pools from ``model``'s errors; returns their total size."""
        for i, (im, m) in enumerate(zip(self.images, self.masks, strict=True)):
            pred = predict_slice(model, im) > model.spec.threshold
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
            if cfg.augment == "full":
                lo, hi = np.log(cfg.scale_range[0]), np.log(cfg.scale_range[1])
                scale = float(np.exp(rng.uniform(lo, hi)))
            else:
                scale = 1.0
            c = int(round(cfg.tile / (scale * self.input_scale)))
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
            if cfg.augment == "full" and rng.random() < 0.3:
                im = F.adjust_gamma(im.clamp(0, 1), float(np.exp(rng.uniform(-0.4, 0.4))))
            xs.append(im.as_subclass(torch.Tensor).float() * 2.0 - 1.0)
            ys.append(mk.as_subclass(torch.Tensor).float())
        return torch.stack(xs), torch.stack(ys)


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


def iter_train(
    images,
    masks,
    *,
    spec: ModelSpec | None = None,
    config: TrainConfig | None = None,
    base: str | os.PathLike | LoadedModel | None = None,
    val_images=None,
    val_masks=None,
    out_dir: str | os.PathLike | None = None,
    resume: bool = False,
    max_seconds: float | None = None,
    device: str = "auto",
    info: dict | None = None,
) -> Iterator[TrainProgress]:
    """Train (or fine-tune from ``base``) on raw (Z, Y, X) images and masks, yielding progress.

    Writes ``out_dir/checkpoint.pt`` every ``checkpoint_every`` steps, ``out_dir/best`` (the
    best model by validation IoU, or the last one without validation) and ``out_dir/last``.
    ``max_seconds`` pauses the run (checkpoint saved) so it can go on with ``resume=True``.
    The generator's final value (``StopIteration.value``) is the trained :class:`LoadedModel`.
    """
    import torch

    cfg = config or TrainConfig()
    dev = resolve_device(device)
    t_start = time.perf_counter()
    if base is not None:
        if isinstance(base, LoadedModel):  # e.g. a model set up for a stack (for_stack)
            based = dataclasses.replace(base, net=copy.deepcopy(base.net).cpu())
        else:
            based = load_model(base, device="cpu")
        spec = based.spec
        net = based.net.to(memory_format=torch.contiguous_format)
        base_info = {"base_model": based.name}
    else:
        spec = spec or ModelSpec()
        torch.manual_seed(cfg.seed)  # reproducible initial weights
        net = build_model(spec)
        base_info = {}
    ims, mks = prepare(images, masks)
    have_val = val_images is not None and val_masks is not None
    if have_val:
        v_ims = _as_slices(val_images, "validation image")
        v_mks = _as_slices(val_masks, "validation mask")
    sampler = CropSampler(ims, mks, cfg, spec.input_scale, spec.invert)
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
            logger.info("nothing to resume in %s; starting afresh", out)
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
        _atomic_torch_save(
            {"model": net.state_dict(), "optimizer": opt.state_dict(),
             "scheduler": sched.state_dict(), "step": step, "best": best, "history": history,
             "config": dataclasses.asdict(cfg), "spec": spec.to_dict(),
             "hard": [h.astype(np.int32) for h in sampler.hard]},
            out / CHECKPOINT,
        )
        (out / HISTORY).write_text(json.dumps(history, indent=1))

    use_amp = dev.type == "cuda"
    t_chunk = time.perf_counter()
    while step < cfg.steps:
        if cfg.hard_fraction > 0 and step > 0 and step % cfg.hard_every == 0:
            # a checkpoint holds the pool in use after its step, so a resumed run refreshes
            # exactly where an uninterrupted one does, from the same weights
            net.eval()
            n_hard = sampler.set_hard(wrapped)
            logger.info("step %d: %d hard pixels", step, n_hard)
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
        rec = {"step": step, "loss": float(loss.detach()), "seconds": now - t_chunk}
        t_chunk = now
        val_iou = None
        last = step == cfg.steps
        if have_val and ((cfg.val_every and step % cfg.val_every == 0) or last):
            net.eval()
            val_iou = validate(wrapped, v_ims, v_mks)
            rec["val_iou"] = val_iou
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
    net.eval()
    if step == cfg.steps:
        snapshot("last")
        if not have_val:
            snapshot("best")
    return wrapped


def train(images, masks, **kwargs) -> LoadedModel:
    """Run :func:`iter_train` to the end and return the trained model."""
    gen = iter_train(images, masks, **kwargs)
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            return stop.value

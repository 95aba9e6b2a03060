"""Training settings and the values every part of training shares: the configuration, its
fine-tuning defaults, the progress report and the error for unusable data or settings."""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass, field

from ..model import ModelSpec

IGNORE = 255
#: the augmentation recipes of :class:`TrainConfig`
AUGMENTS = ("full", "strong", "basic")
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
        _check_int("steps", self.steps, 1)
        _check_int("batch_size", self.batch_size, 1)
        _check_int("tile", self.tile, 32)
        if self.tile % 32:
            raise TrainingError(f"tile must be a multiple of 32 (32, 64, ... 256), got {self.tile}")
        for name in ("warmup", "val_every", "checkpoint_every"):
            _check_int(name, getattr(self, name), 0)
        _check_int("hard_every", self.hard_every, 1)
        _check_int("seed", self.seed, 0, MAX_SEED)
        _check_number("lr", self.lr, 0.0, MAX_LR, low_open=True)
        _check_number("weight_decay", self.weight_decay, 0.0, 1.0)
        _check_number("foreground_fraction", self.foreground_fraction, 0.0, 1.0)
        _check_number("hard_fraction", self.hard_fraction, 0.0, 1.0)
        if self.hard_fraction + self.foreground_fraction > 1:
            raise TrainingError("hard_fraction and foreground_fraction must add up to at most 1, got "
                                f"{self.hard_fraction} + {self.foreground_fraction}")
        sr = self.scale_range
        if (not isinstance(sr, (list, tuple)) or len(sr) != 2
                or not all(_is_number(v) and math.isfinite(v) and v > 0 for v in sr) or sr[0] > sr[1]):
            raise TrainingError(f"scale_range must be two numbers LOW, HIGH with 0 < LOW <= HIGH "
                                f"(e.g. [0.5, 2.0]), got {sr!r}")


#: the largest learning rate taken: AdamW steps of this size already destroy a network
MAX_LR = 1.0
#: the largest seed: (seed, step) seeds torch's generator, which takes 64-bit numbers
MAX_SEED = 2**32 - 1


def _is_number(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _check_int(name: str, v, low: int, high: int | None = None) -> None:
    if not (isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= low
            and (high is None or v <= high)):
        bound = f">= {low}" if high is None else f"from {low} to {high}"
        raise TrainingError(f"{name} must be a whole number {bound}, got {v!r}")


def _check_number(name: str, v, low: float, high: float, low_open: bool = False) -> None:
    if not (_is_number(v) and math.isfinite(v) and (v > low if low_open else v >= low) and v <= high):
        raise TrainingError(f"{name} must be a number {'above' if low_open else 'from'} {low:g} "
                            f"{'and at most' if low_open else 'to'} {high:g}, got {v!r}")


def check_val_fraction(fraction) -> float:
    """``fraction`` of the slices to hold out for validation, checked: a number from 0 (none)
    up to, not including, 1."""
    if not (_is_number(fraction) and 0 <= fraction < 1):
        raise TrainingError(f"the validation fraction must be a number from 0 (none) up to, not "
                            f"including, 1 (e.g. 0.2), got {fraction!r}")
    return float(fraction)


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

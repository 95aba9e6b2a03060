"""Training settings and the values every part of training shares: the configuration, its
fine-tuning defaults, the progress report and the error for unusable data or settings."""

from __future__ import annotations

import dataclasses
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

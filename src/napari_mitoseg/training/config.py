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
#: ``bn`` of :class:`TrainConfig`: what batch normalisation does while training
BN_MODES = ("train", "frozen", "stack")
#: ``loss`` of :class:`TrainConfig`
LOSSES = ("dice_bce", "lovasz_bce")
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
    loss : ``"dice_bce"`` (soft Dice + binary cross-entropy) or ``"lovasz_bce"`` (the Lovasz
        hinge, a surrogate of the IoU, + binary cross-entropy).

    Adapting a trained model to a new stack from a few labelled slices (fine-tuning; each off
    by default, see :data:`FINETUNE` for what was chosen):

    bn : ``"train"`` (batch norm learns from each batch, as when training from scratch),
        ``"frozen"`` (batch-norm layers keep the base model's running statistics; their scale
        and shift still learn) or ``"stack"`` (AdaBN: the running statistics are first
        re-estimated on the stack's slices, the labelled ones and up to ``stack_slices``
        unlabelled ones, then kept).
    encoder_lr : the encoder's learning rate as a share of ``lr``; 0 freezes the encoder
        (weights and batch-norm statistics fixed, no gradients: cheaper steps).
    pseudo_fraction : self-training: share of crops drawn from up to ``stack_slices``
        unlabelled slices of the stack, labelled where the model is confident (probability
        above ``pseudo_confidence``: mitochondrion; below ``1 - pseudo_confidence``:
        background; between: unlabelled). 0 turns it off.
    pseudo_after : share of the steps run before those slices are labelled, by the model as it
        is then (0: the base model labels them before the first step).
    stack_slices : at most this many unlabelled slices, spread over the stack, for ``bn =
        "stack"`` and self-training. The fine-tune widget and :func:`api.iter_finetune` give the
        stack's uncorrected slices; ``mitoseg train`` gives none (AdaBN then sees the labelled
        slices only, and self-training is skipped with a note).
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
    loss: str = "dice_bce"
    bn: str = "train"
    encoder_lr: float = 1.0
    pseudo_fraction: float = 0.0
    pseudo_confidence: float = 0.9
    pseudo_after: float = 0.0
    stack_slices: int = 8

    def __post_init__(self) -> None:
        if self.augment not in AUGMENTS:
            raise TrainingError(f"augment must be one of {', '.join(AUGMENTS)}, got {self.augment!r}")
        if self.loss not in LOSSES:
            raise TrainingError(f"loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
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
        self._check_adaptation()
        sr = self.scale_range
        if (not isinstance(sr, (list, tuple)) or len(sr) != 2
                or not all(_is_number(v) and math.isfinite(v) and v > 0 for v in sr) or sr[0] > sr[1]):
            raise TrainingError(f"scale_range must be two numbers LOW, HIGH with 0 < LOW <= HIGH "
                                f"(e.g. [0.5, 2.0]), got {sr!r}")


    def _check_adaptation(self) -> None:
        if self.bn not in BN_MODES:
            raise TrainingError(f"bn must be one of {', '.join(BN_MODES)}, got {self.bn!r}")
        _check_number("encoder_lr", self.encoder_lr, 0.0, 1.0)
        _check_number("pseudo_fraction", self.pseudo_fraction, 0.0, 0.9)
        _check_number("pseudo_confidence", self.pseudo_confidence, 0.5, 1.0, low_open=True)
        if self.pseudo_confidence == 1.0:
            raise TrainingError("pseudo_confidence must be below 1 (e.g. 0.9): no probability lies above 1")
        _check_number("pseudo_after", self.pseudo_after, 0.0, 1.0)
        if self.pseudo_after == 1.0:
            raise TrainingError("pseudo_after must be below 1: at 1 no step would learn from the labelled slices")
        _check_int("stack_slices", self.stack_slices, 1)

    @property
    def uses_stack(self) -> bool:
        """Whether training uses the stack's unlabelled slices (AdaBN or self-training)."""
        return self.bn == "stack" or self.pseudo_fraction > 0

    @property
    def pseudo_step(self) -> int:
        """The step before which the unlabelled slices are labelled (self-training)."""
        return int(round(self.pseudo_after * self.steps))


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
#: 150 steps of lr 2e-3. 240 steps, for a minute's run, were then checked against 300 with two
#: seeds each: 0.781 / 0.9235 against 0.783 / 0.9252 (means), within what the seeds differ by,
#: so 240 is the default. See :data:`FINETUNE_SECONDS` for the time. The adaptation options
#: (``bn`` "frozen" / "stack", ``encoder_lr`` 0, self-training, ``augment`` "basic") were tried
#: on the same blocks and none beat these defaults on both volumes (docs/benchmarks.md,
#: "Raising the fine-tune ceiling"): they stay off.
FINETUNE = TrainConfig(
    steps=240, batch_size=4, lr=1e-3, warmup=10, val_every=0, checkpoint_every=50,
    foreground_fraction=0.5, hard_fraction=0.0,
)
#: Wall time of :data:`FINETUNE` on 2 corrected 1024 x 1024 slices with the shipped model, on
#: the 2 idle CPU cores of the reference machine (AMD EPYC), where 300 steps took 72-75 s
#: (``benchmarks/finetune_figures.py --data test``; 0.24 s a step, scoring the corrected slices
#: about 1 s): 240 steps there take 0.8 of that. Machines differ several-fold (a 2-core Xeon
#: takes 1.7-3x as long); the Fine-tune widget shows the figure it measured on its own machine once
#: a fine-tune has finished there.
FINETUNE_SECONDS = 60


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

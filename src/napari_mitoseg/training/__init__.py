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

One module per idea: :mod:`.config` (settings, progress, errors), :mod:`.volumes` (masks,
training pairs, validation split), :mod:`.augment` (transforms and microscope artefacts),
:mod:`.sampling` (which crops a step sees), :mod:`.regions` (the checked part of a slice),
:mod:`.adapt` (adapting a model to a new stack: frozen layers, AdaBN, self-training's weak
labels), :mod:`.loss`, :mod:`.checkpoints` (the run folder, its checkpoint and lock), :mod:`.threads`
(CPU threads as the load changes) and :mod:`.engine` (the loop).
"""

from .augment import em_artefacts
from .checkpoints import CHECKPOINT, HISTORY, RUN_FILES, check_run_dir
from .config import (
    ARCHITECTURE_FIELDS,
    AUGMENTS,
    AUTO,
    FINETUNE,
    FINETUNE_SECONDS,
    IGNORE,
    LOSSES,
    NOTE,
    TrainConfig,
    TrainingError,
    TrainProgress,
    check_val_fraction,
    respec,
)
from .engine import iter_train, iter_train_volumes, train, validate
from .loss import DiceBCELoss, LovaszBCELoss, make_loss
from .regions import (
    checked_regions,
    checked_shares,
    checked_training_masks,
    describe_shares,
    mask_unchecked,
    overall_share,
)
from .sampling import CropSampler
from .threads import ThreadChoice, check_thread_setting
from .volumes import Volume, ortho_planes, prepare, split_validation, training_masks, volume_weights

__all__ = [
    "ARCHITECTURE_FIELDS", "AUGMENTS", "AUTO", "CHECKPOINT", "FINETUNE", "FINETUNE_SECONDS", "HISTORY",
    "IGNORE", "LOSSES", "NOTE", "RUN_FILES", "CropSampler", "DiceBCELoss", "LovaszBCELoss", "TrainConfig",
    "TrainProgress",
    "ThreadChoice", "TrainingError", "Volume", "check_run_dir", "check_thread_setting",
    "check_val_fraction", "checked_regions", "checked_shares", "checked_training_masks",
    "describe_shares", "em_artefacts", "iter_train", "iter_train_volumes", "make_loss", "mask_unchecked",
    "ortho_planes", "overall_share",
    "prepare", "respec", "split_validation", "train", "training_masks", "validate", "volume_weights",
]

"""What every part of a cluster run shares: its error, its progress and result records, the
plan of blocks and the names of the bookkeeping files in the partial output."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

#: slices per block unless told (see docs/benchmarks.md for the choice)
DEFAULT_BLOCK_SLICES = 16
RUN_FILE = ".mitoseg-run.json"
DONE_DIR = ".mitoseg-done"
MASK_ARRAY = "mask"  # the binary mask, kept in the partial output while instances are made
LABEL_TMP_ARRAY = "blocklabels"


class DistributedError(ValueError):
    """A distributed run cannot go ahead as asked; the message says why."""


@dataclass(frozen=True)
class Progress:
    """Where a run stands. ``stage``: ``segment`` (blocks of slices), ``instances`` (3D
    connected components) or ``pyramid`` (the coarser levels)."""

    stage: str
    done: int
    total: int
    skipped: int  # blocks already finished by an earlier, interrupted run
    seconds: float
    dashboard: str | None = None

    @property
    def rate(self) -> float:
        """Blocks per second segmented by this run (0 before the first)."""
        run = self.done - self.skipped
        return run / self.seconds if run > 0 and self.seconds > 0 else 0.0

    @property
    def eta(self) -> float | None:
        """Seconds left at the current rate (None before the first block)."""
        return (self.total - self.done) / self.rate if self.rate > 0 else None


@dataclass(frozen=True)
class DistributedResult:
    out: Path
    shape: tuple[int, int, int]
    model_name: str
    blocks: int
    resumed: int  # blocks skipped because an earlier run had finished them
    objects: int | None  # instances only
    measurements: list | None  # instances only: morphology.MitoMeasure per object
    voxel_size: object  # ngff.VoxelSize of the input in nm (1, 1, 1 without unit when unknown)
    pixel_ratio: float = 1.0
    note: str | None = None  # where the pixel ratio came from, if anywhere (and what was guessed)
    invert: bool = False  # whether the contrast was taken as reversed (given, or guessed)


def plan_blocks(z: int, block_slices: int) -> list[tuple[int, int]]:
    """(start, stop) of consecutive blocks of at most ``block_slices`` slices covering ``z``."""
    if block_slices < 1:
        raise DistributedError(f"blocks must hold at least one slice, got {block_slices}")
    return [(s, min(z, s + block_slices)) for s in range(0, z, block_slices)]


def partial_path(out: str | os.PathLike) -> Path:
    """Where the output of ``out`` is built until it is complete."""
    out = Path(out)
    return out.with_name(f".{out.name}.partial")

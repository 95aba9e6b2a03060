"""The time a fine-tuning run is expected to take on this stack and this machine, from the
figure measured for the defaults (:data:`training.FINETUNE_SECONDS`)."""

from __future__ import annotations

import os

#: share of the measured time spent in the optimiser steps; the rest scores the corrected
#: slices before and after (it grows with their number and area)
STEP_SHARE = 0.85
#: the measurement's corrected slices: two of about 1024 x 1024 pixels
MEASURED_SLICES, MEASURED_AREA = 2, 1024 * 1024
#: the measurement's CPU threads (2 idle cores)
MEASURED_THREADS = 2
#: speed-up from n threads is about n ** THREAD_EXPONENT (torch's threads share each layer)
THREAD_EXPONENT = 0.7


def cpu_threads() -> int:
    """The CPU threads torch will use for a run started now: ``MITOSEG_THREADS`` or
    ``OMP_NUM_THREADS`` when set, else the cores the load leaves free
    (:func:`model.spare_cpu_threads`)."""
    from ..model import spare_cpu_threads

    spare = spare_cpu_threads()
    if spare is not None:
        return spare
    try:
        return max(1, int(os.environ.get("OMP_NUM_THREADS", "1")))
    except ValueError:
        return 1


def crowding(load: float | None = None, cores: int | None = None) -> float:
    """How many times slower than on an idle machine a run is now: the 1-minute load per core
    when it is above one (other processes then share even the one thread left), else 1."""
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if load is None:
        try:
            load = os.getloadavg()[0]
        except OSError:
            return 1.0
    return max(1.0, load / max(1, cores))


def expected_seconds(config, n_slices: int, slice_area: int, threads: int, crowded: float = 1.0) -> float:
    """Seconds a fine-tuning run with ``config`` (a ``TrainConfig``) on ``n_slices`` corrected
    slices of ``slice_area`` pixels should take on ``threads`` CPU threads, ``crowded`` times
    slower for the other work on the machine (:func:`crowding`)."""
    from ..training import FINETUNE, FINETUNE_SECONDS

    work = (config.steps * config.batch_size * config.tile ** 2) / (
        FINETUNE.steps * FINETUNE.batch_size * FINETUNE.tile ** 2)
    scoring = (max(1, n_slices) * max(1, slice_area)) / (MEASURED_SLICES * MEASURED_AREA)
    speed = (max(1, threads) / MEASURED_THREADS) ** THREAD_EXPONENT
    return FINETUNE_SECONDS * (STEP_SHARE * work + (1 - STEP_SHARE) * scoring) / speed * crowded

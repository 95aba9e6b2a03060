"""The time a fine-tuning run is expected to take on this stack and this machine: from the last
run that finished on this machine with the same network (:func:`remember`, a small JSON in
the user's cache folder), else from the figure measured for the defaults
(:data:`training.FINETUNE_SECONDS`), scaled to the run's work, threads and load."""

from __future__ import annotations

import json
import logging
import os
import platform
from pathlib import Path

logger = logging.getLogger(__name__)

#: share of the measured time spent in the optimiser steps; the rest scores the corrected
#: slices before and after (it grows with their number and area). Measured 0.99 for the defaults
#: on 2 corrected slices (``benchmarks/finetune_figures.py``, training 195.5 of 196.9 s on SBEM's
#: 1024 x 1024 slices and 207.4 of 208.5 s on Lucchi++'s, 2-core Xeon): more corrected slices
#: add little time, the steps being fixed
STEP_SHARE = 0.99
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


def expected_seconds(config, n_slices: int, slice_area: int, threads: int, crowded: float = 1.0,
                     model: str | None = None) -> float:
    """Seconds a fine-tuning run with ``config`` (a ``TrainConfig``) on ``n_slices`` corrected
    slices of ``slice_area`` pixels should take on ``threads`` CPU threads, ``crowded`` times
    slower for the other work on the machine (:func:`crowding`), from :func:`base_seconds`."""
    return base_seconds(model)[0] * _relative(config, n_slices, slice_area, threads, crowded)


def _relative(config, n_slices: int, slice_area: int, threads: int, crowded: float) -> float:
    """A run's time as a multiple of the defaults' run on 2 corrected 1024 x 1024 slices and 2
    idle threads."""
    from ..training import FINETUNE

    work = (config.steps * config.batch_size * config.tile ** 2) / (
        FINETUNE.steps * FINETUNE.batch_size * FINETUNE.tile ** 2)
    scoring = (max(1, n_slices) * max(1, slice_area)) / (MEASURED_SLICES * MEASURED_AREA)
    speed = (max(1, threads) / MEASURED_THREADS) ** THREAD_EXPONENT
    return (STEP_SHARE * work + (1 - STEP_SHARE) * scoring) / speed * max(1.0, crowded)


def speed_file() -> Path:
    """The JSON of the fine-tunes measured here: ``MITOSEG_CACHE_DIR`` or the user's cache
    folder (``XDG_CACHE_HOME``, else ``~/.cache``), ``napari-mitoseg/finetune_speed.json``."""
    root = os.environ.get("MITOSEG_CACHE_DIR")
    if not root:
        root = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "napari-mitoseg")
    return Path(root) / "finetune_speed.json"


def network_key(model_folder) -> str | None:
    """What a fine-tune's speed depends on in a model (a folder): its network (architecture,
    encoder, decoder widths, depth) and working resolution, alike for a base model and the
    models fine-tuned from it; None when its config cannot be read."""
    from ..model import ModelError, read_config

    try:
        spec, _ = read_config(model_folder)
    except (ModelError, OSError):
        return None
    return (f"{spec.arch}/{spec.encoder}/depth {spec.encoder_depth}/decoder "
            f"{'-'.join(str(c) for c in spec.decoder_channels)}/scale {spec.input_scale:g}")


def _key(model: str | None) -> str:
    # the machine's name: a home folder shared by a cluster's nodes keeps one figure per node
    return f"{model}@{platform.node()}"


def _records() -> dict:
    try:
        data = json.loads(speed_file().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def base_seconds(model: str | None = None) -> tuple[float, bool]:
    """(seconds, measured here): what the defaults' run (2 corrected 1024 x 1024 slices, 2 idle
    threads) takes with a base model of network ``model`` (:func:`network_key`) on this
    machine, as the last run finished here says, else
    :data:`training.FINETUNE_SECONDS` (the reference machine's figure) and False."""
    from ..training import FINETUNE_SECONDS

    rec = _records().get(_key(model)) if model else None
    try:
        seconds = float(rec["seconds"]) if isinstance(rec, dict) else None
    except (KeyError, TypeError, ValueError):
        seconds = None
    if seconds is not None and 0 < seconds < 1e6:
        return seconds, True
    return float(FINETUNE_SECONDS), False


def remember(model: str, config, n_slices: int, slice_area: int, threads: int, crowded: float,
             seconds: float) -> None:
    """Record that a run finished here in ``seconds`` (its work, threads and load as for
    :func:`expected_seconds`), so the next estimate for a base model of network ``model``
    (:func:`network_key`) is this machine's. A
    cache that cannot be written is skipped (the estimate falls back on the reference figure)."""
    from .._atomic import atomic_file

    base = seconds / _relative(config, n_slices, slice_area, threads, crowded)
    data = _records()
    data[_key(model)] = {"seconds": round(base, 1), "threads": threads, "crowded": round(crowded, 2)}
    try:
        atomic_file(speed_file(), lambda tmp: Path(tmp).write_text(json.dumps(data, indent=1)))
    except (OSError, ValueError) as exc:  # WriteError is a ValueError
        logger.info("fine-tune time not recorded in %s: %s", speed_file(), exc)

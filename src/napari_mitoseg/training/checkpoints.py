"""What a training run keeps in its folder: ``checkpoint.pt`` (model, optimiser, step and
history, to go on with a paused run), ``history.json`` and the ``best`` and ``last`` models;
every file written atomically."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import tempfile
from pathlib import Path

from ..io import write_errors
from ..model import ModelSpec, save_model
from .config import TrainConfig, TrainingError

logger = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
HISTORY = "history.json"
#: what a training run writes into its folder
RUN_FILES = ("best", "last", CHECKPOINT, HISTORY)


def check_run_dir(out: str | os.PathLike, resume: bool, inputs=()) -> Path:
    """Raise unless ``out`` can take a training run: a folder (new, or holding a run to go on
    with when ``resume``), writable, and no input among the files a run writes there.

    A finished or paused run is never overwritten: without ``resume`` a folder that holds one
    is refused.
    """
    from ..io import as_path, check_not_input, check_writable_dir

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


def write_checkpoint(out: Path, state: dict) -> None:
    """Write ``state`` (model, optimizer, scheduler, step, best, history, config, spec, hard)
    to ``out/checkpoint.pt`` and its history to ``out/history.json``."""
    with write_errors(out / CHECKPOINT):
        _atomic_torch_save(state, out / CHECKPOINT)
        (out / HISTORY).write_text(json.dumps(state["history"], indent=1))


def read_checkpoint(out: Path, cfg: TrainConfig, spec: ModelSpec, device) -> dict | None:
    """The state in ``out/checkpoint.pt`` to go on with (None when there is none), checked to
    come from a run with the same settings; a run may go on with more steps than it had."""
    import torch

    ck = out / CHECKPOINT
    if not ck.exists():
        logger.warning("nothing to resume in %s (no %s): starting at step 1", out, CHECKPOINT)
        return None
    state = torch.load(ck, map_location=device, weights_only=False)
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
    return state


def save_run_model(out: Path, kind: str, net, spec: ModelSpec, info: dict, cfg: TrainConfig,
                   history: list[dict]) -> None:
    """Save ``net`` as ``out/<kind>`` (``best`` or ``last``), its card recording ``info``, the
    settings and the training time so far."""
    elapsed = sum(h.get("seconds", 0) for h in history if "seconds" in h)
    save_model(net, spec, out / kind,
               info={**info, "train_config": dataclasses.asdict(cfg), "train_seconds": elapsed})

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
    if out.is_dir():
        check_unlocked(out)
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


def _atomic_text(text: str, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        Path(tmp).write_text(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_checkpoint(out: Path, state: dict) -> None:
    """Write ``state`` (model, optimizer, scheduler, step, best, history, config, spec, hard)
    to ``out/checkpoint.pt`` and its history to ``out/history.json``."""
    with write_errors(out / CHECKPOINT):
        _atomic_torch_save(state, out / CHECKPOINT)
        _atomic_text(json.dumps(state["history"], indent=1), out / HISTORY)


def read_checkpoint(out: Path, cfg: TrainConfig, spec: ModelSpec, device) -> dict | None:
    """The state in ``out/checkpoint.pt`` to go on with (None when there is none), checked to
    come from a run with the same settings; a run may go on with more steps than it had."""
    import torch

    ck = out / CHECKPOINT
    if not ck.exists():
        logger.warning("nothing to resume in %s (no %s): starting at step 1", out, CHECKPOINT)
        return None
    try:
        state = torch.load(ck, map_location=device, weights_only=False)
        missing = sorted(set(_STATE_KEYS) - set(state))
        saved = {k: v for k, v in state["config"].items() if k != "steps"}
    except Exception as exc:  # truncated, not a checkpoint, or from another program
        raise _damaged(ck, type(exc).__name__) from exc
    if missing:
        raise _damaged(ck, f"no {', '.join(missing)}")
    # JSON's view of both: a tuple and a list of the same numbers are the same setting
    # settings added since the checkpoint was written take their defaults
    saved = json.loads(json.dumps({**dataclasses.asdict(TrainConfig()), **saved}))
    saved.pop("steps", None)
    now_cfg = json.loads(json.dumps({k: v for k, v in dataclasses.asdict(cfg).items() if k != "steps"}))
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


#: what a checkpoint holds
_STATE_KEYS = ("model", "optimizer", "scheduler", "step", "best", "history", "config", "spec")


def _damaged(ck: Path, why: str) -> TrainingError:
    return TrainingError(f"{ck} is damaged and cannot be resumed ({why}); to start over, run without "
                         f"--resume into a fresh --out folder (or delete {ck.parent})")


def save_run_model(out: Path, kind: str, net, spec: ModelSpec, info: dict, cfg: TrainConfig,
                   history: list[dict]) -> None:
    """Save ``net`` as ``out/<kind>`` (``best`` or ``last``), its card recording ``info``, the
    settings and the training time so far."""
    elapsed = sum(h.get("seconds", 0) for h in history if "seconds" in h)
    save_model(net, spec, out / kind,
               info={**info, "train_config": dataclasses.asdict(cfg), "train_seconds": elapsed})


#: the lock a running training holds on its folder: the process id and host
LOCK = ".training.lock"


def _lock_holder(out: Path) -> str | None:
    """Who holds ``out``'s lock ("pid N on HOST"), or None when nobody does: no lock, or the
    lock of a process of this host that no longer runs (a stale lock, removed)."""
    import socket

    lock = out / LOCK
    try:
        pid_s, _, host = lock.read_text().partition(" ")
        pid = int(pid_s)
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return f"an unknown process (remove {lock} if no training runs there)"
    if host.strip() == socket.gethostname() and not _alive(pid):
        logger.info("removing the stale lock %s of process %d, which no longer runs", lock, pid)
        lock.unlink(missing_ok=True)
        return None
    return f"process {pid} on {host.strip() or 'this machine'}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def check_unlocked(out: Path) -> None:
    """:class:`TrainingError` when another training is writing into ``out``."""
    holder = _lock_holder(out)
    if holder is not None:
        raise TrainingError(f"another training ({holder}) is writing into {out}; wait for it to end "
                            "or choose another --out folder")


def lock_run_dir(out: Path) -> Path:
    """Take ``out``'s lock (created atomically: of two trainings started into one folder at
    once, the second is refused); returns the lock file, to remove with :func:`unlock`."""
    import socket

    out.mkdir(parents=True, exist_ok=True)
    lock = out / LOCK
    for _ in range(2):  # a second try after removing a stale lock
        check_unlocked(out)
        try:
            fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            continue
        try:
            with write_errors(lock), os.fdopen(fd, "w") as f:
                f.write(f"{os.getpid()} {socket.gethostname()}")
        except BaseException:
            lock.unlink(missing_ok=True)
            raise
        return lock
    check_unlocked(out)
    raise TrainingError(f"cannot lock {out} for training; remove {lock} if no training runs there")


def unlock(lock: Path) -> None:
    lock.unlink(missing_ok=True)

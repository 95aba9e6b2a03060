"""The partial output: ``.<name>.partial`` beside ``out``, where a run builds its result. It
records the run's settings (:data:`~.common.RUN_FILE`) and a marker per finished block
(:data:`~.common.DONE_DIR`), so the same command run again skips those blocks; it becomes
``out`` only once everything is written. A lock file beside it (:func:`output_lock`) keeps a
second run off the same output while one writes it."""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from .common import DONE_DIR, LABEL_TMP_ARRAY, MASK_ARRAY, RUN_FILE, DistributedError, partial_path


def signature(**kw) -> dict:
    """The run's settings as they read back from :data:`RUN_FILE` (JSON types only)."""
    return json.loads(json.dumps(kw, default=str))


def read_run_file(partial: Path) -> dict:
    """The settings of the unfinished run in ``partial``; :class:`DistributedError` saying how to
    start over when they cannot be read (a cut-short or edited file, a folder not ours)."""
    run_file = partial / RUN_FILE
    try:
        sig = json.loads(run_file.read_text())
        if not isinstance(sig, dict) or not (partial / DONE_DIR).is_dir():
            raise ValueError("not a record of a run")
    except (OSError, ValueError) as exc:
        why = "is missing" if not run_file.exists() else f"cannot be read ({exc})"
        raise DistributedError(f"{run_file} {why}, so the unfinished run in {partial} cannot be resumed: "
                               f"delete {partial} to start over") from None
    return sig


def open_partial(partial: Path, sig: dict, shape, instances: bool, voxel) -> int:
    """Create the partial output, or check that the one there belongs to the same run.
    Returns how many blocks it holds already."""
    from .. import ngff

    if partial.exists():
        if read_run_file(partial) != sig:
            raise DistributedError(
                f"{partial} holds an unfinished run with other settings (stack, model, options or "
                "block size); run that command again to finish it, or delete the folder to start over")
        return len(list((partial / DONE_DIR).iterdir()))
    tmp = partial.with_name(partial.name + f".{uuid.uuid4().hex[:8]}")
    try:
        group = ngff.create_label_pyramid(tmp, shape, np.int32 if instances else np.uint8, voxel)
        if instances:
            ngff._create_array(group, MASK_ARRAY, shape, np.uint8)
        (tmp / DONE_DIR).mkdir()
        (tmp / RUN_FILE).write_text(json.dumps(sig, indent=1))
        os.replace(tmp, partial)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return 0


def finished_blocks(partial: Path) -> set[tuple[int, int]]:
    """(start, stop) of the blocks the partial output holds already."""
    return {tuple(int(v) for v in f.name.split("-")) for f in (partial / DONE_DIR).iterdir() if "-" in f.name}


def finish(partial: Path, out: Path) -> None:
    """Drop the run's bookkeeping from ``partial`` and swap it in as ``out`` (an older ``out``
    is replaced only now, when the new one is complete)."""
    import zarr

    from ..io import swap_dir

    group = zarr.open_group(str(partial), mode="r+")
    for name in (MASK_ARRAY, LABEL_TMP_ARRAY):
        if name in group:
            del group[name]
    shutil.rmtree(partial / DONE_DIR)
    (partial / RUN_FILE).unlink()
    swap_dir(partial, out)


def lock_path(partial: Path) -> Path:
    """The lock file of the partial output ``partial`` (beside it)."""
    return partial.with_name(partial.name + ".lock")


def _alive(holder: dict) -> bool:
    """Whether the process that wrote ``holder`` may still run (always True on another host)."""
    if holder.get("host") != socket.gethostname():
        return True
    try:
        os.kill(int(holder.get("pid", 0)), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, OverflowError):
        return True
    return True


@contextmanager
def output_lock(out: str | os.PathLike):
    """Hold the lock of ``out``'s partial output while a run writes it, so that a second run on
    the same output is refused up front (:class:`DistributedError` naming the holder). A lock
    left by a process that no longer runs on this host is taken over."""
    path = lock_path(partial_path(out))
    path.parent.mkdir(parents=True, exist_ok=True)
    me = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                holder = json.loads(path.read_text())
            except (OSError, ValueError):
                holder = {}  # being written just now, or unreadable: treated as held
            if holder and not _alive(holder):
                path.unlink(missing_ok=True)  # its run was killed: the lock is stale
                continue
            who = (f"process {holder.get('pid')} on {holder.get('host')}, since {holder.get('since')}"
                   if holder else "unknown holder")
            raise DistributedError(f"another run is writing {out} ({who}): wait for it to end; if no "
                                   f"run is going on, delete {path}") from None
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        break
    else:
        raise DistributedError(f"cannot take the lock {path}; delete it if no run is going on")
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)

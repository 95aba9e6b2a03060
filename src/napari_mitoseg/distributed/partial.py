"""The partial output: ``.<name>.partial`` beside ``out``, where a run builds its result. It
records the run's settings (:data:`~.common.RUN_FILE`) and a marker per finished block
(:data:`~.common.DONE_DIR`), so the same command run again skips those blocks; it becomes
``out`` only once everything is written."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

import numpy as np

from .common import DONE_DIR, LABEL_TMP_ARRAY, MASK_ARRAY, RUN_FILE, DistributedError


def signature(**kw) -> dict:
    """The run's settings as they read back from :data:`RUN_FILE` (JSON types only)."""
    return json.loads(json.dumps(kw, default=str))


def open_partial(partial: Path, sig: dict, shape, instances: bool, voxel) -> int:
    """Create the partial output, or check that the one there belongs to the same run.
    Returns how many blocks it holds already."""
    from .. import ngff

    run_file = partial / RUN_FILE
    if partial.exists():
        old = json.loads(run_file.read_text()) if run_file.exists() else None
        if old != sig:
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

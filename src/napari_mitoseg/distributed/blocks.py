"""The worker's side of segmenting: one block of slices, read with its halo, segmented by the
same :func:`~napari_mitoseg.inference.iter_predict` as one process and written slice by slice
into the output zarr; the model and the stack are opened once per worker process."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

from ..inference import PredictOptions

_MODELS: dict = {}
_STACKS: dict = {}
#: model loads in this process, by (model folder, device): a worker loads each model once
LOADS: Counter = Counter()


def _undo_malloc_trim() -> None:
    """Let glibc keep freed memory for reuse in this process again.

    A dask nanny starts its workers with ``MALLOC_TRIM_THRESHOLD_=65536``, which also turns off
    glibc's adaptive mmap threshold: every array above 128 KiB is then mapped and unmapped afresh
    and inference runs about 1.8x slower (docs/benchmarks.md). The trim threshold goes back up to
    256 MiB and arrays up to 32 MiB come from the heap again.
    """
    import sys

    if not sys.platform.startswith("linux") or "MALLOC_TRIM_THRESHOLD_" not in os.environ:
        return
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-1, 256 << 20)  # M_TRIM_THRESHOLD
        libc.mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD (glibc's maximum on 64-bit)
    except (OSError, AttributeError):  # not glibc (musl): nothing to undo
        pass


def dask_setup(worker) -> None:
    """Run in each worker of a local cluster as it starts (a dask preload): ignore SIGINT, which
    the terminal sends to the whole process group on Ctrl+C; the command that started the
    cluster stops its workers itself, without a traceback from each."""
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def sees(paths: list[str]) -> list[str]:
    """Those of ``paths`` this worker cannot see (the client saw them all)."""
    return [p for p in paths if not os.path.exists(p)]


def worker_model(source: str, device: str):
    """The model at ``source`` on ``device``, loaded once per process (per worker)."""
    key = (str(source), device)
    if key not in _MODELS:
        from ..api import get_model

        if not _MODELS:
            _undo_malloc_trim()

        _MODELS[key] = get_model(source, device)
        LOADS[key] += 1
    return _MODELS[key]


def _worker_stack(path: str):
    """The (Z, Y, X) stack at ``path``, opened (lazily where it can be) once per process."""
    from ..io import read_stack

    key = (path, os.stat(path).st_mtime_ns)
    if key not in _STACKS:
        _STACKS.clear()
        _STACKS[key] = read_stack(path)
    return _STACKS[key]


def segment_block(image: str, model: str, device: str, options: PredictOptions, start: int, stop: int,
                  halo: int, target: str, done_dir: str) -> tuple[int, int]:
    """Segment slices ``start:stop`` of the stack at ``image`` into the zarr array ``target``.

    Reads ``halo`` more slices on each side (z-smoothing's reach) so the slices come out as in
    one pass over the whole stack, writes each slice as it is made, then leaves the marker
    ``done_dir/start-stop``. Runs on a worker.
    """
    import dask
    import zarr

    from ..inference import iter_predict

    net = worker_model(model, device)
    stack = _worker_stack(image)
    z = stack.shape[0]
    # on a GPU iter_predict runs slices in batches from slice 0; start and end on the same batch
    # edges as one pass over the whole stack does, so that each slice meets the same batch
    bs = _batch_size(net, stack.shape, options)
    lo, hi = max(0, start - halo) // bs * bs, min(z, -(-(stop + halo) // bs) * bs)
    out = zarr.open_array(target, mode="r+")
    with dask.config.set(scheduler="sync"):  # slice reads inside a task stay in this thread
        # the whole stack with a slice range: ortho windows and neighbour decisions as in one pass
        for r in iter_predict(net, stack, options, zrange=(lo, hi)):
            if start <= r.index < stop:
                out[r.index] = r.mask.astype(out.dtype)
    (Path(done_dir) / f"{start}-{stop}").touch()
    return start, stop


def _batch_size(net, shape, options: PredictOptions) -> int:
    """Slices per forward pass that :func:`~napari_mitoseg.inference.iter_predict` uses for a
    stack of ``shape`` (the same rule: batches on a GPU for slices within one tile, else 1)."""
    from ..inference import for_stack, network_shape

    m = for_stack(net, options.pixel_ratio, options.invert)
    small = max(network_shape(m.spec, tuple(shape[1:]))) <= m.spec.tile_size
    return max(1, options.batch_size) if (m.device.type != "cpu" and small) else 1

"""Segment volumes that outgrow one machine on a ``dask.distributed`` cluster.

The stack is cut into blocks of whole slices. Each block is a task: a worker reads its slices
plus the one-slice halo that z-smoothing needs on each side, runs the same
:func:`~napari_mitoseg.inference.iter_predict` as a single process, and writes its own slices
straight into the output zarr, whose chunks are one slice deep, so no two tasks ever write one
chunk. The labels are the single-process labels, bit for bit.

- The model is loaded once per worker process (:func:`worker_model`, a cache keyed by model
  folder and device), not once per task.
- The output is built in ``.<name>.partial`` beside ``out``. A finished block leaves a marker
  file there, so running the same command again after a crash or Ctrl+C skips the finished
  blocks. ``out`` appears (or replaces an older result) only once everything is written.
- A worker that dies has its tasks rerun elsewhere by the scheduler; tasks that raise are
  retried ``retries`` times.
- ``instances``: 3D connected components across blocks with ``dask-image``
  (:func:`dask_image.ndmeasure.label`: blockwise labels merged across block faces), small objects
  dropped and ids renumbered in raster order, so the ids equal the in-memory
  :func:`~napari_mitoseg.postprocess.instances`; each object's bounding box is found block-wise,
  then objects are measured on the workers from their own crops (as :mod:`morphology` does).
- The result is an OME-Zarr (NGFF v0.4) label pyramid (:mod:`napari_mitoseg.ngff`) with the
  input's voxel size.

:func:`iter_segment` is a generator of :class:`Progress` (stop it to cancel the cluster's
tasks); :func:`segment` drains it. :func:`local_client` starts a ``LocalCluster`` or connects to
a running scheduler.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .inference import PredictOptions

logger = logging.getLogger(__name__)

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
    note: str | None = None  # where the pixel ratio came from, if anywhere


def plan_blocks(z: int, block_slices: int) -> list[tuple[int, int]]:
    """(start, stop) of consecutive blocks of at most ``block_slices`` slices covering ``z``."""
    if block_slices < 1:
        raise DistributedError(f"blocks must hold at least one slice, got {block_slices}")
    return [(s, min(z, s + block_slices)) for s in range(0, z, block_slices)]


def partial_path(out: str | os.PathLike) -> Path:
    """Where the output of ``out`` is built until it is complete."""
    out = Path(out)
    return out.with_name(f".{out.name}.partial")


# --------------------------------------------------------------------------- worker side

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


def worker_model(source: str, device: str):
    """The model at ``source`` on ``device``, loaded once per process (per worker)."""
    key = (str(source), device)
    if key not in _MODELS:
        from .api import get_model

        if not _MODELS:
            _undo_malloc_trim()

        _MODELS[key] = get_model(source, device)
        LOADS[key] += 1
    return _MODELS[key]


def _worker_stack(path: str):
    """The (Z, Y, X) stack at ``path``, opened (lazily where it can be) once per process."""
    from .io import read_stack

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

    from .inference import iter_predict

    net = worker_model(model, device)
    stack = _worker_stack(image)
    z = stack.shape[0]
    # on a GPU iter_predict runs slices in batches from slice 0; start and end on the same batch
    # edges as one pass over the whole stack does, so that each slice meets the same batch
    bs = _batch_size(net, stack.shape, options)
    lo, hi = max(0, start - halo) // bs * bs, min(z, -(-(stop + halo) // bs) * bs)
    out = zarr.open_array(target, mode="r+")
    with dask.config.set(scheduler="sync"):  # slice reads inside a task stay in this thread
        for r in iter_predict(net, stack[lo:hi], options):
            i = lo + r.index
            if start <= i < stop:
                out[i] = r.mask.astype(out.dtype)
    (Path(done_dir) / f"{start}-{stop}").touch()
    return start, stop


def _batch_size(net, shape, options: PredictOptions) -> int:
    """Slices per forward pass that :func:`~napari_mitoseg.inference.iter_predict` uses for a
    stack of ``shape`` (the same rule: batches on a GPU for slices within one tile, else 1)."""
    from .inference import for_stack, network_shape

    m = for_stack(net, options.pixel_ratio, options.invert)
    small = max(network_shape(m.spec, tuple(shape[1:]))) <= m.spec.tile_size
    return max(1, options.batch_size) if (m.device.type != "cpu" and small) else 1


# --------------------------------------------------------------------------- client side


@contextmanager
def local_client(workers: int | None = None, scheduler: str | None = None, threads_per_worker: int = 1):
    """A ``distributed.Client``: connected to ``scheduler`` (an address such as
    ``tcp://host:8786``) or to a new ``LocalCluster`` of ``workers`` processes, closed on exit."""
    from distributed import Client, LocalCluster

    if scheduler:
        try:
            client = Client(scheduler, timeout="20s")
        except OSError as exc:
            raise DistributedError(f"no dask scheduler answers at {scheduler}: {exc}") from None
        try:
            yield client
        finally:
            client.close()
        return
    if not workers or workers < 1:
        raise DistributedError(f"--workers must be at least 1, got {workers}")
    dashboard = ":0" if _has_bokeh() else None
    with LocalCluster(n_workers=workers, threads_per_worker=threads_per_worker, processes=True,
                      dashboard_address=dashboard) as cluster, Client(cluster) as client:
        yield client


def _has_bokeh() -> bool:
    import importlib.util

    return importlib.util.find_spec("bokeh") is not None


def dashboard_link(client) -> str | None:
    """The dashboard address of ``client``'s cluster, None when it has none (no bokeh)."""
    if not _has_bokeh():  # without bokeh the scheduler serves no dashboard pages
        return None
    try:
        return client.dashboard_link if client.scheduler_info().get("services", {}).get("dashboard") else None
    except Exception:  # noqa: BLE001 - the dashboard is a courtesy
        return None


def _signature(**kw) -> dict:
    return json.loads(json.dumps(kw, default=str))


def check_request(image, out, block_slices: int):
    """Raise :class:`DistributedError` (or the reader's error) unless ``image`` can be segmented on a
    cluster into ``out``; returns (absolute image path, out as a Path, the lazily opened stack)."""
    from .inference import check_stack
    from .io import check_label_path, read_stack

    out = Path(out)
    if out.suffix.lower() != ".zarr":
        raise DistributedError(f"{out}: a cluster run writes a .zarr folder (OME-Zarr); name the output *.zarr")
    check_label_path(out, inputs=(image,))
    if not isinstance(image, str | os.PathLike):
        raise DistributedError("a cluster run reads the stack from a path its workers can reach "
                               "(zarr, OME-Zarr or TIFF), not from an array in memory")
    plan_blocks(1, block_slices)
    image = str(Path(image).resolve())
    stack = read_stack(image)
    check_stack(stack)
    return image, out, stack


def _prepare(image, out, model, device, options, block_slices, instances, min_size, pixel_ratio, pixel_size_nm):
    """Check everything before any work; returns what the run needs."""
    from . import ngff
    from .api import get_model
    from .inference import _or_model_default, choose_pixel_ratio, for_stack
    from .io import read_voxel_size
    from .model import DEFAULT_MODEL, resolve_model_path

    image, out, stack = check_request(image, out, block_slices)
    shape = tuple(int(s) for s in stack.shape)
    plan = plan_blocks(shape[0], block_slices)
    model_path = str(resolve_model_path(model or DEFAULT_MODEL).resolve())
    nm = read_voxel_size(image)
    if pixel_ratio is None and pixel_size_nm is None and options.pixel_ratio != 1.0:
        pixel_ratio = options.pixel_ratio
    # the scale as one process chooses it: given ratio, given pixel size, else the file's
    ratio, note = choose_pixel_ratio(get_model(model_path, "cpu").spec, pixel_ratio, pixel_size_nm,
                                     nm[2] if nm else None)
    if note:
        logger.info(note)
    options = dataclasses.replace(options, pixel_ratio=ratio)
    net = for_stack(get_model(model_path, "cpu"), options.pixel_ratio, options.invert)
    options = dataclasses.replace(
        options, z_smooth=_or_model_default(options.z_smooth, net, "default_z_smooth"),
        fill_holes=_or_model_default(options.fill_holes, net, "default_fill_holes"))
    voxel = ngff.VoxelSize(*nm, unit="nanometer") if nm else ngff.VoxelSize()
    sig = _signature(image=image, shape=shape, dtype=str(stack.dtype), model=model_path,
                     model_mtime=os.stat(Path(model_path) / "model.safetensors").st_mtime_ns,
                     device=device, options=dataclasses.asdict(options), block_slices=block_slices,
                     instances=instances, min_size=min_size if instances else None)
    return image, out, shape, plan, model_path, net.name, options, voxel, sig, note


def _open_partial(partial: Path, sig: dict, shape, instances: bool, voxel) -> int:
    """Create the partial output, or check that the one there belongs to the same run.
    Returns how many blocks it holds already."""
    from . import ngff

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


def iter_segment(
    image: str | os.PathLike, out: str | os.PathLike, *, client=None, model=None, device: str = "auto",
    options: PredictOptions | None = None, block_slices: int = DEFAULT_BLOCK_SLICES,
    instances: bool = False, min_size: int = 64, retries: int = 2, pixel_ratio: float | None = None,
    pixel_size_nm: float | None = None,
) -> Iterator[Progress]:
    """Segment the stack at ``image`` on ``client``'s cluster into the OME-Zarr ``out``.

    ``client``: a ``distributed.Client`` (None: the current one). The scale is chosen as for one
    process (:func:`~napari_mitoseg.inference.choose_pixel_ratio`): ``pixel_ratio``, else
    ``pixel_size_nm``, else the file's voxel size (``options.pixel_ratio`` counts as a given
    ratio when it is not 1). Yields :class:`Progress` after
    each block and stage; returns (as the generator's value) a :class:`DistributedResult`. Closing
    the generator (or Ctrl+C while it runs) cancels the tasks still on the cluster; the finished
    blocks stay in :func:`partial_path` for the next run to skip.
    """
    from distributed import as_completed, default_client

    options = options or PredictOptions()
    image, out, shape, plan, model_path, model_name, options, voxel, sig, note = _prepare(
        image, out, model, device, options, block_slices, instances, min_size, pixel_ratio, pixel_size_nm)
    if client is None:
        try:
            client = default_client()
        except ValueError:
            raise DistributedError("no dask client: pass client= or start one (distributed.Client)") from None
    partial = partial_path(out)
    resumed = _open_partial(partial, sig, shape, instances, voxel)
    done_dir = partial / DONE_DIR
    done = {tuple(int(v) for v in f.name.split("-")) for f in done_dir.iterdir() if "-" in f.name}
    todo = [b for b in plan if b not in done]
    if done:
        logger.info("resuming %s: %d of %d blocks already done", partial, len(plan) - len(todo), len(plan))
    dash = dashboard_link(client)
    target = str(partial / (MASK_ARRAY if instances else "0"))
    halo = 1 if options.z_smooth else 0
    t0 = time.perf_counter()
    skipped = len(plan) - len(todo)
    yield Progress("segment", skipped, len(plan), skipped, 0.0, dash)
    token = uuid.uuid4().hex[:8]
    futures = [
        client.submit(segment_block, image, model_path, device, options, a, b, halo, target, str(done_dir),
                      key=f"mitoseg-block-{a}-{b}-{token}", retries=retries, pure=False)
        for a, b in todo
    ]
    try:
        n = skipped
        for fut in as_completed(futures):
            fut.result()  # a failed block raises here (after its retries)
            n += 1
            yield Progress("segment", n, len(plan), skipped, time.perf_counter() - t0, dash)
    finally:
        pending = [f for f in futures if not f.done()]
        if pending:
            client.cancel(pending)
            logger.info("cancelled %d block(s); finished blocks are kept in %s", len(pending), partial)
    objects = measurements = None
    if instances:
        yield Progress("instances", 0, 1, 0, time.perf_counter() - t0, dash)
        objects, measurements = _instances(partial, shape, block_slices, min_size, voxel, client)
        yield Progress("instances", 1, 1, 0, time.perf_counter() - t0, dash)
    yield Progress("pyramid", 0, 1, 0, time.perf_counter() - t0, dash)
    from .ngff import fill_pyramid

    fill_pyramid(partial, scheduler=client)
    _finish(partial, out)
    yield Progress("pyramid", 1, 1, 0, time.perf_counter() - t0, dash)
    return DistributedResult(out, shape, model_name, len(plan), resumed, objects, measurements, voxel,
                             options.pixel_ratio, note)


def segment(image, out, **kw) -> DistributedResult:
    """Run :func:`iter_segment` to the end; returns its :class:`DistributedResult`."""
    from ._generators import result_of

    return result_of(iter_segment(image, out, **kw))


def run_on_client(client, image, out, *, gt=None, **kw):
    """:func:`segment` for :func:`napari_mitoseg.api.segment_file` (``client=``)."""
    from .api import SegmentResult

    if gt is not None:
        raise DistributedError("scoring against ground truth is not available on a cluster; score the "
                               "written labels with metrics.evaluate (or `mitoseg evaluate`)")
    if not out:
        raise DistributedError("a cluster run writes its labels to a .zarr: give out=")
    r = segment(image, out, client=client, **kw)
    return SegmentResult(None, r.model_name, None, r.shape, r.pixel_ratio, r.note)


def _finish(partial: Path, out: Path) -> None:
    """Drop the run's bookkeeping from ``partial`` and swap it in as ``out`` (an older ``out``
    is replaced only now, when the new one is complete)."""
    import zarr

    group = zarr.open_group(str(partial), mode="r+")
    for name in (MASK_ARRAY, LABEL_TMP_ARRAY):
        if name in group:
            del group[name]
    shutil.rmtree(partial / DONE_DIR)
    (partial / RUN_FILE).unlink()
    from .io import swap_dir

    swap_dir(partial, out)


# --------------------------------------------------------------------------- instances


#: columns of the per-block label table: id, voxels, first raster index, sums of z, y, x, then
#: the bounding box (min z, max z, min y, max y, min x, max x)
_STATS = 12
_SUMS, _MINS, _MAXS = (1, 3, 4, 5), (2, 6, 8, 10), (7, 9, 11)


def _block_stats(block: np.ndarray, offset: tuple[int, int, int], shape: tuple[int, int, int]) -> np.ndarray:
    """Per-label figures in one block of a label volume (see :data:`_STATS`), as float64."""
    flat = block.ravel()
    idx = np.flatnonzero(flat)
    if idx.size == 0:
        return np.zeros((0, _STATS))
    ids = flat[idx]
    zz, yy, xx = np.unravel_index(idx, block.shape)
    zz, yy, xx = zz + offset[0], yy + offset[1], xx + offset[2]
    raster = np.ravel_multi_index((zz, yy, xx), shape)
    uniq, inv = np.unique(ids, return_inverse=True)
    k = uniq.size
    cols = [uniq, np.bincount(inv, minlength=k), raster,
            np.bincount(inv, zz, k), np.bincount(inv, yy, k), np.bincount(inv, xx, k),
            zz, zz, yy, yy, xx, xx]
    out = np.zeros((k, _STATS))
    for c, v in enumerate(cols):
        if c in _MINS:
            out[:, c] = np.iinfo(np.int64).max
            np.minimum.at(out[:, c], inv, v)
        elif c in _MAXS:
            out[:, c] = -1
            np.maximum.at(out[:, c], inv, v)
        else:
            out[:, c] = v
    return out


def merge_stats(tables: list[np.ndarray]) -> np.ndarray:
    """Combine :func:`_block_stats` rows of the same labels from several blocks."""
    t = np.concatenate([x for x in tables if len(x)] or [np.zeros((0, _STATS))])
    if not len(t):
        return t
    uniq, inv = np.unique(t[:, 0], return_inverse=True)
    out = np.zeros((uniq.size, _STATS))
    out[:, 0] = uniq
    for c in _SUMS:
        np.add.at(out[:, c], inv, t[:, c])
    for c in _MINS:
        out[:, c] = np.inf
        np.minimum.at(out[:, c], inv, t[:, c])
    for c in _MAXS:
        out[:, c] = -1
        np.maximum.at(out[:, c], inv, t[:, c])
    return out


def _measure_objects(target: str, boxes: list[tuple[int, tuple[slice, ...]]], shape, voxel_nm) -> list:
    """Measure objects of the label array at ``target``, each from its own bounding box: the
    same figures :func:`morphology.measure` gives on the whole volume."""
    import dataclasses

    import zarr

    from .morphology import iter_objects

    arr = zarr.open_array(target, mode="r")
    um = [v / 1000.0 for v in voxel_nm]
    rows = []
    for obj_id, box in boxes:
        crop = np.asarray(arr[box])
        crop = np.where(crop == obj_id, crop, 0)
        (m, _, _), = iter_objects(crop, voxel_nm)
        z0, y0, x0 = (b.start for b in box)
        border = any(b.start == 0 or b.stop == n for b, n in zip(box, shape, strict=True))
        rows.append(dataclasses.replace(
            m, z_first=m.z_first + z0, z_last=m.z_last + z0, touches_border=border,
            centroid_z_um=m.centroid_z_um + z0 * um[0], centroid_y_um=m.centroid_y_um + y0 * um[1],
            centroid_x_um=m.centroid_x_um + x0 * um[2]))
    return rows


def _relabel_write(block: np.ndarray, lut: np.ndarray, target: str, region: tuple) -> None:
    import zarr

    zarr.open_array(target, mode="r+")[region] = lut[block]


def _instances(partial: Path, shape, block_slices: int, min_size: int, voxel, client):
    """3D connected components of the mask in ``partial`` into its level ``0``; returns
    (number of objects, measurements). Same ids as :func:`postprocess.instances`."""
    import dask
    import dask.array as da
    import zarr
    from dask_image.ndmeasure import label

    from . import ngff

    group = zarr.open_group(str(partial), mode="r+")
    chunks = (block_slices, *ngff._chunks(shape)[1:])
    mask = da.from_zarr(group[MASK_ARRAY], chunks=chunks) > 0
    labelled, _ = label(mask)  # face connectivity, as skimage.measure.label(connectivity=1)
    # overwrite: a resumed run redoes this stage
    tmp = ngff._create_array(group, LABEL_TMP_ARRAY, shape, labelled.dtype, overwrite=True)
    store = da.store(labelled, tmp, lock=False, compute=False)
    dask.compute(store, scheduler=client)
    # per-label sums block by block, from the stored labels
    stored = da.from_zarr(group[LABEL_TMP_ARRAY], chunks=chunks)
    regions = da.core.slices_from_chunks(stored.chunks)  # block order of np.ndindex
    offsets = [tuple(r.start for r in reg) for reg in regions]
    blocks = stored.to_delayed().ravel()
    tables = dask.compute(*[dask.delayed(_block_stats)(b, o, shape) for b, o in zip(blocks, offsets, strict=True)],
                          scheduler=client)
    stats = merge_stats(list(tables))
    keep = stats[stats[:, 1] >= max(min_size, 1)]
    keep = keep[np.argsort(keep[:, 2], kind="stable")]  # raster order of each object's first voxel
    top = int(stats[:, 0].max()) if len(stats) else 0
    lut = np.zeros(top + 1, np.int32)
    lut[keep[:, 0].astype(np.int64)] = np.arange(1, len(keep) + 1, dtype=np.int32)
    lut_d = dask.delayed(lut, pure=True)
    target = str(partial / "0")
    writes = [dask.delayed(_relabel_write)(b, lut_d, target, reg) for b, reg in zip(blocks, regions, strict=True)]
    dask.compute(*writes, scheduler=client)
    boxes = [(new_id, tuple(slice(int(r[lo]), int(r[hi]) + 1) for lo, hi in ((6, 7), (8, 9), (10, 11))))
             for new_id, r in enumerate(keep, start=1)]
    per_task = 64
    tasks = [dask.delayed(_measure_objects)(target, boxes[i : i + per_task], shape, voxel.zyx)
             for i in range(0, len(boxes), per_task)]
    rows = [m for part in dask.compute(*tasks, scheduler=client) for m in part]
    return len(keep), rows


# --------------------------------------------------------------------------- command line


def add_cli_flags(p) -> None:
    """``--workers``, ``--scheduler``, ``--block-slices``, ``--measurements`` for ``mitoseg segment``."""
    g = p.add_argument_group("cluster (dask.distributed)")
    g.add_argument("--workers", type=int, default=None,
                   help="segment on a local cluster of this many worker processes (output .zarr)")
    g.add_argument("--scheduler", default=None,
                   help="segment on a running dask cluster, e.g. tcp://host:8786 (output .zarr)")
    g.add_argument("--block-slices", type=int, default=DEFAULT_BLOCK_SLICES,
                   help=f"slices per task on a cluster (default {DEFAULT_BLOCK_SLICES})")
    g.add_argument("--measurements", default=None,
                   help="with --instances on a cluster: write per-object measurements to this CSV")


def wants_cluster(args) -> bool:
    return getattr(args, "workers", None) is not None or bool(getattr(args, "scheduler", None))


def _fmt_seconds(s: float | None) -> str:
    if s is None:
        return "?"
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def run_cli(args) -> int:
    """``mitoseg segment IN -o OUT.zarr --workers N | --scheduler ADDRESS``: progress on stderr."""
    import sys

    from .morphology import write_csv

    def fail(msg: str) -> int:
        print(f"mitoseg: error: {msg}", file=sys.stderr)
        return 2

    if args.workers is not None and args.scheduler:
        return fail("give --workers (a local cluster) or --scheduler (a running one), not both")
    if args.workers is not None and args.workers < 1:
        return fail(f"--workers must be at least 1, got {args.workers}")
    if not args.out:
        return fail("a cluster run needs -o OUT.zarr")
    if args.gt:
        return fail("--gt is not available on a cluster; score the result with `mitoseg evaluate`")
    if args.measurements and not args.instances:
        return fail("--measurements needs --instances")
    if args.measurements and not str(args.measurements).lower().endswith(".csv"):
        return fail(f"{args.measurements}: measurements are written as .csv")
    if args.measurements:
        from .io import ReadError, read_voxel_size

        try:
            known = read_voxel_size(args.image)
        except (ReadError, OSError) as exc:
            return fail(str(exc))
        if known is None:
            return fail(f"{args.image} records no voxel size, and measurements are in um: "
                        "measure the result with `mitoseg measure OUT.zarr --voxel-size Z Y X`")
    options = PredictOptions(threshold=args.threshold, tta=args.tta, z_smooth=args.z_smooth, invert=args.invert)
    t0 = time.perf_counter()
    try:
        check_request(args.image, args.out, args.block_slices)  # before a cluster starts
        with local_client(args.workers, args.scheduler) as client:
            where = args.scheduler or f"a local cluster of {args.workers} worker(s)"
            print(f"mitoseg: segmenting on {where}", file=sys.stderr, flush=True)
            gen = iter_segment(args.image, args.out, client=client, model=args.model, device=args.device,
                               options=options, block_slices=args.block_slices, instances=args.instances,
                               pixel_ratio=args.pixel_ratio, pixel_size_nm=getattr(args, "pixel_size", None))
            try:
                while True:
                    try:
                        prog = next(gen)
                    except StopIteration as stop:
                        result = stop.value
                        break
                    _print_progress(prog)
            except KeyboardInterrupt:
                gen.close()
                print(f"mitoseg: interrupted; the cluster's tasks are cancelled, finished blocks are kept in "
                      f"{partial_path(args.out)}: run the same command again to resume", file=sys.stderr)
                return 130
    except DistributedError as exc:
        return fail(str(exc))
    if args.measurements:
        write_csv(result.measurements, args.measurements)
    extra = {"seconds": round(time.perf_counter() - t0, 3), "model": result.model_name,
             "shape": list(result.shape), "blocks": result.blocks, "resumed_blocks": result.resumed,
             "objects": result.objects, "pixel_ratio": result.pixel_ratio}
    if args.json:
        print(json.dumps(extra))
    else:
        print(f"wrote {args.out}")
    return 0


def _print_progress(p: Progress) -> None:
    import sys

    if p.stage == "segment":
        if p.done == p.skipped and p.done < p.total:
            resumed = f" ({p.skipped} done by an earlier run)" if p.skipped else ""
            dash = f"; dashboard {p.dashboard}" if p.dashboard else ""
            msg = f"blocks {p.done}/{p.total}{resumed}{dash}"
        else:
            msg = (f"blocks {p.done}/{p.total}  {p.rate * 60:.1f} blocks/min  "
                   f"elapsed {_fmt_seconds(p.seconds)}  left {_fmt_seconds(p.eta)}")
    else:
        msg = f"{p.stage}: {'done' if p.done == p.total else 'running'}"
    print(f"mitoseg: {msg}", file=sys.stderr, flush=True)

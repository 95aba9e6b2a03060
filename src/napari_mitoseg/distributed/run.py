"""A cluster run from start to end: check the request, choose the scale and options as one
process would, submit one task per block, then make instances and the pyramid.

:func:`iter_segment` is a generator of :class:`~.common.Progress` (stop it to cancel the
cluster's tasks); :func:`segment` drains it; :func:`segment_file` is
:func:`napari_mitoseg.api.segment_file` on a cluster.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..inference import PredictOptions
from ..neighbours import resolve_z_step, smoothing_reach
from .blocks import sees, segment_block
from .cluster import dashboard_link
from .common import (
    DEFAULT_BLOCK_SLICES,
    DONE_DIR,
    MASK_ARRAY,
    DistributedError,
    DistributedResult,
    Progress,
    partial_path,
    plan_blocks,
)
from .objects import instances_on_cluster
from .partial import finish, finished_blocks, open_partial, output_lock, signature
from .watch import WorkerWatch, as_finished, lost_scheduler, run_faults

logger = logging.getLogger(__name__)


def check_request(image, out, block_slices: int):
    """Raise :class:`DistributedError` (or the reader's error) unless ``image`` can be segmented on a
    cluster into ``out``; returns (absolute image path, out as a Path, the lazily opened stack)."""
    from ..inference import check_stack
    from ..io import check_label_path, read_stack

    out = Path(os.path.abspath(out))  # workers started in another folder write it too
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


@dataclass(frozen=True)
class Job:
    """A checked request, with everything the workers are handed."""

    image: str  # absolute path
    out: Path
    shape: tuple[int, int, int]
    plan: list[tuple[int, int]]
    model_path: str  # absolute path of the model folder
    model_name: str
    device: str
    options: PredictOptions  # with the pixel ratio and the model's defaults filled in
    voxel: object  # ngff.VoxelSize
    signature: dict  # what a resumed run must match
    note: str | None
    block_slices: int
    instances: bool
    min_size: int


def _options_for(model_path: str, options: PredictOptions, pixel_ratio, pixel_size_nm, nm, stack=None,
                 guess_contrast: bool | None = False):
    """``options`` with the scale and contrast one process would choose (a given ratio, a given
    pixel size, else the file's; the contrast guessed from ``stack`` unless given, see
    :func:`~napari_mitoseg.stack_setup.settle_contrast`) and the model's default z-smoothing
    and hole filling; and the note."""
    from ..api import get_model
    from ..inference import _or_model_default, choose_pixel_ratio, for_stack
    from ..stack_setup import settle_contrast

    if pixel_ratio is None and pixel_size_nm is None and options.pixel_ratio != 1.0:
        pixel_ratio = options.pixel_ratio
    base = get_model(model_path, "cpu")
    ratio, note = choose_pixel_ratio(base.spec, pixel_ratio, pixel_size_nm, nm[2] if nm else None)
    if note:
        logger.info(note)
    if stack is not None:
        invert, guessed = settle_contrast(base, stack, ratio, options.invert, guess_contrast)
        note = "; ".join(n for n in (note, guessed) if n) or None
        options = dataclasses.replace(options, invert=invert)
    options = dataclasses.replace(options, pixel_ratio=ratio)
    net = for_stack(base, options.pixel_ratio, options.invert)
    options = dataclasses.replace(
        options, z_smooth=_or_model_default(options.z_smooth, net, "default_z_smooth"),
        fill_holes=_or_model_default(options.fill_holes, net, "default_fill_holes"))
    return options, net.name, note


def _choose_ortho(ortho: bool | None, nm, z: int) -> bool:
    """Ortho as one process chooses it (None: from the file's voxel size, with a note)."""
    from ..ortho import choose_ortho

    on, note = choose_ortho(ortho, nm, z)
    if note:
        logger.info(note)
    return on


def prepare(image, out, *, model=None, device: str = "auto", options: PredictOptions | None = None,
            block_slices: int = DEFAULT_BLOCK_SLICES, instances: bool = False, min_size: int = 64,
            pixel_ratio: float | None = None, pixel_size_nm: float | None = None,
            guess_contrast: bool | None = None) -> Job:
    """Check everything before any work; returns the :class:`Job`. ``guess_contrast``: see
    :func:`napari_mitoseg.api.segment_file` (decided once here, for every block alike)."""
    from .. import ngff
    from ..io import read_voxel_size, warn_missing_chunks
    from ..model import DEFAULT_MODEL, resolve_model_path

    image, out, stack = check_request(image, out, block_slices)
    warn_missing_chunks(image)
    shape = tuple(int(s) for s in stack.shape)
    model_path = str(resolve_model_path(model or DEFAULT_MODEL).resolve())
    nm = read_voxel_size(image)
    options, name, note = _options_for(model_path, options or PredictOptions(), pixel_ratio, pixel_size_nm, nm,
                                       stack, guess_contrast)
    options = dataclasses.replace(options, ortho=_choose_ortho(options.ortho, nm, shape[0]))
    if options.z_smooth and not options.ortho:  # once, for every block alike
        options = dataclasses.replace(options, z_step=resolve_z_step(stack, options.z_step, nm))
    voxel = ngff.VoxelSize(*nm, unit="nanometer") if nm else ngff.VoxelSize()
    sig = signature(image=image, shape=shape, dtype=str(stack.dtype), model=model_path,
                    model_mtime=os.stat(Path(model_path) / "model.safetensors").st_mtime_ns,
                    device=device, options=dataclasses.asdict(options), block_slices=block_slices,
                    instances=instances, min_size=min_size if instances else None)
    return Job(image, out, shape, plan_blocks(shape[0], block_slices), model_path, name, device, options,
               voxel, sig, note, block_slices, instances, min_size)


def check_reachable(client, job: Job, partial: Path) -> None:
    """:class:`DistributedError` unless every worker connected now sees the stack, the partial
    output and the model at the paths this process sees them."""
    seen = client.run(sees, [job.image, str(partial), job.model_path])
    blind = {w: missing for w, missing in seen.items() if missing}
    if blind:
        worker, missing = next(iter(blind.items()))
        raise DistributedError(
            f"{len(blind)} of {len(seen)} worker(s) (e.g. {worker}) cannot see {', '.join(missing)}: the stack, "
            "the output folder and the model must be at the same path on every worker (a shared file system)")


def _run_blocks(job: Job, client, partial: Path, retries: int, dash, t0: float,
                timeout: float | None) -> Iterator[Progress]:
    """Submit the blocks the partial output lacks and yield after each one finishes; closing
    this generator cancels the blocks still queued (the finished ones stay)."""
    done = finished_blocks(partial)
    todo = [b for b in job.plan if b not in done]
    skipped = len(job.plan) - len(todo)
    if done:
        logger.info("resuming %s: %d of %d blocks already done", partial, skipped, len(job.plan))
    yield Progress("segment", skipped, len(job.plan), skipped, 0.0, dash)
    target = str(partial / (MASK_ARRAY if job.instances else "0"))
    opts = job.options
    halo = smoothing_reach(job.shape[1:], opts.z_step, bool(opts.ortho)) if opts.z_smooth else 0
    token = uuid.uuid4().hex[:8]
    futures = [
        client.submit(segment_block, job.image, job.model_path, job.device, job.options, a, b, halo, target,
                      str(partial / DONE_DIR), key=f"mitoseg-block-{a}-{b}-{token}", retries=retries, pure=False)
        for a, b in todo
    ]
    counted: set[str] = set()
    try:
        n = skipped
        for fut in as_finished(futures, WorkerWatch(client, partial, timeout)):
            if fut.cancelled():
                raise lost_scheduler(client, partial)
            if fut.status == "error":
                fut.result()  # a failed block raises here (after its retries)
            # finished, or "lost": it finished and then its worker died holding its return value
            # (None); its slices and marker are on disk either way. Released, so the cluster does
            # not run it again for a value nobody needs (and result() never waits on it).
            counted.add(fut.key)
            fut.release()
            n += 1
            yield Progress("segment", n, len(job.plan), skipped, time.perf_counter() - t0, dash)
    finally:
        _cancel([f for f in futures if f.key not in counted and not f.done()], client, partial)


def _cancel(pending: list, client, partial: Path) -> None:
    if not pending or client.status != "running":  # a lost scheduler has forgotten them
        return
    client.cancel(pending)
    logger.info("cancelled %d block(s); finished blocks are kept in %s", len(pending), partial)


def _client_or_default(client):
    from distributed import default_client

    if client is not None:
        return client
    try:
        return default_client()
    except ValueError:
        raise DistributedError("no dask client: pass client= or start one (distributed.Client)") from None


def iter_segment(
    image: str | os.PathLike, out: str | os.PathLike, *, client=None, model=None, device: str = "auto",
    options: PredictOptions | None = None, block_slices: int = DEFAULT_BLOCK_SLICES,
    instances: bool = False, min_size: int = 64, retries: int = 2, pixel_ratio: float | None = None,
    pixel_size_nm: float | None = None, timeout: float | None = None, lock: bool = True,
    guess_contrast: bool | None = None,
) -> Iterator[Progress]:
    """Segment the stack at ``image`` on ``client``'s cluster into the OME-Zarr ``out``.

    ``client``: a ``distributed.Client`` (None: the current one). The scale is chosen as for one
    process (:func:`~napari_mitoseg.inference.choose_pixel_ratio`): ``pixel_ratio``, else
    ``pixel_size_nm``, else the file's voxel size (``options.pixel_ratio`` counts as a given
    ratio when it is not 1); ``guess_contrast`` as :func:`napari_mitoseg.api.segment_file`, decided once
    before the blocks are sent. Yields :class:`Progress` after
    each block and stage; returns (as the generator's value) a :class:`DistributedResult`. Closing
    the generator (or Ctrl+C while it runs) cancels the tasks still on the cluster; the finished
    blocks stay in :func:`partial_path` for the next run to skip.

    Faults end in one :class:`DistributedError` and keep the finished blocks: another run
    writing ``out`` (refused up front; ``lock=False`` when the caller holds
    :func:`~.partial.output_lock` itself), workers that cannot see the paths, no worker for
    ``timeout`` seconds (None: wait, with a warning), the scheduler lost, a full disk.
    """
    job = prepare(image, out, model=model, device=device, options=options, block_slices=block_slices,
                  instances=instances, min_size=min_size, pixel_ratio=pixel_ratio, pixel_size_nm=pixel_size_nm,
                  guess_contrast=guess_contrast)
    client = _client_or_default(client)
    partial = partial_path(job.out)
    with output_lock(job.out) if lock else contextlib.nullcontext(), run_faults(client, partial):
        resumed = open_partial(partial, job.signature, job.shape, job.instances, job.voxel)
        check_reachable(client, job, partial)
        dash = dashboard_link(client)
        t0 = time.perf_counter()
        yield from _run_blocks(job, client, partial, retries, dash, t0, timeout)
        objects = measurements = None
        if job.instances:
            yield Progress("instances", 0, 1, 0, time.perf_counter() - t0, dash)
            objects, measurements = instances_on_cluster(partial, job.shape, job.block_slices, job.min_size,
                                                         job.voxel, client)
            yield Progress("instances", 1, 1, 0, time.perf_counter() - t0, dash)
        yield Progress("pyramid", 0, 1, 0, time.perf_counter() - t0, dash)
        from ..ngff import fill_pyramid

        fill_pyramid(partial, scheduler=client)
        finish(partial, job.out)
    yield Progress("pyramid", 1, 1, 0, time.perf_counter() - t0, dash)
    return DistributedResult(job.out, job.shape, job.model_name, len(job.plan), resumed, objects, measurements,
                             job.voxel, job.options.pixel_ratio, job.note, job.options.invert)


def segment(image, out, **kw) -> DistributedResult:
    """Run :func:`iter_segment` to the end; returns its :class:`DistributedResult`."""
    from .._generators import result_of

    return result_of(iter_segment(image, out, **kw))


def segment_file(
    image_path, *, client, out, model=None, device="auto", threshold=None, tta=False, z_smooth=None,
    instances=False, gt=None, pixel_ratio=None, invert=False, pixel_size_nm=None, ortho=None, scales=(1.0,),
    z_step=None, guess_contrast=None,
):
    """:func:`napari_mitoseg.api.segment_file` on ``client``'s cluster (a ``distributed.Client``):
    the same arguments, the labels written in blocks into the OME-Zarr ``out`` (the same labels as
    one process). Returns a :class:`~napari_mitoseg.api.SegmentResult` whose ``labels`` and
    ``report`` are None."""
    from ..api import SegmentResult

    if gt is not None:
        raise DistributedError("scoring against ground truth is not available on a cluster; score the "
                               "written labels with metrics.evaluate (or `mitoseg evaluate`)")
    if not out:
        raise DistributedError("a cluster run writes its labels to a .zarr: give out=")
    opts = PredictOptions(threshold=threshold, tta=tta, z_smooth=z_smooth, invert=invert, ortho=ortho,
                          scales=scales, z_step=z_step)
    r = segment(image_path, out, client=client, model=model, device=device, instances=instances, options=opts,
                pixel_ratio=pixel_ratio, pixel_size_nm=pixel_size_nm, guess_contrast=guess_contrast)
    return SegmentResult(None, r.model_name, None, r.shape, r.pixel_ratio, r.note, invert=r.invert)

"""Segment volumes that outgrow one machine on a ``dask.distributed`` cluster.

The stack is cut into blocks of whole slices. Each block is a task: a worker reads its slices
plus the halo that z-smoothing needs on each side (its reach, a few slices), runs the same
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
tasks); :func:`segment` drains it; :func:`segment_file` is :func:`napari_mitoseg.api.segment_file`
on a cluster. :func:`local_client` starts a ``LocalCluster`` or connects to a running scheduler.

One idea per module: :mod:`.common` (the error, progress, result, plan of blocks),
:mod:`.blocks` (a block on a worker), :mod:`.cluster` (reaching a cluster: addresses checked,
connections with a timeout), :mod:`.partial` (the partial output, its lock and resuming),
:mod:`.watch` (waiting on the blocks; no worker, a lost scheduler, a full disk), :mod:`.run` (a
run from start to end), :mod:`.objects` (instances across blocks), :mod:`.measure` (measurements
on the workers), :mod:`.cli` (the command line's cluster flags).
"""

from .blocks import LOADS, segment_block, worker_model
from .cli import add_cli_flags, run_cli, wants_cluster
from .cluster import check_address, dashboard_link, local_client, probe_scheduler
from .common import (
    DEFAULT_BLOCK_SLICES,
    DONE_DIR,
    LABEL_TMP_ARRAY,
    MASK_ARRAY,
    RUN_FILE,
    DistributedError,
    DistributedResult,
    Progress,
    partial_path,
    plan_blocks,
)
from .objects import merge_stats
from .partial import output_lock
from .run import check_request, iter_segment, prepare, segment, segment_file

__all__ = [
    "DEFAULT_BLOCK_SLICES", "DONE_DIR", "LABEL_TMP_ARRAY", "LOADS", "MASK_ARRAY", "RUN_FILE", "DistributedError",
    "DistributedResult", "Progress", "add_cli_flags", "check_address", "check_request", "dashboard_link",
    "iter_segment", "local_client", "merge_stats", "output_lock", "partial_path", "plan_blocks", "prepare",
    "probe_scheduler", "run_cli", "segment", "segment_block", "segment_file", "wants_cluster", "worker_model",
]

"""Throughput of ``mitoseg segment`` on a dask.distributed ``LocalCluster`` versus one process,
the scheduler's overhead per task and per block size, and a projection to a large cluster.

Builds a synthetic (Z, side, side) uint8 zarr stack (the seeded sample, tiled), then, with the
shipped model on the CPU and one thread per process:

1. one process, streamed into zarr (``api.segment_file``): seconds per slice;
2. a LocalCluster of 1 and of 2 worker processes (``distributed.segment``, blocks of
   ``--block`` slices): start-up, model warm-up and segmenting time, labels checked equal to (1);
3. the scheduler's round trip per task (``--tasks`` empty tasks on 2 workers);
   beside wall time, the CPU seconds the workers spent (``time.process_time`` in each), which
   do not count the time a process waited for a core on a shared machine;
4. 2 workers at several block sizes (each block also computes its 2 halo slices);
5. a projection, from those figures, for ``--project-workers`` workers on ``--project-slices``
   slices of ``--project-side`` pixels square.

    python benchmarks/bench_distributed.py [--slices 16] [--side 1024] [--block 8]

Prints one JSON object (and a readable summary on stderr).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def make_stack(path: Path, z: int, side: int) -> None:
    import zarr

    from napari_mitoseg.synthetic import make_sample

    tile, _ = make_sample((4, 512, 512), seed=0)
    reps = math.ceil(side / 512)
    arr = zarr.open(str(path), mode="w", shape=(z, side, side), dtype=np.uint8, chunks=(1, side, side))
    for i in range(z):
        arr[i] = np.tile(tile[i % 4], (reps, reps))[:side, :side]


def _noop(i):
    return i


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slices", type=int, default=16)
    ap.add_argument("--side", type=int, default=1024)
    ap.add_argument("--block", type=int, default=8, help="slices per task for the 1/2-worker runs")
    ap.add_argument("--block-sweep", default="1,4,16", help="block sizes tried on 2 workers")
    ap.add_argument("--tasks", type=int, default=500, help="empty tasks for the per-task overhead")
    ap.add_argument("--project-workers", type=int, default=100)
    ap.add_argument("--project-slices", type=int, default=10_000)
    ap.add_argument("--project-side", type=int, default=10_000)
    ap.add_argument("--dir", default=None, help="scratch folder (default: a temporary one, removed)")
    args = ap.parse_args(argv)

    import torch
    from distributed import Client, LocalCluster

    from napari_mitoseg import api
    from napari_mitoseg import distributed as dist
    from napari_mitoseg.inference import PredictOptions
    from napari_mitoseg.io import read_stack
    from napari_mitoseg.model import DEFAULT_MODEL, resolve_model_path

    torch.set_num_threads(1)
    scratch = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="mitoseg-dist-"))
    scratch.mkdir(parents=True, exist_ok=True)
    model = str(resolve_model_path(DEFAULT_MODEL).resolve())
    opts = PredictOptions(z_smooth=True)
    res: dict = {"slices": args.slices, "side": args.side, "model": Path(model).name, "threads_per_process": 1,
                 "cpu_count": os.cpu_count(), "load_average_at_start": os.getloadavg()[0]}
    try:
        stack = scratch / "stack.zarr"
        make_stack(stack, args.slices, args.side)
        api.get_model(model, "cpu")  # load outside the timing, as a worker's warm-up does
        t0, c0 = time.perf_counter(), time.process_time()
        api.segment_file(stack, model=model, device="cpu", z_smooth=True, out=scratch / "one.zarr")
        single, single_cpu = time.perf_counter() - t0, time.process_time() - c0
        res["single_process_s"] = round(single, 2)
        res["single_s_per_slice"] = round(single / args.slices, 3)
        res["single_cpu_s_per_slice"] = round(single_cpu / args.slices, 3)
        ref = np.asarray(read_stack(scratch / "one.zarr"))

        runs = {}
        overhead = None
        sweep = {}
        for workers in (1, 2):
            t0 = time.perf_counter()
            with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                              dashboard_address=None) as cluster, Client(cluster) as client:
                start = time.perf_counter() - t0
                t0 = time.perf_counter()
                client.run(dist.worker_model, model, "cpu")  # each worker loads the model once
                warm = time.perf_counter() - t0

                def timed(block, name, client=client):
                    """Wall seconds, and CPU seconds of all workers together, of one run."""
                    out = scratch / f"{name}.zarr"
                    c = client.run(time.process_time)
                    t = time.perf_counter()
                    dist.segment(stack, out, client=client, model=model, device="cpu", options=opts,
                                 block_slices=block)
                    s = time.perf_counter() - t
                    cpu = sum(client.run(time.process_time).values()) - sum(c.values())
                    if not np.array_equal(np.asarray(read_stack(out)), ref):
                        raise SystemExit(f"{name}: labels differ from the single-process run")
                    shutil.rmtree(out)
                    return s, cpu

                s, cpu = timed(args.block, f"w{workers}")
                computed = args.slices + 2 * (math.ceil(args.slices / args.block) - 1)  # + halo slices
                runs[workers] = {"startup_s": round(start, 2), "model_warmup_s": round(warm, 2),
                                 "segment_s": round(s, 2), "slices_per_s": round(args.slices / s, 3),
                                 "slices_computed": computed, "worker_cpu_s": round(cpu, 2),
                                 "cpu_s_per_computed_slice": round(cpu / computed, 3),
                                 "labels_identical": True}
                if workers == 2:
                    t = time.perf_counter()
                    futs = client.map(_noop, range(args.tasks), pure=False)
                    client.gather(futs)
                    overhead = (time.perf_counter() - t) / args.tasks
                    for b in (int(v) for v in args.block_sweep.split(",")):
                        s, cpu = timed(b, f"b{b}")
                        sweep[b] = {"blocks": math.ceil(args.slices / b), "wall_s": round(s, 2),
                                    "worker_cpu_s": round(cpu, 2)}
        res["workers"] = runs
        res["speedup_2_over_1"] = round(runs[1]["segment_s"] / runs[2]["segment_s"], 2)
        res["scheduler_s_per_task"] = round(overhead, 5)
        res["block_sweep_2_workers_s"] = sweep

        res["load_average_at_end"] = os.getloadavg()[0]
        # ---- projection (not a measurement): each worker on a core of its own, as fast as one
        # worker's CPU time per slice here (wall time on this shared machine includes waiting)
        t_slice = runs[1]["cpu_s_per_computed_slice"]
        pixels = args.project_side ** 2 / args.side ** 2
        W, Z = args.project_workers, args.project_slices
        proj = {}
        for b in (1, 4, 16, 64):
            blocks = math.ceil(Z / b)
            work = Z * (1 + 2 / b) * t_slice * pixels  # worker-seconds, halo slices included
            rounds = math.ceil(blocks / W)
            wall = rounds * b * (1 + 2 / b) * t_slice * pixels + blocks * overhead
            proj[b] = {"blocks": blocks, "worker_hours": round(work / 3600, 1),
                       "wall_hours": round(wall / 3600, 2)}
        res["projection"] = {
            "what": f"{W} workers, {Z} slices of {args.project_side}^2 pixels, from 1 worker's CPU "
                    "seconds per slice scaled by pixel count, plus the scheduler's time per task; "
                    "not measured",
            "s_per_slice_per_worker": round(t_slice * pixels, 1),
            "by_block_slices": proj,
        }
    finally:
        if not args.dir:
            shutil.rmtree(scratch, ignore_errors=True)
    print(json.dumps(res, indent=1))
    print(f"1 worker {runs[1]['slices_per_s']} slices/s, 2 workers {runs[2]['slices_per_s']} slices/s "
          f"(x{res['speedup_2_over_1']}); scheduler {overhead * 1e3:.2f} ms/task", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

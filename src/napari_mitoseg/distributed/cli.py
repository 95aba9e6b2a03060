"""``mitoseg segment ... --workers N | --scheduler ADDRESS``: the cluster flags, their checks
before any cluster starts, and progress lines on stderr."""

from __future__ import annotations

import json
import sys
import time

from ..inference import PredictOptions
from .cluster import local_client
from .common import DEFAULT_BLOCK_SLICES, DistributedError, Progress, partial_path
from .run import check_request, iter_segment


def add_cli_flags(p) -> None:
    """``--workers``, ``--scheduler``, ``--block-slices``, ``--measurements`` for ``mitoseg segment``."""
    g = p.add_argument_group("cluster (dask.distributed)")
    g.add_argument("--workers", type=int, default=None, metavar="N",
                   help="segment on a local cluster of N worker processes, one thread each (output .zarr; "
                        "default: none, one process)")
    g.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="segment on a running dask cluster, e.g. tcp://host:8786 (output .zarr; default: none)")
    g.add_argument("--block-slices", type=int, default=DEFAULT_BLOCK_SLICES, metavar="SLICES",
                   help="slices per task on a cluster (default: %(default)s)")
    g.add_argument("--measurements", default=None, metavar="CSV",
                   help="with --instances on a cluster: write per-object measurements (um) to this CSV "
                        "(default: none)")


def wants_cluster(args) -> bool:
    return getattr(args, "workers", None) is not None or bool(getattr(args, "scheduler", None))


def _fmt_seconds(s: float | None) -> str:
    if s is None:
        return "?"
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def _fail(msg: str) -> int:
    print(f"mitoseg: error: {msg}", file=sys.stderr)
    return 2


def _flag_problem(args) -> str | None:
    """What is wrong with the cluster flags taken together, before anything is read."""
    if args.workers is not None and args.scheduler:
        return "give --workers (a local cluster) or --scheduler (a running one), not both"
    if args.workers is not None and args.workers < 1:
        return f"--workers must be at least 1, got {args.workers}"
    if not args.out:
        return "a cluster run needs -o OUT.zarr"
    if args.gt:
        return "--gt is not available on a cluster; score the result with `mitoseg evaluate`"
    if getattr(args, "uncertainty_out", None):
        return "--uncertainty-out is not available on a cluster yet; run it in one process"
    if args.measurements and not args.instances:
        return "--measurements needs --instances"
    if args.measurements and not str(args.measurements).lower().endswith(".csv"):
        return f"{args.measurements}: measurements are written as .csv"
    return None


def _measurements_problem(args) -> str | None:
    """Why per-object measurements cannot be made for ``args.image`` (it records no voxel size)."""
    from ..io import ReadError, read_voxel_size

    try:
        known = read_voxel_size(args.image)
    except (ReadError, OSError) as exc:
        return str(exc)
    if known is None:
        return (f"{args.image} records no voxel size, and measurements are in um: "
                "measure the result with `mitoseg measure OUT.zarr --voxel-size Z Y X`")
    return None


def _drive(gen):
    """Print each :class:`Progress` of ``gen``; returns the generator's value."""
    while True:
        try:
            prog = next(gen)
        except StopIteration as stop:
            return stop.value
        _print_progress(prog)


def run_cli(args) -> int:
    """``mitoseg segment IN -o OUT.zarr --workers N | --scheduler ADDRESS``: progress on stderr."""
    from ..morphology import write_csv

    problem = _flag_problem(args) or (_measurements_problem(args) if args.measurements else None)
    if problem:
        return _fail(problem)
    options = PredictOptions(threshold=args.threshold, tta=args.tta, z_smooth=args.z_smooth, invert=args.invert,
                             ortho=getattr(args, "ortho", False))
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
                result = _drive(gen)
            except KeyboardInterrupt:
                gen.close()
                print(f"mitoseg: interrupted; the cluster's tasks are cancelled, finished blocks are kept in "
                      f"{partial_path(args.out)}: run the same command again to resume", file=sys.stderr)
                return 130
    except DistributedError as exc:
        return _fail(str(exc))
    if args.measurements:
        write_csv(result.measurements, args.measurements)
    extra = {"seconds": round(time.perf_counter() - t0, 3), "model": result.model_name,
             "shape": list(result.shape), "blocks": result.blocks, "resumed_blocks": result.resumed,
             "objects": result.objects, "pixel_ratio": result.pixel_ratio}
    print(json.dumps(extra) if args.json else f"wrote {args.out}")
    return 0


def _print_progress(p: Progress) -> None:
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

"""``mitoseg segment ... --workers N | --scheduler ADDRESS``: the cluster flags, their checks
before any cluster starts, and progress lines on stderr."""

from __future__ import annotations

import json
import logging
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from ..inference import PredictOptions
from .cluster import check_address, local_client
from .common import DEFAULT_BLOCK_SLICES, DistributedError, Progress, partial_path
from .partial import output_lock, read_run_file
from .run import check_request, iter_segment
from .watch import NO_WORKER_GRACE


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
    g.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                   help="stop when no dask worker has been there for this many seconds; the finished blocks "
                        "are kept for the same command to resume (default: wait, with a warning after "
                        f"{NO_WORKER_GRACE:g} s)")


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
    if args.timeout is not None and not args.timeout > 0:
        return f"--timeout must be a number of seconds above 0, got {args.timeout:g}"
    if args.scheduler:
        try:
            check_address(args.scheduler)
        except DistributedError as exc:
            return str(exc)
    return None


def _measurements_problem(args) -> str | None:
    """Why per-object measurements cannot be written to ``args.measurements`` (a folder, a
    read-only place, the input) or made for ``args.image`` (it records no voxel size)."""
    from ..io import ReadError, WriteError, check_not_input, check_writable_dir, read_voxel_size

    table = Path(args.measurements)
    if table.is_dir():
        return f"{table} is a folder; name the .csv file to write the measurements to"
    try:
        check_not_input(table, [args.image], "measurements table")
        check_writable_dir(table.parent)
        known = read_voxel_size(args.image)
    except (ReadError, WriteError, OSError) as exc:
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


@contextmanager
def _quiet_dask(verbose: bool):
    """dask's own log lines (a lost connection's tracebacks, a nanny's notes) kept off stderr
    while the command runs, unless -v: its faults end in one line of ours."""
    if verbose:
        yield
        return
    names = ["distributed", "tornado", "asyncio"]
    names += [n for n in logging.root.manager.loggerDict if n.startswith(("distributed.", "tornado."))]
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _check_partial(out) -> None:
    """Refuse, before a cluster starts, a partial output whose run file cannot be read."""
    partial = partial_path(out)
    if partial.exists():
        read_run_file(partial)


def run_cli(args) -> int:
    """``mitoseg segment IN -o OUT.zarr --workers N | --scheduler ADDRESS``: progress on stderr.

    Everything that can be checked is checked before a cluster starts. Ctrl+C and SIGTERM
    cancel the cluster's tasks and keep the finished blocks (the caller says so)."""
    from ..morphology import write_csv

    problem = _flag_problem(args) or (_measurements_problem(args) if args.measurements else None)
    if problem:
        return _fail(problem)
    options = PredictOptions(threshold=args.threshold, tta=args.tta, z_smooth=args.z_smooth, invert=args.invert,
                             scales=args.scales, z_step=getattr(args, "z_step", None),
                             ortho=getattr(args, "ortho", False))
    t0 = time.perf_counter()
    try:
        _, out, _ = check_request(args.image, args.out, args.block_slices)  # before a cluster starts
        _check_partial(out)
        with _quiet_dask(args.verbose), output_lock(out), local_client(args.workers, args.scheduler) as client:
            where = args.scheduler or f"a local cluster of {args.workers} worker(s)"
            print(f"mitoseg: segmenting on {where}", file=sys.stderr, flush=True)
            gen = iter_segment(args.image, out, client=client, model=args.model, device=args.device,
                               options=options, block_slices=args.block_slices, instances=args.instances,
                               pixel_ratio=args.pixel_ratio, pixel_size_nm=getattr(args, "pixel_size", None),
                               timeout=args.timeout, lock=False,
                               guess_contrast=getattr(args, "guess_contrast", None))
            try:
                result = _drive(gen)
            finally:
                gen.close()  # on Ctrl+C or SIGTERM too: cancels the tasks still on the cluster
    except DistributedError as exc:
        return _fail(str(exc))
    if args.measurements:
        write_csv(result.measurements, args.measurements)
    extra = {"seconds": round(time.perf_counter() - t0, 3), "model": result.model_name,
             "shape": list(result.shape), "blocks": result.blocks, "resumed_blocks": result.resumed,
             "objects": result.objects, "pixel_ratio": result.pixel_ratio, "invert": result.invert}
    print(json.dumps(extra) if args.json else f"wrote {args.out}")
    return 0


def after_interrupt(args) -> str:
    """What an interrupted or terminated cluster run left, for the command's last line."""
    partial = partial_path(Path(args.out).absolute()) if args.out else None
    if partial is not None and partial.is_dir():
        return (f"the cluster's tasks are cancelled, finished blocks are kept in {partial}: run the same "
                "command again to resume")
    return "nothing was written"


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

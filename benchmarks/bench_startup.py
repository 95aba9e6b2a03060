"""Start-up cost of a whole ``mitoseg segment`` process on one small slice, against importing
torch alone.

Each command runs ``--runs`` times, alternating, as a fresh process; reported per command: the
median wall time and the median CPU time (user + system of the process, less sensitive to other
work on a shared machine than wall time), and the ratio of the segment run to ``import torch``.

    python benchmarks/bench_startup.py [--runs 7] [--size 256] [--src DIR ...]

``--src`` (repeatable) also times the command line of other source trees (another checkout's
``src``) on the same slice, e.g. to compare with an earlier version.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def timed(cmd: list[str], env: dict) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one run of ``cmd``; fails loudly on a non-zero exit."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr[-2000:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--size", type=int, default=256, help="slice height and width (px)")
    ap.add_argument("--src", action="append", default=[], help="another source tree to time as well")
    args = ap.parse_args()

    sys.path.insert(0, str(SRC))
    import tifffile

    from napari_mitoseg.synthetic import make_sample

    tmp = Path(tempfile.mkdtemp(prefix="bench-startup-"))
    image = tmp / "slice.tif"
    tifffile.imwrite(image, make_sample((1, args.size, args.size))[0][0])
    base_env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    commands = {"import torch": ([sys.executable, "-c", "import torch"], base_env)}
    for i, src in enumerate([str(SRC), *args.src]):
        label = "segment" if i == 0 else f"segment ({src})"
        out = tmp / f"labels{i}.tif"
        commands[label] = ([sys.executable, "-m", "napari_mitoseg", "segment", str(image), "-o", str(out)],
                           {**base_env, "PYTHONPATH": src})
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in commands}
    for cmd, env in commands.values():  # warm the file cache once, untimed
        timed(cmd, env)
    for _ in range(args.runs):
        for label, (cmd, env) in commands.items():
            times[label].append(timed(cmd, env))
    torch_wall = statistics.median(w for w, _ in times["import torch"])
    torch_cpu = statistics.median(c for _, c in times["import torch"])
    for label, runs in times.items():
        wall, cpu = statistics.median(w for w, _ in runs), statistics.median(c for _, c in runs)
        print(json.dumps({
            "command": label, "runs": len(runs), "median_wall_s": round(wall, 2), "median_cpu_s": round(cpu, 2),
            "wall_vs_import_torch": round(wall / torch_wall, 2), "cpu_vs_import_torch": round(cpu / torch_cpu, 2),
            "walls": [round(w, 2) for w, _ in runs], "load_1min": round(os.getloadavg()[0], 1),
        }))


if __name__ == "__main__":
    main()

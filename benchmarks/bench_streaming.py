"""Peak memory of ``mitoseg segment`` on a stack bigger than its own labels can comfortably hold:
streamed into zarr versus written whole.

Builds a synthetic (Z, 2048, 2048) uint8 zarr stack (the seeded sample, tiled; written slice by
slice), then runs, each in a fresh subprocess with 2 threads:

- ``mitoseg segment big.zarr -o out.zarr``: the streaming path (slice in, slice out);
- ``mitoseg segment big.zarr -o out.tif``: the in-memory path (the whole label volume is held,
  then written).

and prints the stack size, wall time and peak resident memory (``ru_maxrss``) of each.

    python benchmarks/bench_streaming.py [--slices 240] [--dir /tmp/mitoseg-stream]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

CHILD = """
import resource, sys, torch
torch.set_num_threads(2)
from napari_mitoseg.cli import main
rc = main(sys.argv[1:])
print("MAXRSS_KB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
sys.exit(rc)
"""


def make_stack(path: Path, z: int, side: int = 2048) -> None:
    import zarr

    from napari_mitoseg.synthetic import make_sample

    tile, _ = make_sample((4, 512, 512), seed=0)
    arr = zarr.open(str(path), mode="w", shape=(z, side, side), dtype=np.uint8, chunks=(1, side, side))
    for i in range(z):
        arr[i] = np.tile(tile[i % 4], (side // 512, side // 512))


def run(args: list[str]) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "2", "HF_HUB_OFFLINE": "1"}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", CHILD, *args], capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(proc.stderr)
    kb = int(proc.stdout.split("MAXRSS_KB")[-1].split()[0])
    return {"seconds": round(seconds, 1), "peak_rss_mib": round(kb / 1024)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--slices", type=int, default=240)
    ap.add_argument("--dir", default="/tmp/mitoseg-stream")
    a = ap.parse_args(argv)
    d = Path(a.dir)
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    stack = d / "big.zarr"
    make_stack(stack, a.slices)
    size_mib = a.slices * 2048 * 2048 / 2**20
    for out in ("out.zarr", "out.tif"):
        row = run(["segment", str(stack), "-o", str(d / out), "--device", "cpu"])
        print(json.dumps({"stack": [a.slices, 2048, 2048], "stack_mib": round(size_mib),
                          "output": out, **row}), flush=True)
    shutil.rmtree(d, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Memory of opening a big TIFF and reading one slice, lazily (over ``io.LAZY_BYTES``) and whole.

Writes a 130 MB (Z, Y, X) uint8 TIFF of noise to a temporary folder, then in a fresh subprocess
per mode opens it with ``io.read_stack`` and reads its middle slice, and prints the peak of the
memory traced by ``tracemalloc`` (numpy's array buffers included; libraries imported first) and,
in another subprocess without tracing, the seconds taken to open it and read the slice, and the
mean time of reading five further slices.

    python benchmarks/lazy_tiff.py [--mb 130]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = """
import json, sys, time, tracemalloc
import dask.array, numpy as np, tifffile, zarr  # imported before measuring: not the file's memory
from napari_mitoseg import io
trace = sys.argv[2] == "trace"
if trace:
    tracemalloc.start()
t0 = time.perf_counter()
arr = io.read_stack(sys.argv[1], lazy={lazy})
one = np.asarray(arr[arr.shape[0] // 2])
seconds = time.perf_counter() - t0
t1 = time.perf_counter()
for k in range(1, 6):
    np.asarray(arr[(arr.shape[0] // 2 + 7 * k) % arr.shape[0]])
more = (time.perf_counter() - t1) / 5
peak = tracemalloc.get_traced_memory()[1] / 1e6 if trace else None
print(json.dumps({{"type": type(arr).__module__.split(".")[0], "peak_mb": peak, "seconds": seconds,
                  "more": more}}))
"""


def _child(path: Path, lazy, mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD.format(lazy=lazy), str(path), mode],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=float, default=130.0, help="file size in MB")
    args = ap.parse_args()
    import numpy as np
    import tifffile

    from napari_mitoseg import io

    side = 1024
    z = max(1, int(round(args.mb * 1e6 / side / side)))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "big.tif"
        rng = np.random.default_rng(0)
        with tifffile.TiffWriter(path) as tif:
            for _ in range(z):
                tif.write(rng.integers(0, 255, (side, side), dtype=np.uint8), contiguous=True,
                          photometric="minisblack")
        size = path.stat().st_size
        print(f"file: {z} x {side} x {side} uint8, {size / 1e6:.0f} MB; io.LAZY_BYTES = "
              f"{io.LAZY_BYTES / 2**20:.0f} MiB -> default {'lazy' if size > io.LAZY_BYTES else 'whole'}")
        for lazy in (None, True, False):
            timed, traced = _child(path, lazy, "time"), _child(path, lazy, "trace")
            print(f"lazy={lazy!s:5}: {timed['type']:5} array, peak traced memory "
                  f"{traced['peak_mb']:6.1f} MB, {timed['seconds']:.2f} s to open and read one slice, "
                  f"{timed['more']:.3f} s per further slice")


if __name__ == "__main__":
    main()

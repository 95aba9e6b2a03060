"""Inference time per slice in a process started as a dask nanny starts its workers
(``MALLOC_TRIM_THRESHOLD_=65536``), without that setting, and with it undone at run time by
:func:`napari_mitoseg.distributed.blocks._undo_malloc_trim` (what a worker does before its first block).

Each case runs in a fresh subprocess, one thread, the shipped model, ``--slices`` slices of
1024 x 1024 (the seeded sample, tiled) after one warm-up slice; prints wall and CPU seconds per
slice as JSON.

    python benchmarks/bench_malloc_trim.py [--slices 4] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

CHILD = """
import json, sys, time
import numpy as np, torch
torch.set_num_threads(1)
from napari_mitoseg import api
from napari_mitoseg.distributed.blocks import _undo_malloc_trim
from napari_mitoseg.inference import PredictOptions, iter_predict
from napari_mitoseg.synthetic import make_sample
if sys.argv[1] == "undo":
    _undo_malloc_trim()
n = int(sys.argv[2])
tile, _ = make_sample((4, 512, 512), seed=0)
im = np.stack([np.tile(tile[i % 4], (2, 2)) for i in range(n)])
m = api.get_model(None, "cpu")
list(iter_predict(m, im[:1]))
t, c = time.perf_counter(), time.process_time()
list(iter_predict(m, im, PredictOptions(z_smooth=True)))
print(json.dumps({"s_per_slice": (time.perf_counter() - t) / n, "cpu_s_per_slice": (time.process_time() - c) / n}))
"""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slices", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args(argv)
    base = {k: v for k, v in os.environ.items() if k != "MALLOC_TRIM_THRESHOLD_"}
    base.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    cases = {"plain": (base, "keep"), "nanny_setting": ({**base, "MALLOC_TRIM_THRESHOLD_": "65536"}, "keep"),
             "nanny_setting_undone": ({**base, "MALLOC_TRIM_THRESHOLD_": "65536"}, "undo")}
    out: dict = {"slices": args.slices, "side": 1024, "load_average_at_start": os.getloadavg()[0]}
    for _ in range(args.repeats):
        for name, (env, mode) in cases.items():
            proc = subprocess.run([sys.executable, "-c", CHILD, mode, str(args.slices)], env=env,
                                  capture_output=True, text=True, check=True)
            fig = json.loads(proc.stdout.strip().splitlines()[-1])
            out.setdefault(name, []).append({k: round(v, 3) for k, v in fig.items()})
    out["load_average_at_end"] = os.getloadavg()[0]
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Fine-tuning steps on a busy machine: torch threads chosen by the load against a fixed 2.

Starts ``--load`` busy processes (pure Python loops, like other programs on a shared
workstation), then times ``--steps`` fine-tuning steps of the shipped model on the synthetic
sample, once with the threads :func:`napari_mitoseg.model.spare_cpu_threads` picks (what
``iter_train`` does) and once with 2 threads fixed; prints seconds per step for each. Run with
nothing else on the machine.

    python benchmarks/bench_finetune_load.py [--load 8] [--steps 20]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import time


def _spin(stop) -> None:
    while not stop.is_set():
        sum(range(10_000))


def _steps(fixed: int | None, steps: int) -> dict:
    import dataclasses

    import torch

    from napari_mitoseg.synthetic import make_sample
    from napari_mitoseg.training import FINETUNE, iter_train

    if fixed:
        os.environ["MITOSEG_THREADS"] = str(fixed)
    else:
        os.environ.pop("MITOSEG_THREADS", None)
        os.environ.pop("OMP_NUM_THREADS", None)
    image, mask = make_sample(shape=(2, 512, 512), seed=0)
    cfg = dataclasses.replace(FINETUNE, steps=steps, checkpoint_every=0)
    t0 = time.perf_counter()
    hist = list(iter_train(image, mask, config=cfg, base="mito-em-v3", device="cpu"))[-1].history
    per_step = [h["seconds"] for h in hist[2:]]  # the first steps warm up
    return {"threads": hist[-1]["threads"], "s_per_step": round(sum(per_step) / len(per_step), 3),
            "wall_s": round(time.perf_counter() - t0, 1), "torch_default": torch.get_num_threads()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--load", type=int, default=8)
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args(argv)
    stop = mp.Event()
    procs = [mp.Process(target=_spin, args=(stop,), daemon=True) for _ in range(args.load)]
    for p in procs:
        p.start()
    time.sleep(65)  # let the 1-minute load average see them
    try:
        for fixed in (None, 2):
            row = _steps(fixed, args.steps)
            print(json.dumps({"busy_processes": args.load, "load_1min": round(os.getloadavg()[0], 1),
                              "threads_by": "fixed" if fixed else "load", **row}), flush=True)
    finally:
        stop.set()
        for p in procs:
            p.join()
    return 0


if __name__ == "__main__":
    sys.exit(main())

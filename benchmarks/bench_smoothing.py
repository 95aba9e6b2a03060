"""Cost of z-smoothing: milliseconds per slice for the adjacent-slice filter and for the wide
smoothing of a near-isotropic stack, and the time to estimate a stack's z step.

    python benchmarks/bench_smoothing.py [--side 1024] [--slices 60]

Probability slices are random float32 (Y, X) arrays; their signatures are all alike, so every
slice within the reach is averaged (the most work wide smoothing does).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from napari_mitoseg.neighbours import estimate_z_step, reach, smooth_z
from napari_mitoseg.synthetic import make_isotropic


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--side", type=int, default=1024)
    ap.add_argument("--slices", type=int, default=60)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    probs = [rng.random((args.side, args.side), dtype=np.float32) for _ in range(args.slices)]
    sig = rng.standard_normal((64, 64)).astype(np.float32)
    sig = (sig - sig.mean()) / sig.std()
    print(f"{args.slices} slices of {args.side} x {args.side}, reach {reach(probs[0].shape)}")
    for wide in (False, True):
        t = time.perf_counter()
        n = sum(1 for _ in smooth_z(iter(probs), iter([sig] * len(probs)), wide=wide))
        ms = 1000 * (time.perf_counter() - t) / n
        print(f"{'wide (near-isotropic)' if wide else 'adjacent slices'}: {ms:.1f} ms per slice")
    stack = make_isotropic((40, args.side, args.side))
    t = time.perf_counter()
    step = estimate_z_step(stack)
    print(f"estimate_z_step on a (40, {args.side}, {args.side}) stack: {time.perf_counter() - t:.2f} s "
          f"(z step {step:.2f} pixels)")


if __name__ == "__main__":
    main()

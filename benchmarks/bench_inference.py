"""CPU inference speed and peak memory: napari-mitoseg's stack inference against a naive baseline.

    .venv/bin/python benchmarks/bench_inference.py [--slices N] [--threads 2]

Data: the 1024 x 1024 slices of the SBEM testing stack (``api.sbem_dir()``), or, where that is
absent, a synthetic stack of the same size (the output says which). Each side runs in a fresh
subprocess, so its peak resident memory (``ru_maxrss``) is its own:

- mitoseg: the shipped default model (``model.DEFAULT_MODEL``, a ``timm-regnety_004`` U-Net
  that sees slices at half resolution) when it is installed, else randomly initialised with
  that spec (the speed is the same), through
  :func:`napari_mitoseg.inference.iter_predict` (eval, inference mode, channels-last, tiles).
- naive: an smp U-Net with a ``resnet34`` encoder, batch 1, float32, plain ``torch.no_grad()``
  forward of the whole slice, no channels-last, no tiling.

Both read the whole stack first, run one warm-up slice, then time every slice.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

SBEM_STACK = "test_image.tif"


def _rss_mb() -> float:
    """Current resident memory of this process, MiB."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _load_stack(n: int | None):
    import numpy as np

    from napari_mitoseg.api import sbem_dir

    d = sbem_dir()
    if d is not None:
        import tifffile

        image, source = tifffile.imread(d / SBEM_STACK), f"SBEM testing stack ({d / SBEM_STACK})"
    else:
        from napari_mitoseg.synthetic import make_sample

        image, _ = make_sample((10, 1024, 1024), seed=0)
        source = "synthetic 1024 x 1024 stack (the SBEM data was not found)"
    image = np.ascontiguousarray(image[:n] if n else image)
    return image, source


def _mitoseg_model():
    from napari_mitoseg.model import (
        DEFAULT_MODEL,
        LoadedModel,
        ModelError,
        ModelSpec,
        build_model,
        load_model,
    )

    try:
        model = load_model(DEFAULT_MODEL, device="cpu")
        return model, f"{DEFAULT_MODEL} (shipped)"
    except ModelError:
        import torch

        spec = ModelSpec(encoder="timm-regnety_004", decoder_channels=(128, 64, 32, 16, 16),
                         input_scale=0.5)
        net = build_model(spec).eval().to(memory_format=torch.channels_last)
        return LoadedModel(net=net, spec=spec, name="random"), "default spec, random weights"


def child(kind: str, n: int | None, threads: int) -> dict:
    import numpy as np
    import torch

    torch.set_num_threads(threads)
    image, source = _load_stack(n)
    if kind == "mitoseg":
        from napari_mitoseg.inference import iter_predict

        model, what = _mitoseg_model()

        def run(stack):
            return [r.mask for r in iter_predict(model, stack)]

    else:
        import segmentation_models_pytorch as smp

        net = smp.Unet("resnet34", encoder_weights=None, in_channels=1, classes=1).eval()
        what = "smp Unet resnet34, batch 1, float32, no channels-last, no tiling"

        def run(stack):
            out = []
            for s in stack:
                x = torch.from_numpy(s.astype(np.float32) / 255.0)[None, None]
                with torch.no_grad():
                    out.append((torch.sigmoid(net(x))[0, 0] > 0.5).numpy())
            return out

    run(image[:1])  # warm-up: first-call allocations and kernel selection
    rss_before = _rss_mb()
    t0 = time.perf_counter()
    masks = run(image)
    seconds = time.perf_counter() - t0
    assert len(masks) == len(image) and masks[0].shape == image.shape[1:]
    return {
        "kind": kind, "model": what, "data": source, "slices": len(image),
        "slice_shape": list(image.shape[1:]), "threads": threads, "seconds": round(seconds, 2),
        "slices_per_s": round(len(image) / seconds, 3), "s_per_slice": round(seconds / len(image), 3),
        "peak_rss_mb": round(_peak_mb(), 1), "rss_before_mb": round(rss_before, 1),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--slices", type=int, default=None, help="first N slices only (default: all)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    p.add_argument("--child", choices=["mitoseg", "naive"], help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.slices, args.threads)), flush=True)
        return 0
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(args.threads)}
    results = {}
    for kind in ("mitoseg", "naive"):
        cmd = [sys.executable, __file__, "--child", kind, "--threads", str(args.threads)]
        if args.slices:
            cmd += ["--slices", str(args.slices)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
        if proc.returncode != 0:
            print(proc.stderr, file=sys.stderr)
            return proc.returncode
        results[kind] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(json.dumps(results[kind]), flush=True)
    m, n = results["mitoseg"], results["naive"]
    print(f"\ndata: {m['data']}, {m['slices']} slices of {m['slice_shape'][0]} x {m['slice_shape'][1]}, "
          f"{args.threads} threads")
    print(f"{'':8} {'slices/s':>9} {'s/slice':>8} {'peak RSS MiB':>13}  model")
    for r in (m, n):
        print(f"{r['kind']:8} {r['slices_per_s']:9.3f} {r['s_per_slice']:8.2f} {r['peak_rss_mb']:13.0f}  "
              f"{r['model']}")
    print(f"speed-up {m['slices_per_s'] / n['slices_per_s']:.2f}x, "
          f"peak memory {m['peak_rss_mb'] / n['peak_rss_mb']:.2f}x of the naive baseline")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Speed of the morphology measurements (``mitoseg measure``) on a synthetic label volume.

Places ``--objects`` random ellipsoids (mitochondria-sized: 100-250 nm across, up to 1.5 um
long, random orientation) in a (Z, Y, X) volume at 30 x 8 x 8 nm voxels, splits the mask into 3D
objects and times, on one thread:

- the split of the mask into 3D-connected objects (``postprocess.instances``);
- the measurements without surfaces (volume, axes, extent: ``measure(..., surfaces=False)``);
- the full measurements (with the blurred marching-cubes surface of every object);
- ``mitoseg measure ... --meshes`` end to end (read, split, measure, CSV, one PLY per object).

    python benchmarks/bench_measure.py [--objects 1000] [--shape 100 1024 1024]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

VOXEL = (30.0, 8.0, 8.0)


def make_volume(shape, n, seed=0) -> np.ndarray:
    """A uint8 mask with ``n`` random, rotated ellipsoids, none in another's bounding box."""
    rng = np.random.default_rng(seed)
    mask = np.zeros(shape, np.uint8)
    vox = np.asarray(VOXEL)
    placed = 0
    while placed < n:
        semi = np.array([rng.uniform(50, 125), rng.uniform(50, 125), rng.uniform(100, 750)])  # nm
        q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
        half = np.ceil(semi.max() / vox).astype(int)
        c = [rng.integers(h, s - h) if s > 2 * h else s // 2 for h, s in zip(half, shape, strict=True)]
        sl = tuple(slice(max(0, ci - h), min(s, ci + h + 1)) for ci, h, s in zip(c, half, shape, strict=True))
        if mask[sl].any():  # keep them apart: one object each
            continue
        grid = np.stack(np.meshgrid(*[(np.arange(s.start, s.stop) - ci) * v for s, ci, v in
                                      zip(sl, c, vox, strict=True)], indexing="ij"), -1)
        local = grid @ q
        inside = ((local / semi) ** 2).sum(-1) <= 1
        mask[sl][inside] = 1
        placed += 1
    return mask


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--objects", type=int, default=1000)
    p.add_argument("--shape", type=int, nargs=3, default=[100, 1024, 1024])
    args = p.parse_args()

    from napari_mitoseg.cli import main as cli
    from napari_mitoseg.io import write_labels
    from napari_mitoseg.morphology import measure
    from napari_mitoseg.postprocess import instances

    t = time.perf_counter()
    mask = make_volume(tuple(args.shape), args.objects)
    print(f"volume {tuple(args.shape)} at {VOXEL} nm, {args.objects} ellipsoids placed in "
          f"{time.perf_counter() - t:.1f} s")
    t = time.perf_counter()
    lab = instances(mask, min_size=64)
    t_split = time.perf_counter() - t
    t = time.perf_counter()
    rows = measure(lab, VOXEL, surfaces=False)
    t_plain = time.perf_counter() - t
    t = time.perf_counter()
    rows = measure(lab, VOXEL)
    t_full = time.perf_counter() - t
    n = len(rows)
    print(f"objects after the split: {n}; median {np.median([r.voxels for r in rows]):.0f} voxels")
    print(f"split into 3D objects:         {t_split:6.2f} s")
    print(f"measure without surfaces:      {t_plain:6.2f} s  ({1000 * t_plain / n:.2f} ms per object)")
    print(f"measure with surfaces:         {t_full:6.2f} s  ({1000 * t_full / n:.2f} ms per object)")
    with tempfile.TemporaryDirectory() as tmp:
        src = write_labels(Path(tmp) / "mask.tif", mask)
        t = time.perf_counter()
        rc = cli(["measure", str(src), "--voxel-size", *map(str, VOXEL), "-o", str(Path(tmp) / "m.csv"),
                  "--meshes", str(Path(tmp) / "meshes")])
        t_cli = time.perf_counter() - t
        n_ply = len(list((Path(tmp) / "meshes").iterdir()))
    print(f"mitoseg measure --meshes:      {t_cli:6.2f} s  (exit {rc}, {n_ply} PLY files)")


if __name__ == "__main__":
    main()

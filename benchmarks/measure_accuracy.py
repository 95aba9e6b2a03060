"""Accuracy of the morphology measurements on voxelised shapes with known answers.

For balls, ellipsoids, capsules (tubes with round ends) and boxes at isotropic and anisotropic
voxel sizes, prints the error of the volume, of the surface (``morphology.measure``: a blurred
mask meshed at the level enclosing its voxel volume) and, for comparison, of the surface of a
marching-cubes mesh of the raw binary mask.

    python benchmarks/measure_accuracy.py
"""

from __future__ import annotations

import math

import numpy as np


def ellipsoid(semi, vox, offset=(0.3, 0.2, 0.1)):
    n = [int(math.ceil(s / v)) + 3 for s, v in zip(semi, vox, strict=True)]
    g = np.meshgrid(*[(np.arange(-k, k + 1) + o) * v for k, v, o in zip(n, vox, offset, strict=True)],
                    indexing="ij")
    a, b, c = semi
    p = 1.6075  # Knud Thomsen's formula: within 1.1 % (exact for a ball)
    area = 4 * math.pi * (((a * b) ** p + (a * c) ** p + (b * c) ** p) / 3) ** (1 / p)
    return sum((x / s) ** 2 for x, s in zip(g, semi, strict=True)) <= 1, 4 / 3 * math.pi * a * b * c, area


def capsule(r, length, vox):
    n = [int(math.ceil((r if i < 2 else r + length / 2) / v)) + 3 for i, v in enumerate(vox)]
    z, y, x = np.meshgrid(*[(np.arange(-k, k + 1) + 0.25) * v for k, v in zip(n, vox, strict=True)],
                          indexing="ij")
    inside = z**2 + y**2 + np.clip(np.abs(x) - length / 2, 0, None) ** 2 <= r * r
    volume = math.pi * r * r * length + 4 / 3 * math.pi * r**3
    return inside, volume, 2 * math.pi * r * length + 4 * math.pi * r * r


def box(sides, vox):
    n = [round(s / v) for s, v in zip(sides, vox, strict=True)]
    a, b, c = (k * v for k, v in zip(n, vox, strict=True))
    m = np.zeros([k + 4 for k in n], bool)
    m[2:-2, 2:-2, 2:-2] = True
    return m, a * b * c, 2 * (a * b + a * c + b * c)


SHAPES = [  # (name, voxel size in nm Z Y X, shape(voxel size) -> (mask, volume nm^3, area nm^2))
    ("ball d=600", (30, 8, 8), lambda v: ellipsoid((300, 300, 300), v)),
    ("ball d=200", (30, 8, 8), lambda v: ellipsoid((100, 100, 100), v)),
    ("ball d=150", (30, 8, 8), lambda v: ellipsoid((75, 75, 75), v)),
    ("ball d=400", (10, 10, 10), lambda v: ellipsoid((200, 200, 200), v)),
    ("ball d=600", (50, 10, 10), lambda v: ellipsoid((300, 300, 300), v)),
    ("ball d=200", (40, 5, 5), lambda v: ellipsoid((100, 100, 100), v)),
    ("ellipsoid 800x400x240", (30, 8, 8), lambda v: ellipsoid((400, 200, 120), v)),
    ("ellipsoid 240x600x1000", (40, 6, 6), lambda v: ellipsoid((120, 300, 500), v)),
    ("disc 120x400x400", (30, 8, 8), lambda v: ellipsoid((60, 200, 200), v)),
    ("ellipsoid 600x300x300", (50, 5, 5), lambda v: ellipsoid((300, 150, 150), v)),
    ("capsule d=200 L=1200", (30, 8, 8), lambda v: capsule(100, 1000, v)),
    ("capsule d=300 L=1800", (30, 8, 8), lambda v: capsule(150, 1500, v)),
    ("capsule d=160 L=960", (40, 5, 5), lambda v: capsule(80, 800, v)),
    ("box 1200x900x900", (30, 8, 8), lambda v: box((1200, 900, 900), v)),
    ("box 600x400x400", (30, 8, 8), lambda v: box((600, 400, 400), v)),
    ("box 900x1200x1500", (40, 6, 6), lambda v: box((900, 1200, 1500), v)),
    ("box 600x600x600", (10, 10, 10), lambda v: box((600, 600, 600), v)),
]


def main() -> None:
    from skimage.measure import marching_cubes, mesh_surface_area

    from napari_mitoseg.morphology import measure

    print(f"{'shape (nm)':24s} {'voxel (nm)':12s} {'volume':>8s} {'surface':>8s} {'raw mesh':>9s} "
          f"{'sphericity':>10s}")
    for name, vox, make in SHAPES:
        mask, volume, area = make(vox)
        (r,) = measure(mask.astype(np.uint8), vox)
        v, f, _, _ = marching_cubes(np.pad(mask, 2).astype(np.float32), 0.5, spacing=vox)
        raw = mesh_surface_area(v, f) / 1e6
        print(f"{name:24s} {'x'.join(map(str, vox)):12s} {100 * (r.volume_um3 / (volume / 1e9) - 1):+7.1f}% "
              f"{100 * (r.surface_um2 / (area / 1e6) - 1):+7.1f}% {100 * (raw / (area / 1e6) - 1):+8.1f}% "
              f"{r.sphericity:10.3f}")


if __name__ == "__main__":
    main()

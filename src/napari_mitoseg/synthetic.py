"""A synthetic EM-like volume with ground truth, generated in code (seeded).

Round and elongated mitochondria (dark double membrane, textured matrix with cristae) among
cell membranes, vesicles and shot noise, drawn with numpy/scipy/scikit-image. Used by the
napari sample-data menu, ``make run``, the demo and the fast tests; real data is never shipped.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi


def make_sample(
    shape: tuple[int, int, int] = (16, 512, 512), n_mito: int | None = None, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(image, mask)``: (Z, Y, X) uint8 EM-like image and uint8 0/1 mitochondria mask.

    Mitochondria are 3D ellipsoids (random orientation in the slice plane, elongated ones
    spanning several slices), so the mask stacks into a connected 3D volume.
    """
    from skimage.segmentation import find_boundaries

    rng = np.random.default_rng(seed)
    z, h, w = shape
    area = h * w
    n_mito = n_mito if n_mito is not None else max(3, int(area / 9000))
    if z * area > 2**25:
        raise ValueError(f"synthetic volume {shape} is too large; keep it under 32 M voxels")
    zz, yy, xx = np.mgrid[0:z, 0:h, 0:w].astype(np.float32)

    # cytoplasm: smooth background with cell membranes (boundaries of a Voronoi partition)
    base = ndi.gaussian_filter(rng.normal(0, 1, shape).astype(np.float32), (1, 6, 6))
    img = 150 + 25 * base / (base.std() + 1e-6)
    seeds = np.zeros(shape, np.int32)
    n_cells = max(2, int(area / 40000))
    for i in range(n_cells):
        seeds[:, rng.integers(h), rng.integers(w)] = i + 1
    _, (iy, ix) = ndi.distance_transform_edt(seeds[0] == 0, return_indices=True)
    cells = np.broadcast_to(seeds[0][iy, ix], shape)
    membranes = np.stack([find_boundaries(c, mode="thick") for c in cells])
    membranes = ndi.binary_dilation(membranes, iterations=1)
    img[membranes] -= 60

    mask = np.zeros(shape, bool)
    for _ in range(n_mito):
        cz, cy, cx = rng.uniform(0, z), rng.uniform(0, h), rng.uniform(0, w)
        a = rng.uniform(12, 40)  # semi-axis along the long direction (pixels)
        b = rng.uniform(9, 16)
        c = rng.uniform(2.0, 5.0)  # semi-axis in z (slices)
        t = rng.uniform(0, np.pi)
        dy, dx = yy - cy, xx - cx
        u = dx * np.cos(t) + dy * np.sin(t)
        v = -dx * np.sin(t) + dy * np.cos(t)
        r = (u / a) ** 2 + (v / b) ** 2 + ((zz - cz) / c) ** 2
        inside = r <= 1.0
        if not inside.any():
            continue
        mask |= inside
        shell = inside & (r > 0.72)  # dark double membrane
        img[inside] = 120 + 15 * np.sin(u[inside] * 0.8 + rng.uniform(0, 6))  # cristae
        img[shell] = 55
    # vesicles: small bright-centred dark rings (distractors, not mitochondria)
    for _ in range(n_mito * 2):
        cy, cx, rad = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(3, 7)
        d = np.hypot(yy[0] - cy, xx[0] - cx)
        ring = (np.abs(d - rad) < 1.5) & ~mask[0]
        zs = slice(int(rng.integers(z)), None)
        img[zs][:, ring] = 70
    img += rng.normal(0, 12, shape).astype(np.float32)
    img = ndi.gaussian_filter(img, (0, 0.8, 0.8))
    return np.clip(img, 0, 255).astype(np.uint8), mask.astype(np.uint8)


def make_isotropic(shape: tuple[int, int, int] = (36, 96, 112), seed: int = 0, blob: float = 3.0) -> np.ndarray:
    """A (Z, Y, X) uint8 texture alike in every direction (3D noise smoothed over ``blob``
    voxels): a stand-in for a near-isotropic FIB-SEM stack, whose z step equals its pixel size."""
    from scipy.ndimage import gaussian_filter

    v = gaussian_filter(np.random.default_rng(seed).standard_normal(shape).astype(np.float32), blob)
    return ((v - v.min()) / (v.max() - v.min()) * 255).astype(np.uint8)

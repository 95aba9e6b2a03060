"""Augmentation of training crops: the geometric and intensity transforms of each recipe
(:data:`~.config.AUGMENTS`) and the artefacts of other microscopes."""

from __future__ import annotations

import numpy as np

from .config import IGNORE, TrainConfig


def transforms(cfg: TrainConfig):
    """(geometry, intensity): torchvision transforms of ``cfg.augment``'s recipe; geometry
    resizes a crop to ``cfg.tile`` and moves image and mask together."""
    from torchvision.transforms import v2

    t = cfg.tile
    geo = [v2.Resize((t, t), antialias=True), v2.RandomHorizontalFlip(), v2.RandomVerticalFlip()]
    if cfg.augment == "basic":
        return v2.Compose(geo), v2.ColorJitter(brightness=0.2)
    strong = cfg.augment == "strong"
    geometry = v2.Compose([*geo, v2.RandomApply([v2.ElasticTransform(alpha=25.0, sigma=6.0)], p=0.2)])
    intensity = v2.Compose(
        [
            v2.ColorJitter(brightness=0.5 if strong else 0.35, contrast=0.6 if strong else 0.45),
            v2.RandomApply([v2.GaussianBlur(7 if strong else 5, sigma=(0.3, 2.2 if strong else 1.5))],
                           p=0.35 if strong else 0.3),
            v2.RandomApply([v2.GaussianNoise(sigma=0.1 if strong else 0.06, clip=True)],
                           p=0.4 if strong else 0.3),
        ]
    )
    return geometry, intensity


def augment_crop(im, mk, cfg: TrainConfig, geometry, intensity, rng: np.random.Generator):
    """One (1, h, w) image crop in [0, 1] and its mask, as tv_tensors, through ``cfg.augment``'s
    recipe: geometry, a rotation by a multiple of 90 degrees, intensity, the artefacts of
    :func:`em_artefacts` (``"strong"``) and a gamma change. Returns (image, mask) tensors of
    (1, tile, tile) float32, the image in [-1, 1]."""
    import torch
    from torchvision.transforms.v2 import functional as F

    im, mk = geometry(im, mk)
    k = int(rng.integers(4))
    im, mk = torch.rot90(im, k, (1, 2)), torch.rot90(mk, k, (1, 2))
    im = intensity(im)
    if cfg.augment == "strong":
        im, mk = em_artefacts(im, mk, rng)
    if cfg.augment != "basic" and rng.random() < (0.5 if cfg.augment == "strong" else 0.3):
        g = 0.7 if cfg.augment == "strong" else 0.4
        im = F.adjust_gamma(im.clamp(0, 1), float(np.exp(rng.uniform(-g, g))))
    return im.as_subclass(torch.Tensor).float() * 2.0 - 1.0, mk.as_subclass(torch.Tensor).float()



def em_artefacts(im, mask, rng: np.random.Generator):
    """Artefacts of other microscopes and preparations on a (1, T, T) float crop in [0, 1],
    each applied at random: uneven illumination (a linear ramp of brightness), scan-line
    stripes (row or column offsets), low-dose noise (Poisson-like, stronger in bright areas),
    and debris or missing data (a dark or bright blob, its pixels marked :data:`IGNORE` in the
    (1, T, T) ``mask``). Returns (image, mask)."""
    import torch

    _, h, w = im.shape
    g = torch.Generator().manual_seed(int(rng.integers(2**31)))
    if rng.random() < 0.3:  # uneven illumination or charging
        a, angle = rng.uniform(-0.35, 0.35), rng.uniform(0, 2 * np.pi)
        yy, xx = torch.meshgrid(torch.linspace(-0.5, 0.5, h), torch.linspace(-0.5, 0.5, w), indexing="ij")
        im = im * (1.0 + a * (np.cos(angle) * yy + np.sin(angle) * xx))[None]
    if rng.random() < 0.2:  # scan-line stripes
        shape = (1, h, 1) if rng.random() < 0.5 else (1, 1, w)
        im = im + torch.randn(shape, generator=g) * float(rng.uniform(0.02, 0.08))
    if rng.random() < 0.2:  # low-dose shot noise
        k = float(rng.uniform(20, 120))
        im = torch.poisson(im.clamp(0, 1) * k, generator=g) / k
    if rng.random() < 0.05:  # debris / missing data
        r = float(rng.uniform(0.05, 0.2)) * min(h, w)
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        blob = ((yy - cy) ** 2 + (xx - cx) ** 2) < r * r
        im = torch.where(blob[None], torch.tensor(float(rng.integers(2))), im)
        mask = torch.where(blob[None], torch.tensor(IGNORE, dtype=mask.dtype), mask)
    return im.clamp(0, 1), mask



"""Tiles and sizes: pad to the encoder stride, cover a large slice with blended tiles, resize.

Pure array helpers of :mod:`napari_mitoseg.inference` (which re-exports them).
"""

from __future__ import annotations

import numpy as np

from .model import ModelSpec


def pad_to_stride(x: np.ndarray, stride: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Reflect-pad the last two axes up to multiples of ``stride``; return padded and (Y, X)."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % stride, (-w) % stride
    if ph or pw:
        pad = [(0, 0)] * (x.ndim - 2) + [(0, ph), (0, pw)]
        mode = "reflect" if ph < h and pw < w else "edge"
        x = np.pad(x, pad, mode=mode)
    return x, (h, w)


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of size ``tile`` covering ``length`` with at least ``overlap``."""
    if length <= tile:
        return [0]
    step = tile - overlap
    starts = list(range(0, length - tile, step))
    starts.append(length - tile)
    return starts


def blend_window(tile: int, overlap: int) -> np.ndarray:
    """(tile, tile) float32 weights: 1 inside, a cosine ramp over ``overlap`` at the edges."""
    ramp = np.ones(tile, np.float32)
    if overlap > 0:
        t = (np.arange(overlap, dtype=np.float32) + 0.5) / overlap
        ramp[:overlap] = 0.5 - 0.5 * np.cos(np.pi * t)
        ramp[-overlap:] = ramp[:overlap][::-1]
    return np.outer(ramp, ramp)


def tiled_apply(x: np.ndarray, fn, tile: int, overlap: int) -> np.ndarray:
    """Apply ``fn`` ((tile, tile) -> (tile, tile)) over overlapping tiles of (Y, X) ``x``, blended.

    Memory stays bounded by the tile size whatever the slice size. With an identity ``fn``
    the result equals ``x`` (the weights are normalised).
    """
    h, w = x.shape
    if h <= tile and w <= tile:
        return fn(x)
    th, tw = min(tile, h), min(tile, w)
    out = np.zeros((h, w), np.float32)
    weight = np.zeros((h, w), np.float32)
    win_full = blend_window(tile, overlap)
    for y in tile_starts(h, th, overlap):
        for xs in tile_starts(w, tw, overlap):
            win = win_full[:th, :tw] if (th, tw) != (tile, tile) else win_full
            out[y : y + th, xs : xs + tw] += fn(x[y : y + th, xs : xs + tw]) * win
            weight[y : y + th, xs : xs + tw] += win
    return out / np.maximum(weight, 1e-8)


def resize(x: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Resize the last two axes of float32 ``x`` to ``shape`` (bilinear, antialiased when shrinking)."""
    import torch
    import torch.nn.functional as F

    if tuple(x.shape[-2:]) == tuple(shape):
        return x
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    lead = t.shape[:-2]
    t = t.reshape(-1, 1, *t.shape[-2:])
    shrink = shape[0] < x.shape[-2] or shape[1] < x.shape[-1]
    y = F.interpolate(t, size=tuple(shape), mode="bilinear", align_corners=False, antialias=shrink)
    return y.reshape(*lead, *shape).numpy()


def network_shape(spec: ModelSpec, shape: tuple[int, int]) -> tuple[int, int]:
    """(Y, X) of a slice of ``shape`` as the network sees it (after ``spec.input_scale``)."""
    s = spec.input_scale
    return (max(8, round(shape[0] * s)), max(8, round(shape[1] * s)))

"""Drawing training crops: which slice, which centre (a mitochondrion, a pixel the model gets
wrong or any labelled pixel), at which scale; deterministic given (seed, step), so a resumed
run draws exactly what an uninterrupted one would."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..inference import for_stack, predict_slice
from ..model import LoadedModel
from .augment import augment_crop, transforms
from .config import IGNORE, TrainConfig


class CropSampler:
    """Draws augmented (image, mask) crops; deterministic given (seed, step).

    ``ratios`` (one per slice, default 1) is each slice's pixel size over the model's: a crop is
    resized by ``input_scale * ratio``, so every slice reaches the network at the model's pixel
    size. ``weights`` (one per slice, default: labelled pixels) set how often a slice is drawn.
    """

    def __init__(self, images: list[np.ndarray], masks: list[np.ndarray], cfg: TrainConfig,
                 input_scale: float = 1.0, invert: bool = False,
                 ratios: Sequence[float] | None = None, weights: Sequence[float] | None = None):
        import torch

        self.images, self.masks, self.cfg = images, masks, cfg
        self.input_scale, self.invert = input_scale, invert
        self.ratios = [1.0] * len(images) if ratios is None else [float(r) for r in ratios]
        #: flat indices of wrongly predicted pixels per slice (see :meth:`set_hard`)
        self.hard: list[np.ndarray] = [np.zeros(0, np.int64) for _ in masks]
        if weights is None:
            weights = [float((m != IGNORE).sum()) for m in masks]
        w = np.asarray(weights, float)
        self.p_slice = w / w.sum()
        self.fg = [np.flatnonzero(m.ravel() == 1) for m in masks]
        self.lab = [np.flatnonzero(m.ravel() != IGNORE) for m in masks]
        self.geometry, self.intensity = transforms(cfg)
        self._torch = torch

    def add_slices(self, images: list[np.ndarray], masks: list[np.ndarray], ratios: Sequence[float],
                   share: float) -> None:
        """Draw from more slices (weakly labelled ones: self-training): ``share`` of the crops
        from them, each by its labelled pixels, the rest from the slices drawn so far."""
        w = np.array([float((m != IGNORE).sum()) for m in masks])
        if not len(masks) or w.sum() == 0:
            return
        self.p_slice = np.concatenate([self.p_slice * (1.0 - share), share * w / w.sum()])
        self.images, self.masks = [*self.images, *images], [*self.masks, *masks]
        self.ratios = [*self.ratios, *(float(r) for r in ratios)]
        self.hard += [np.zeros(0, np.int64) for _ in masks]
        self.fg += [np.flatnonzero(m.ravel() == 1) for m in masks]
        self.lab += [np.flatnonzero(m.ravel() != IGNORE) for m in masks]

    def crop_size(self, i: int, scale: float = 1.0) -> int:
        """Side in slice ``i``'s pixels of a crop that becomes one ``tile`` at the network, for an
        augmentation rescale by ``scale``."""
        return int(round(self.cfg.tile / (scale * self.input_scale * self.ratios[i])))

    def set_hard(self, model: LoadedModel) -> int:
        """Refresh the hard-example pools from ``model``'s errors; returns their total size."""
        for i, (im, m) in enumerate(zip(self.images, self.masks, strict=True)):
            pred = predict_slice(for_stack(model, self.ratios[i]), im) > model.spec.threshold
            wrong = (pred != (m == 1)) & (m != IGNORE)
            self.hard[i] = np.flatnonzero(wrong.ravel())
        return int(sum(len(h) for h in self.hard))

    def sample(self, step: int):
        """(B, 1, T, T) float32 in [-1, 1] and (B, 1, T, T) float32 masks (0, 1, 255)."""
        torch, cfg = self._torch, self.cfg
        rng = np.random.default_rng([cfg.seed, step])
        torch.manual_seed(cfg.seed * 1_000_003 + step)
        xs, ys = [], []
        for _ in range(cfg.batch_size):
            x, y = self._crop(rng)
            xs.append(x)
            ys.append(y)
        return torch.stack(xs), torch.stack(ys)

    def _crop(self, rng: np.random.Generator):
        """One augmented crop: (1, T, T) image in [-1, 1] and (1, T, T) mask."""
        from torchvision import tv_tensors

        torch, cfg = self._torch, self.cfg
        i = int(rng.choice(len(self.images), p=self.p_slice))
        img, msk = self.images[i], self.masks[i]
        h, w = img.shape
        if cfg.augment != "basic":
            lo, hi = np.log(cfg.scale_range[0]), np.log(cfg.scale_range[1])
            scale = float(np.exp(rng.uniform(lo, hi)))
        else:
            scale = 1.0
        c = self.crop_size(i, scale)
        ch, cw = min(c, h), min(c, w)
        cy, cx = divmod(self._centre(i, rng), w)
        y0 = int(np.clip(cy - ch // 2 + rng.integers(-ch // 4, ch // 4 + 1), 0, h - ch))
        x0 = int(np.clip(cx - cw // 2 + rng.integers(-cw // 4, cw // 4 + 1), 0, w - cw))
        crop, crop_mask = _square(img[y0 : y0 + ch, x0 : x0 + cw], msk[y0 : y0 + ch, x0 : x0 + cw], c)
        crop = 1.0 - crop if self.invert else crop  # the network's polarity (spec.invert)
        im = tv_tensors.Image(torch.from_numpy(np.ascontiguousarray(crop))[None])
        mk = tv_tensors.Mask(torch.from_numpy(np.ascontiguousarray(crop_mask))[None])
        return augment_crop(im, mk, cfg, self.geometry, self.intensity, rng)

    def _centre(self, i: int, rng: np.random.Generator) -> int:
        """Flat index in slice ``i`` of a crop's centre: a hard pixel, a mitochondrion pixel or
        any labelled one, in the shares the configuration sets."""
        cfg = self.cfg
        r = rng.random()
        if r < cfg.hard_fraction and len(self.hard[i]):
            pool = self.hard[i]
        elif r < cfg.hard_fraction + cfg.foreground_fraction and len(self.fg[i]):
            pool = self.fg[i]
        else:
            pool = self.lab[i]
        return int(pool[rng.integers(len(pool))])


def _square(crop: np.ndarray, mask: np.ndarray, side: int) -> tuple[np.ndarray, np.ndarray]:
    """A crop cut short by its slice's edge (a slice, or a side view of a thin stack, narrower
    than the crop) made ``side`` x ``side`` around its centre: the image mirrored outwards, the
    mask unlabelled there, so resizing to the tile keeps the crop's aspect ratio."""
    dy, dx = max(side - crop.shape[0], 0), max(side - crop.shape[1], 0)
    if not dy and not dx:
        return crop, mask
    pad = ((dy // 2, dy - dy // 2), (dx // 2, dx - dx // 2))
    mode = "symmetric" if min(crop.shape) > 1 else "edge"
    return np.pad(crop, pad, mode=mode), np.pad(mask, pad, constant_values=IGNORE)

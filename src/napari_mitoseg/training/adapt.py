"""Adapting a trained network to a new stack from a few labelled slices: which layers learn
(:func:`param_groups`, :func:`set_train_mode`), batch-norm statistics re-estimated on the stack
(AdaBN, :func:`adapt_batchnorm`) and weak labels for its unlabelled slices from the model's
confident predictions (self-training, :func:`pseudo_masks`)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from ..inference import _to_network, for_stack, predict_slice
from ..model import LoadedModel, ModelSpec
from ..tiling import pad_to_stride
from .config import IGNORE, TrainConfig

logger = logging.getLogger(__name__)


def spread(items: Sequence[int], n: int) -> list[int]:
    """At most ``n`` of ``items``, evenly spread over them (the first and last included)."""
    items = list(items)
    if len(items) <= n:
        return items
    picks = np.linspace(0, len(items) - 1, n).round().astype(int)
    return [items[i] for i in sorted(set(picks.tolist()))]


def _batchnorms(module) -> list:
    from torch.nn.modules.batchnorm import _BatchNorm

    return [m for m in module.modules() if isinstance(m, _BatchNorm)]


def param_groups(net, cfg: TrainConfig) -> list[dict]:
    """The optimiser's parameter groups: the encoder at ``cfg.encoder_lr`` times the learning
    rate (at 0 frozen: its parameters take no gradient and are left out), the rest at the
    learning rate. Networks without an ``encoder`` attribute learn as one group."""
    encoder = getattr(net, "encoder", None)
    if cfg.encoder_lr == 1.0 or encoder is None:
        return [{"params": [p for p in net.parameters() if p.requires_grad]}]
    enc_ids = {id(p) for p in encoder.parameters()}
    rest = [p for p in net.parameters() if id(p) not in enc_ids]
    if cfg.encoder_lr == 0:
        for p in encoder.parameters():
            p.requires_grad_(False)
        return [{"params": rest}]
    return [{"params": rest}, {"params": list(encoder.parameters()), "lr": cfg.lr * cfg.encoder_lr}]


def set_train_mode(net, cfg: TrainConfig) -> None:
    """``net`` in training mode, except what ``cfg`` keeps fixed: batch-norm layers (``bn`` other
    than ``"train"``: their running statistics stay) and a frozen encoder (``encoder_lr`` 0)."""
    net.train()
    if cfg.bn != "train":
        for m in _batchnorms(net):
            m.eval()
    encoder = getattr(net, "encoder", None)
    if cfg.encoder_lr == 0 and encoder is not None:
        encoder.eval()


#: AdaBN looks at the centre of each slice, at most this many network pixels a side (cost)
ADAPT_WINDOW = 512


def _centre(x: np.ndarray, side: int) -> np.ndarray:
    """The centre (..., <= side, <= side) window of (..., Y, X) ``x``."""
    h, w = x.shape[-2:]
    y0, x0 = max(0, (h - side) // 2), max(0, (w - side) // 2)
    return x[..., y0 : y0 + side, x0 : x0 + side]


def adapt_batchnorm(net, spec: ModelSpec, slices: Sequence[np.ndarray], ratios: Sequence[float], dev) -> int:
    """AdaBN: every batch-norm layer's running statistics re-estimated on (Y, X) raw ``slices``
    (each at its pixel ``ratio``), as the network sees them at inference (the centre
    :data:`ADAPT_WINDOW` pixels a side of each); the weights are left as they are. Returns the
    number of batch-norm layers."""
    import torch

    bns = _batchnorms(net)
    if not bns or not slices:
        return len(bns)
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the slices
    was_training = net.training
    net.train()
    model = LoadedModel(net=net, spec=spec, name="adapting")
    try:
        with torch.no_grad():
            for im, ratio in zip(slices, ratios, strict=True):
                s = for_stack(model, ratio).spec
                x, _ = pad_to_stride(_centre(_to_network([im], s), ADAPT_WINDOW), s.stride)
                t = torch.from_numpy(np.ascontiguousarray(x))[:, None].to(dev)
                if dev.type == "cpu":
                    t = t.contiguous(memory_format=torch.channels_last)
                net(t)
    finally:
        for m, mom in zip(bns, momenta, strict=True):
            m.momentum = mom
        net.train(was_training)
    logger.info("batch-norm statistics of %d layers re-estimated on %d slices", len(bns), len(slices))
    return len(bns)


def pseudo_masks(model: LoadedModel, slices: Sequence[np.ndarray], ratios: Sequence[float],
                 confidence: float) -> list[np.ndarray]:
    """Weak labels of (Y, X) ``slices`` from ``model``'s probabilities: uint8 1 above
    ``confidence``, 0 below ``1 - confidence``, :data:`IGNORE` between (unsure)."""
    model.net.eval()
    out = []
    for im, ratio in zip(slices, ratios, strict=True):
        p = predict_slice(for_stack(model, ratio), im)
        m = np.full(p.shape, IGNORE, np.uint8)
        m[p > confidence] = 1
        m[p < 1.0 - confidence] = 0
        out.append(m)
    return out

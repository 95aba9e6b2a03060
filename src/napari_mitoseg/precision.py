"""The arithmetic the network runs in: bfloat16 on CPUs that multiply it natively, float32
elsewhere (``MITOSEG_PRECISION`` fixes it), autocast on a GPU, and the inference copy of a network
with its batch norms folded into its convolutions."""

from __future__ import annotations

import contextvars
import copy
import functools
import os
import weakref
from contextlib import contextmanager

from .model_spec import ModelError

#: ``MITOSEG_PRECISION``: ``float32`` or ``bfloat16`` fixes the CPU's arithmetic (default: :func:`cpu_bf16`)
PRECISION_ENV = "MITOSEG_PRECISION"
_PRECISION: contextvars.ContextVar[str | None] = contextvars.ContextVar("mitoseg_precision", default=None)


@contextmanager
def precision(name: str):
    """Within the block, the CPU segments in ``name`` (``float32`` or ``bfloat16``), whatever the
    CPU or ``MITOSEG_PRECISION``: a bioimage.io package's reference output is float32, as any
    runner reproduces it."""
    if name not in ("float32", "bfloat16"):
        raise ModelError(f"precision must be float32 or bfloat16, got {name!r}")
    token = _PRECISION.set(name)
    try:
        yield
    finally:
        _PRECISION.reset(token)


def cpu_bf16() -> bool:
    """Whether the network segments in bfloat16 on this CPU: where the CPU multiplies bfloat16
    matrices in tiles (Intel AMX, ``amx_bf16`` in ``/proc/cpuinfo``): the network about 2x and the
    whole segmentation 1.25x faster than float32, for the same IoU (``docs/benchmarks.md``);
    float32 elsewhere (CPUs with only AVX512-BF16 were not measured; without either, bfloat16 is
    emulated and slower). ``MITOSEG_PRECISION``
    (``float32`` / ``bfloat16``) overrides: float32 gives the same probabilities on every CPU
    (cluster workers on machines of different CPUs)."""
    forced = _PRECISION.get() or os.environ.get(PRECISION_ENV, "").strip().lower()
    if forced in ("float32", "bfloat16"):
        return forced == "bfloat16"
    if forced:
        raise ModelError(f"{PRECISION_ENV} must be float32 or bfloat16, got {forced!r}")
    return _native_bf16()


@functools.cache
def _native_bf16() -> bool:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return "amx_bf16" in flags
    except OSError:  # not Linux: stay in float32
        pass
    return False


def autocast(device, cuda_dtype=None, cpu: bool = True):
    """The mixed precision the network runs in on ``device``: autocast on a CUDA GPU (float16, or
    ``cuda_dtype``), bfloat16 on a CPU where ``cpu`` and :func:`cpu_bf16`, float32 otherwise.
    Inference takes bfloat16 (the same IoU, 1.25x faster); training does not (``cpu=False``): on
    the CPU it cost fine-tunes 0.003-0.011 IoU for steps 1.5x faster (``docs/benchmarks.md``)."""
    import torch

    if device.type == "cuda":
        return torch.autocast("cuda", dtype=cuda_dtype or torch.float16)
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=cpu and device.type == "cpu" and cpu_bf16())


_FOLDED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def inference_net(net):
    """``net`` as inference runs it: in eval mode, a copy with each batch norm folded into the
    convolution before it (:func:`fold_batch_norms`), made once and made again only when the weights
    change (a model being fine-tuned); in training mode, ``net`` itself. Telling whether the weights
    changed reads every tensor's version counter, about 2 ms a call against 85-210 ms a forward pass."""
    import torch

    if net.training:
        return net
    version = tuple(t._version for t in net.state_dict().values())
    hit = _FOLDED.get(net)
    if hit is None or hit[0] != version:
        folded = fold_batch_norms(copy.deepcopy(net))
        if next(net.parameters()).device.type == "cpu":
            folded = folded.to(memory_format=torch.channels_last)
        hit = (version, folded)
        _FOLDED[net] = hit
    return hit[1]


def fold_batch_norms(net):
    """``net`` (in eval mode) with every batch norm that directly follows a convolution in an
    ``nn.Sequential`` folded into that convolution's weights (torch's ``fuse_conv_bn_eval``) and
    replaced by an identity: the same function, one layer fewer to run (the network 1.4x faster in
    bfloat16, the whole segmentation 10-15 %, ``docs/benchmarks.md``). Only Sequential containers
    are folded, where the order of the layers is the order they run in."""
    from torch import nn
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    for module in list(net.modules()):
        if not isinstance(module, nn.Sequential):
            continue
        names = list(module._modules)
        for a, b in zip(names, names[1:], strict=False):
            conv, bn = module._modules[a], module._modules[b]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats:
                module._modules[a] = fuse_conv_bn_eval(conv, bn)
                module._modules[b] = nn.Identity()
    return net

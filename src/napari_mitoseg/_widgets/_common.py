"""What the dock widgets share about layers: the metadata keys a result layer carries, which
layers are ours, masks or EM images, the recorded model output and the slices painted since,
what a model's card recommends, and the guard that keeps Triton away from Mesa's LLVM.

No Qt controls here (those are in :mod:`._controls`) and no numerics.
"""

from __future__ import annotations

import logging
import sys
import weakref
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)


def avoid_llvm_clash(maps_file: str | Path = "/proc/self/maps") -> bool:
    """Keep PyTorch from loading Triton into a process that already holds Mesa's LLVM.

    On Linux, napari's OpenGL canvas often runs on Mesa (llvmpipe, radeonsi), which maps a
    system ``libLLVM``. Triton, which the CUDA builds of PyTorch import, carries its own LLVM,
    and loading it beside Mesa's crashes the process with a segmentation fault. That happens
    when the first Segment click imports the model code. Nothing here compiles kernels, so
    if Triton is not loaded yet and a ``libLLVM`` is, Triton is marked unavailable; PyTorch
    then runs as without it. Returns True when it did so. Called before any worker starts.
    """
    if "triton" in sys.modules:
        return False
    try:
        maps = Path(maps_file).read_text(errors="replace")
    except OSError:
        return False
    if "libLLVM" not in maps:
        return False
    sys.modules["triton"] = None  # ``import triton`` now raises ImportError
    logger.info("Mesa's LLVM is loaded: Triton disabled in this process to avoid a crash")
    return True


#: layer.metadata key holding the last model output (numpy array) of a result layer.
MODEL_OUTPUT = "mitoseg_model_output"
#: layer.metadata key: the model output of the run before the last one (see painted_slices).
PREVIOUS_OUTPUT = "mitoseg_previous_output"
#: layer.metadata key: name of the model that made the result layer.
MODEL_NAME = "mitoseg_model"
#: layer.metadata key: whether the result layer holds instance ids (one per mitochondrion).
INSTANCES = "mitoseg_instances"
#: layer.metadata key: the PredictOptions (as a dict) the result layer was made with.
OPTIONS = "mitoseg_options"
#: layer.metadata key: the slices of a result layer the user corrected (kept exactly by the last
#: segmentation, or trained on by the last fine-tuning); Evaluate scores the others apart.
CORRECTED = "mitoseg_corrected_slices"
#: layer.metadata key: the pixel size (nm, in Y and X) the result layer was segmented at, if known.
PIXEL_SIZE_NM = "mitoseg_pixel_size_nm"
#: layer.metadata key set by the reader: the voxel size in nm, (Z, Y, X).
VOXEL_SIZE_NM = "voxel_size_nm"
#: endings of the names of the layers the plugin writes
_RESULT_SUFFIXES = (" mitochondria", " errors", " instances", " uncertainty")


def unwrapped(layer):
    """The layer itself behind napari's public-only proxy (plugins get proxies of the viewer,
    and each access makes a new proxy, so ``is`` between two of them is always False)."""
    return getattr(layer, "__wrapped__", layer)


def same_layer(a, b) -> bool:
    """Whether ``a`` and ``b`` are the same layer (through proxies, too)."""
    return a is not None and b is not None and unwrapped(a) is unwrapped(b)


def written_by_plugin(layer) -> bool:
    """Whether the layer is one this plugin made: a segmentation, an error map, instances."""
    return MODEL_NAME in layer.metadata or layer.name.endswith(_RESULT_SUFFIXES)


_mask_cache: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def is_mask_layer(layer) -> bool:
    """Whether the layer holds a mask or labels rather than an EM image: any Labels layer, or
    an image whose sample (:func:`metrics.label_sample`) :func:`metrics.looks_like_labels`,
    whole-number floats (0.0/1.0) included; cached per layer until its data changes."""
    from napari.layers import Labels

    from ..metrics import label_sample, looks_like_labels

    if isinstance(layer, Labels):
        return True
    key, data = unwrapped(layer), layer_array(layer)
    hit = _mask_cache.get(key)
    if hit is not None and hit[0] is data:
        return hit[1]
    try:
        sample = label_sample(data) if data.ndim in (2, 3) and 0 not in data.shape else None
        if sample is not None and sample.dtype.kind == "f" and np.isfinite(sample).all() \
                and (sample == np.round(sample)).all():
            sample = sample.astype(np.int64)
        found = sample is not None and looks_like_labels(sample)
    except Exception:  # noqa: BLE001 - an unreadable layer is not preferred, and not refused here
        logger.debug("could not sample layer %r", layer.name, exc_info=True)
        found = False
    _mask_cache[key] = (data, found)
    return found


def is_em_image(layer) -> bool:
    """Whether the layer is a grey-scale image worth segmenting: not a mask, not ours."""
    return not written_by_plugin(layer) and not is_mask_layer(layer)


def _stack_options(record: dict) -> tuple[float, bool]:
    """(pixel ratio, invert) from a record (a layer's options, a model's info); (1, False) when
    absent."""
    return float(record.get("pixel_ratio", 1.0) or 1.0), bool(record.get("invert", False))


def recorded_stack_options(layer) -> tuple[float, bool]:
    """(pixel ratio, invert) a result layer was segmented with ((1, False) when not recorded)."""
    return _stack_options((layer.metadata.get(OPTIONS) or {}) if layer is not None else {})


def layer_array(layer):
    """The (Z, Y, X) or (Y, X) data of a layer (full resolution for multiscale), unread if lazy."""
    return layer.data[0] if getattr(layer, "multiscale", False) else layer.data


def model_output(layer, key: str = MODEL_OUTPUT) -> np.ndarray | None:
    """The model output recorded on a result layer, when it still fits the layer's shape."""
    ref = layer.metadata.get(key) if layer is not None else None
    if ref is None or np.shape(ref) != np.shape(layer.data):
        return None
    return ref


def painted_slices(layer) -> list[int] | None:
    """Slices of a result layer that the user changed; None when no model output is recorded.

    A slice counts when it differs from the last model output and, if there was a run before
    that one, from its output too: after an undo of a re-segmentation (Ctrl+Z) the layer shows
    the earlier output again, and that is not a correction. Compares whole stacks: call it in a
    worker thread for a large layer (see :func:`painted_in`).
    """
    return painted_in(layer.data, model_output(layer), model_output(layer, PREVIOUS_OUTPUT))


def painted_in(data, output, earlier=None) -> list[int] | None:
    """:func:`painted_slices` on arrays: the slices where ``data`` differs from the model
    ``output`` (and from the ``earlier`` output, when given); None when ``output`` is None."""
    from ..api import changed_slices

    if output is None:
        return None
    found = changed_slices(data, output)
    if earlier is not None and found:
        found = sorted(set(found) & set(changed_slices(data, earlier)))
    return found

def _model_info(source: str | None) -> dict | None:
    """The ``info`` of the model at ``source`` (name or folder); None when there is none."""
    from ..model import ModelError, read_config, resolve_model_path

    if not source:
        return None
    try:
        return read_config(resolve_model_path(source))[1]
    except ModelError:
        return None


def default_z_smooth(source: str | None) -> bool:
    """Whether the model at ``source`` recommends smoothing along z (its card's
    ``default_z_smooth``; a fine-tuned model inherits its base model's choice)."""
    seen = 0
    while source and seen < 4:
        info = _model_info(source)
        if info is None:
            return False
        if "default_z_smooth" in info:
            return bool(info["default_z_smooth"])
        source, seen = info.get("base_model"), seen + 1
    return False


def made_for_a_stack(source: str | None) -> bool:
    """Whether the model at ``source`` was fine-tuned with a pixel ratio or reversed contrast,
    which its spec now holds (so it takes that stack with a ratio of 1 and no inversion)."""
    info = _model_info(source)
    return info is not None and _stack_options(info) != (1.0, False)


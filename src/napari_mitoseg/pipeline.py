"""Stack in, mask out: the model cache and :func:`segment`, below the public API.

- :func:`get_model`: load once, cached by (model folder, device).
- :func:`segment`: (Z, Y, X) stack -> mask or instance labels, progress per slice.
- :func:`report_progress`, :func:`as_options`: the checks every front end's call goes through.

:mod:`napari_mitoseg.api` re-exports each public name; use it from there.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable

import numpy as np

from .inference import (
    InputError,
    PredictOptions,
    SliceResult,
    as_stack,
    check_stack,
    choose_pixel_ratio,
    iter_predict,
)
from .model import DEFAULT_MODEL, LoadedModel, load_model, resolve_model_path

logger = logging.getLogger("napari_mitoseg.api")

#: ``progress(done, total)``: called after each slice (segmenting) or step (training)
ProgressFn = Callable[[int, int], None]
#: ``extra`` of a log record that states a decision the user should see (the CLI prints it)
NOTE = {"note": True}

_CACHE: dict[tuple[str, str, float], LoadedModel] = {}


def get_model(source: str | os.PathLike | None = None, device: str = "auto") -> LoadedModel:
    """Load ``source`` (name or folder; default the shipped model) once per (folder, device)."""
    path = resolve_model_path(DEFAULT_MODEL if source is None else source).resolve()
    weights = path / "model.safetensors"
    key = (str(path), device, weights.stat().st_mtime if weights.exists() else 0.0)
    if key not in _CACHE:
        _CACHE[key] = load_model(path, device)
    return _CACHE[key]


def segment(
    image, model: LoadedModel | str | os.PathLike | None = None,
    options: PredictOptions | dict | None = None, instances: bool = False,
    min_size: int = 64, progress: ProgressFn | None = None, pixel_size_nm: float | None = None,
    on_slice: Callable[[SliceResult], None] | None = None, guess_contrast: bool | None = None,
) -> np.ndarray:
    """(Z, Y, X) image (an array, or a nested list of numbers) -> (Z, Y, X) uint8 mask (0/1)
    or int32 instance labels. ``progress(done, total)`` is called after each slice (with
    ``options.ortho``, after each plane of the three passes). ``on_slice(result)`` gets each
    :class:`~napari_mitoseg.inference.SliceResult` (e.g. an
    :class:`~napari_mitoseg.uncertainty.UncertaintyRecorder`).

    ``model``: a loaded model, or a model name or folder (loaded with :func:`get_model`), or
    None for the default model. ``options``: :class:`PredictOptions`, or a dict of its fields.
    ``pixel_size_nm``: the stack's Y/X pixel size, turned into ``options.pixel_ratio`` with the
    model's own pixel size (then ``options`` may not set a pixel ratio too).
    ``guess_contrast``: without ``options.invert``, invert the stack when the model is clearly
    surer of it so, with a note (:func:`~napari_mitoseg.stack_setup.settle_contrast`; None: the
    model's own choice, on for the shipped model); False takes the contrast as it is."""
    from .stack_setup import settle_contrast

    image = as_stack(image)
    check_stack(image)
    options = as_options(options) or PredictOptions()
    if not isinstance(model, LoadedModel):
        model = get_model(model)
    if pixel_size_nm is not None:
        given = options.pixel_ratio if options.pixel_ratio != 1.0 else None
        ratio, note = choose_pixel_ratio(model.spec, given, pixel_size_nm)
        logger.info(note, extra=NOTE)
        options = dataclasses.replace(options, pixel_ratio=ratio)
    invert, _ = settle_contrast(model, image, options.pixel_ratio, options.invert, guess_contrast)
    options = dataclasses.replace(options, invert=invert)
    mask = np.zeros(image.shape if image.ndim == 3 else (1, *image.shape), np.uint8)
    for r in _iter_slices(model, image, options, progress):
        mask[r.index] = r.mask
        if on_slice is not None:
            on_slice(r)
    if instances:
        from .postprocess import instances as to_instances

        return to_instances(mask, min_size=min_size)
    return mask


class ProgressCallbackError(RuntimeError):
    """The caller's ``progress`` callback raised; the work stopped there (the callback's own
    error is the cause)."""


def report_progress(progress: ProgressFn | None, done: int, total: int) -> None:
    """Call ``progress(done, total)``; an error in it stops the work as a
    :class:`ProgressCallbackError` that names the callback, so it is not taken for ours."""
    if progress is None:
        return
    try:
        progress(done, total)
    except Exception as exc:
        raise ProgressCallbackError(f"the progress callback {getattr(progress, '__name__', progress)!s} "
                                    f"raised {type(exc).__name__}: {exc} (at {done} of {total}); "
                                    "the work stopped there") from exc


def as_options(options: PredictOptions | dict | None) -> PredictOptions | None:
    """``options`` as :class:`PredictOptions`: a dict of its fields is accepted; anything else
    raises :class:`InputError` naming the valid fields."""
    if options is None or isinstance(options, PredictOptions):
        return options
    valid = [f.name for f in dataclasses.fields(PredictOptions)]
    if not isinstance(options, dict):
        raise InputError(f"options must be PredictOptions or a dict of its fields ({', '.join(valid)}), "
                         f"got {type(options).__name__}")
    unknown = sorted(str(k) for k in options if k not in valid)
    if unknown:
        raise InputError(f"unknown option(s) {', '.join(unknown)}; valid: {', '.join(valid)}")
    return PredictOptions(**options)


def _iter_slices(model: LoadedModel, image, options: PredictOptions | None, progress: ProgressFn | None):
    """:func:`iter_predict`, reporting progress per slice, or per plane with ortho (its slices come
    a window at a time)."""
    ortho = bool(options and options.ortho)
    on_work = (lambda done, total: report_progress(progress, done, total)) if ortho and progress else None
    for r in iter_predict(model, image, options, on_work=on_work):
        if not ortho:
            report_progress(progress, r.index + 1, r.total)
        yield r

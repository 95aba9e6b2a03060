"""The public Python API shared by the widgets, the command line and notebooks.

- :func:`get_model`: load once, cached by (model folder, device).
- :func:`segment` / :func:`segment_file`: stack -> mask or instance labels (+ scores).
- :func:`changed_slices`, :func:`merge_unpainted`: find and keep the user's corrections.
- :func:`iter_finetune`: fine-tune on corrected slices, save a new user model version.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .finetune import FinetuneResult, _slice_indices, iter_finetune
from .inference import InputError, PredictOptions, check_pixel_size, choose_pixel_ratio
from .metrics import Report, evaluate
from .model import LoadedModel
from .neighbours import known_z_step
from .pipeline import (
    NOTE,
    ProgressCallbackError,
    ProgressFn,
    _iter_slices,
    as_options,
    get_model,
    report_progress,
    segment,
)
from .stack_setup import settle_contrast
from .uncertainty import UncertaintyRecorder

__all__ = [
    "NOTE", "FinetuneResult", "ProgressCallbackError", "ProgressFn", "SegmentResult", "as_options",
    "changed_slices", "data_dir", "demo", "get_model", "iter_finetune", "merge_unpainted",
    "report_progress", "sbem_dir", "segment", "segment_file",
]

logger = logging.getLogger(__name__)

@dataclass
class SegmentResult:
    labels: np.ndarray | None  # None when the labels went straight to a zarr ``out``
    model_name: str
    report: Report | None
    shape: tuple[int, ...] = ()
    pixel_ratio: float = 1.0
    #: where the pixel ratio came from (a given pixel size, the file's metadata), if anywhere
    note: str | None = None
    #: each slice's uncertainty (higher: more likely wrong), None where not measured (a cluster)
    uncertainty: list[float] | None = None
    ortho: bool = False
    #: whether the contrast was taken as reversed (given, or guessed)
    invert: bool = False


def segment_file(
    image_path, *, model=None, device="auto", threshold=None, tta=False, z_smooth=None,
    instances=False, out=None, gt=None, pixel_ratio=None, invert=False, pixel_size_nm=None,
    progress: ProgressFn | None = None, client=None, keep_nothing: bool = True,
    ortho: bool | None = None, uncertainty_out=None, scales=(1.0,), z_step: float | None = None,
    guess_contrast: bool | None = None,
) -> SegmentResult:
    """Read, segment, optionally score against ``gt`` and write ``out`` (atomically).

    ``pixel_ratio`` (the stack's pixel size over the model's training pixel size) and
    ``invert`` (reversed contrast): see :class:`~napari_mitoseg.inference.PredictOptions`.
    ``pixel_size_nm`` (the stack's Y/X pixel size) is the other way to give the scale; it
    excludes ``pixel_ratio``. With neither, the file's own voxel size (TIFF / OME metadata,
    :func:`~napari_mitoseg.io.read_voxel_size`) is used when the model records its pixel size;
    :attr:`SegmentResult.note` says so. ``ortho``: average the XY, XZ and YZ planes (None: on
    where the file's voxel size is near-isotropic, with a note; see
    :func:`~napari_mitoseg.ortho.choose_ortho`). ``uncertainty_out``: write the per-pixel
    uncertainty map there (uint8 TIFF or zarr, 255 = most unsure); each slice's uncertainty is in
    :attr:`SegmentResult.uncertainty` either way. ``scales``: multi-scale averaging, see
    :class:`~napari_mitoseg.inference.PredictOptions`. ``z_step``: the stack's z spacing over its
    pixel size, for z-smoothing (None: from the file's voxel size, else estimated from the images).
    ``guess_contrast``: without ``invert``, invert the stack when the model is clearly surer of
    it inverted (:func:`~napari_mitoseg.stack_setup.guess_contrast`; about a second), with a
    note; None: the model's own choice (on for the shipped model, off for a fine-tuned one,
    which is set up for its stack).

    Options, the output (a label suffix, a writable folder, never one of the inputs) and the
    inputs are checked before the model is loaded. ``progress(done, total)`` is called after
    each slice.

    A (Z, Y, X) stack written to a ``.zarr`` ``out`` without ``instances`` streams: each
    slice is read, segmented, written and scored in turn, so the stack, its labels and its
    ground truth need not fit in memory (``labels`` is then None). Instances need the whole
    volume at once (3D connected components), and TIFF output is written whole.

    ``keep_nothing=False`` refuses (once the inputs and the model are checked, before any
    slice is segmented) a call with neither ``out`` nor ``gt``, whose result would be thrown
    away (the command line's case).

    This runs in this process. To segment in blocks on a dask cluster, call
    :func:`napari_mitoseg.distributed.segment_file` with the same arguments and ``client=``.
    """
    from .io import check_label_path, write_labels

    if client is not None:
        raise TypeError("api.segment_file runs in this process; to segment on a cluster call "
                        "napari_mitoseg.distributed.segment_file(..., client=client)")
    opts = PredictOptions(threshold=threshold, tta=tta, z_smooth=z_smooth, invert=invert, ortho=bool(ortho),
                          scales=scales, z_step=z_step)
    _check_scale_args(pixel_ratio, pixel_size_nm)
    for path in (out, uncertainty_out):
        if path:
            check_label_path(path, inputs=(image_path, gt))
    image, gt_arr = _read_with_gt(image_path, gt)
    m = get_model(model, device)
    if not (keep_nothing or out or gt is not None or uncertainty_out):
        raise InputError("nothing would be kept: give an output (-o OUT, .tif or .zarr) to write "
                         "the labels, or ground truth (--gt TRUTH) or --json for scores")
    ratio, note, voxel = _file_pixel_ratio(m, image_path, pixel_ratio, pixel_size_nm)
    inv, guessed = settle_contrast(m, image, ratio, bool(invert), guess_contrast)
    note = "; ".join(n for n in (note, guessed) if n) or None
    opts = dataclasses.replace(opts, pixel_ratio=ratio, invert=inv, ortho=_file_ortho(voxel, ortho, image),
                               z_step=z_step if z_step is not None else known_z_step(voxel))
    shape = tuple(image.shape)
    out = check_label_path(out) if out else None
    record = UncertaintyRecorder(shape if uncertainty_out else None)
    if out and out.suffix.lower() == ".zarr" and not instances and image.ndim == 3:
        report = _segment_to_zarr(image, m, opts, out, gt_arr, progress, voxel, record)
        labels = None
    else:
        labels = segment(image, m, opts, instances=instances, progress=progress, on_slice=record,
                         guess_contrast=False)
        report = evaluate(labels > 0, np.asarray(gt_arr) > 0) if gt_arr is not None else None
        if out:
            write_labels(out, labels, voxel_size=voxel)
    if uncertainty_out:
        write_labels(uncertainty_out, record.map)
    return SegmentResult(labels, m.name, report, shape, ratio, note, record.values, opts.ortho, inv)


def _file_ortho(voxel, ortho: bool | None, image) -> bool:
    """Ortho as given, or (None) as the file's (Z, Y, X) voxel size ``voxel`` suggests; a note
    when chosen so."""
    from .ortho import choose_ortho

    voxel = voxel if ortho is None and image.ndim == 3 else None
    on, note = choose_ortho(ortho, voxel, image.shape[0] if image.ndim == 3 else 1)
    if note:
        logger.info(note, extra=NOTE)
    return on


def _check_scale_args(pixel_ratio: float | None, pixel_size_nm: float | None) -> None:
    """:class:`InputError` unless at most one of the two ways to give the scale is used, and a
    given pixel size is one."""
    if pixel_ratio is not None and pixel_size_nm is not None:
        raise InputError("give the stack's pixel size or a pixel ratio, not both")
    if pixel_size_nm is not None:
        check_pixel_size(pixel_size_nm)


def _read_with_gt(image_path, gt):
    """The stack at ``image_path`` and the ground truth at ``gt`` (None without), of one shape."""
    from .io import read_stack, warn_missing_chunks

    image = read_stack(image_path)
    warn_missing_chunks(image_path)
    if gt is None:
        return image, None
    gt_arr = read_stack(gt)
    if tuple(gt_arr.shape) != tuple(image.shape):
        from .metrics import ShapeMismatchError

        raise ShapeMismatchError(
            f"ground truth shape {tuple(gt_arr.shape)} does not match image shape "
            f"{tuple(image.shape)}"
        )
    _check_ground_truth(gt_arr, gt)
    return image, gt_arr


def _file_pixel_ratio(model: LoadedModel, image_path, pixel_ratio, pixel_size_nm):
    """(pixel ratio, note, voxel size): the pixel ratio for ``model`` on the stack at
    ``image_path`` (given, from a given pixel size, else from the file's voxel size), the note
    saying where it came from, and the file's (Z, Y, X) voxel size in nm or None (the scale of
    the output, too)."""
    from .io import read_voxel_size

    voxel = read_voxel_size(image_path)
    ratio, note = choose_pixel_ratio(model.spec, pixel_ratio, pixel_size_nm, voxel[2] if voxel else None)
    if note:
        logger.info(note, extra=NOTE)
    return ratio, note, voxel


def _check_ground_truth(gt_arr, gt_path) -> None:
    """:class:`~napari_mitoseg.metrics.NotAMaskError` unless the ground truth is a mask or label
    volume (not the grey stack, a probability map or NaN); a lazy one is checked on a sample."""
    from .metrics import check_mask, label_sample

    check_mask(gt_arr if isinstance(gt_arr, np.ndarray) else label_sample(gt_arr),
               f"the ground truth {gt_path}")


def _segment_to_zarr(image, model: LoadedModel, options: PredictOptions, out: Path, gt,
                     progress: ProgressFn | None = None, voxel=None, on_slice=None) -> Report | None:
    """Stream (Z, Y, X) ``image`` slice by slice into a new OME-Zarr label image at ``out``
    (``voxel``: (Z, Y, X) nm or None; swapped in whole when complete); score each slice against
    ``gt`` on the way."""
    from .io import labels_zarr
    from .metrics import Counts, report_from_counts
    from .metrics import counts as confusion

    per: list[Counts] = []
    with labels_zarr(out, tuple(image.shape), np.uint8, voxel) as arr:
        for r in _iter_slices(model, image, options, progress):
            arr[r.index] = r.mask.astype(np.uint8)
            if gt is not None:
                per.append(confusion(r.mask, np.asarray(gt[r.index]) > 0))
            if on_slice is not None:
                on_slice(r)
    return report_from_counts(per) if gt is not None else None


# --------------------------------------------------------------------------- corrections


def changed_slices(current, reference) -> list[int]:
    """Indices of the slices where ``current`` (e.g. painted labels) differs from ``reference``
    (the model's output), comparing foreground (``> 0``) only."""
    a, b = np.asarray(current) > 0, np.asarray(reference) > 0
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    if a.ndim == 2:
        a, b = a[None], b[None]
    return [int(i) for i in np.flatnonzero((a != b).reshape(a.shape[0], -1).any(axis=1))]


def merge_unpainted(new, painted, keep_slices: Sequence[int]) -> np.ndarray:
    """``new`` everywhere except the slices in ``keep_slices``, which are copied from ``painted``
    exactly (the user's corrections are never overwritten)."""
    out = np.array(new, copy=True)
    painted = np.asarray(painted)
    if out.shape != painted.shape:
        raise InputError(f"the new labels {out.shape} and the painted ones {painted.shape} differ in shape")
    view, src = (out, painted) if out.ndim == 3 else (out[None], painted[None])  # views of a 2D pair
    for z in _slice_indices(keep_slices, view.shape[0]):
        view[z] = src[z]
    return out


def data_dir(volume: str = "sbem") -> Path | None:
    """The folder of a reference EM volume (``sbem`` or ``lucchipp``: ``$MITOSEG_DATA_DIR/<volume>``,
    else ``shared/data/<volume>`` beside the checkout; ``$MITOSEG_SBEM_DIR`` for ``sbem``) when
    it holds the testing stack, else None."""
    env = os.environ.get("MITOSEG_SBEM_DIR") if volume == "sbem" else None
    root = os.environ.get("MITOSEG_DATA_DIR")
    if env:
        cand = Path(env)
    elif root:
        cand = Path(root) / volume
    else:
        cand = Path(__file__).resolve().parents[3] / "shared" / "data" / volume
    return cand if (cand / "test_image.tif").exists() else None


def sbem_dir() -> Path | None:
    """The SBEM data folder (see :func:`data_dir`), or None."""
    return data_dir("sbem")


def demo(out: str | os.PathLike | None = None) -> dict:
    """Segment the sample data (the SBEM testing stack when present, else the synthetic volume),
    score it against its ground truth and optionally write the labels; returns the figures."""
    from .io import check_label_path, write_labels
    from .synthetic import make_sample

    sbem = sbem_dir()
    if out:
        inputs = (sbem / "test_image.tif", sbem / "test_mask.tif") if sbem is not None else ()
        check_label_path(out, inputs=inputs)
    if sbem is not None:
        import tifffile

        image, gt = tifffile.imread(sbem / "test_image.tif"), tifffile.imread(sbem / "test_mask.tif")
        source = "SBEM testing stack"
    else:
        image, gt = make_sample()
        source = "synthetic sample"
    t0 = time.perf_counter()
    m = get_model()
    mask = segment(image, m)
    rep = evaluate(mask, gt)
    if out:
        write_labels(out, mask)
    return {"data": source, "model": m.name, "slices": int(image.shape[0]),
            "seconds": round(time.perf_counter() - t0, 2),
            **{k: round(v, 4) for k, v in rep.overall.as_dict().items()}}

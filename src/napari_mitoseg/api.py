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
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .inference import (
    InputError,
    PredictOptions,
    as_stack,
    check_pixel_size,
    check_stack,
    choose_pixel_ratio,
    for_stack,
    iter_predict,
)
from .metrics import Report, evaluate, score
from .model import (
    DEFAULT_MODEL,
    LoadedModel,
    load_model,
    next_version_name,
    resolve_model_path,
    save_model,
    user_model_dir,
)

logger = logging.getLogger(__name__)

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
    image, model: LoadedModel, options: PredictOptions | None = None, instances: bool = False,
    min_size: int = 64, progress: ProgressFn | None = None, pixel_size_nm: float | None = None,
) -> np.ndarray:
    """(Z, Y, X) image (an array, or a nested list of numbers) -> (Z, Y, X) uint8 mask (0/1)
    or int32 instance labels. ``progress(done, total)`` is called after each slice.

    ``pixel_size_nm``: the stack's Y/X pixel size, turned into ``options.pixel_ratio`` with the
    model's own pixel size (then ``options`` may not set a pixel ratio too)."""
    image = as_stack(image)
    check_stack(image)
    if pixel_size_nm is not None:
        options = options or PredictOptions()
        given = options.pixel_ratio if options.pixel_ratio != 1.0 else None
        ratio, note = choose_pixel_ratio(model.spec, given, pixel_size_nm)
        logger.info(note, extra=NOTE)
        options = dataclasses.replace(options, pixel_ratio=ratio)
    mask = np.zeros(image.shape if image.ndim == 3 else (1, *image.shape), np.uint8)
    for r in iter_predict(model, image, options):
        mask[r.index] = r.mask
        if progress is not None:
            progress(r.index + 1, r.total)
    if instances:
        from .postprocess import instances as to_instances

        return to_instances(mask, min_size=min_size)
    return mask


@dataclass
class SegmentResult:
    labels: np.ndarray | None  # None when the labels went straight to a zarr ``out``
    model_name: str
    report: Report | None
    shape: tuple[int, ...] = ()
    pixel_ratio: float = 1.0
    #: where the pixel ratio came from (a given pixel size, the file's metadata), if anywhere
    note: str | None = None


def segment_file(
    image_path, *, model=None, device="auto", threshold=None, tta=False, z_smooth=None,
    instances=False, out=None, gt=None, pixel_ratio=None, invert=False, pixel_size_nm=None,
    progress: ProgressFn | None = None, client=None,
) -> SegmentResult:
    """Read, segment, optionally score against ``gt`` and write ``out`` (atomically).

    ``pixel_ratio`` (the stack's pixel size over the model's training pixel size) and
    ``invert`` (reversed contrast): see :class:`~napari_mitoseg.inference.PredictOptions`.
    ``pixel_size_nm`` (the stack's Y/X pixel size) is the other way to give the scale; it
    excludes ``pixel_ratio``. With neither, the file's own voxel size (TIFF / OME metadata,
    :func:`~napari_mitoseg.io.read_voxel_size`) is used when the model records its pixel size;
    :attr:`SegmentResult.note` says so.

    Options, the output (a label suffix, a writable folder, never one of the inputs) and the
    inputs are checked before the model is loaded. ``progress(done, total)`` is called after
    each slice.

    A (Z, Y, X) stack written to a ``.zarr`` ``out`` without ``instances`` streams: each
    slice is read, segmented, written and scored in turn, so the stack, its labels and its
    ground truth need not fit in memory (``labels`` is then None). Instances need the whole
    volume at once (3D connected components), and TIFF output is written whole.

    ``client`` (a ``distributed.Client``): segment in blocks on its cluster into the OME-Zarr
    ``out`` instead (see :mod:`napari_mitoseg.distributed`; same labels, ``labels`` is None).
    """
    from .io import check_label_path, read_stack, read_voxel_size, write_labels

    opts = PredictOptions(threshold=threshold, tta=tta, z_smooth=z_smooth, invert=invert)
    if pixel_ratio is not None and pixel_size_nm is not None:
        raise InputError("give the stack's pixel size or a pixel ratio, not both")
    if pixel_size_nm is not None:
        check_pixel_size(pixel_size_nm)
    if out:
        check_label_path(out, inputs=(image_path, gt))
    if client is not None:
        from .distributed import run_on_client

        return run_on_client(client, image_path, out, gt=gt, model=model, device=device, instances=instances,
                             options=opts, pixel_ratio=pixel_ratio, pixel_size_nm=pixel_size_nm)
    image = read_stack(image_path)
    gt_arr = None
    if gt is not None:
        gt_arr = read_stack(gt)
        if tuple(gt_arr.shape) != tuple(image.shape):
            from .metrics import ShapeMismatchError

            raise ShapeMismatchError(
                f"ground truth shape {tuple(gt_arr.shape)} does not match image shape "
                f"{tuple(image.shape)}"
            )
    m = get_model(model, device)
    voxel = read_voxel_size(image_path) if pixel_ratio is None and pixel_size_nm is None else None
    ratio, note = choose_pixel_ratio(m.spec, pixel_ratio, pixel_size_nm, voxel[2] if voxel else None)
    if note:
        logger.info(note, extra=NOTE)
    opts = dataclasses.replace(opts, pixel_ratio=ratio)
    shape = tuple(image.shape)
    out = check_label_path(out) if out else None
    if out and out.suffix.lower() == ".zarr" and not instances and image.ndim == 3:
        report = _segment_to_zarr(image, m, opts, out, gt_arr, progress)
        return SegmentResult(None, m.name, report, shape, ratio, note)
    labels = segment(image, m, opts, instances=instances, progress=progress)
    report = evaluate(labels > 0, np.asarray(gt_arr) > 0) if gt_arr is not None else None
    if out:
        write_labels(out, labels)
    return SegmentResult(labels, m.name, report, shape, ratio, note)


def _segment_to_zarr(image, model: LoadedModel, options: PredictOptions, out: Path, gt,
                     progress: ProgressFn | None = None) -> Report | None:
    """Stream (Z, Y, X) ``image`` slice by slice into a new zarr at ``out`` (swapped in whole
    when complete); score each slice against ``gt`` on the way."""
    from .io import atomic_dir, open_labels_zarr
    from .metrics import Counts, report_from_counts
    from .metrics import counts as confusion

    per: list[Counts] = []

    def write(tmp: Path) -> None:
        arr = open_labels_zarr(tmp, tuple(image.shape), np.uint8)
        for r in iter_predict(model, image, options):
            arr[r.index] = r.mask.astype(np.uint8)
            if gt is not None:
                per.append(confusion(r.mask, np.asarray(gt[r.index]) > 0))
            if progress is not None:
                progress(r.index + 1, r.total)

    atomic_dir(out, write)
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
    for z in keep_slices:
        out[z] = painted[z]
    return out


@dataclass
class FinetuneResult:
    name: str
    path: Path
    slices: list[int]
    iou_before: float
    iou_after: float
    seconds: float
    steps: int


def iter_finetune(
    image,
    labels,
    slices: Sequence[int],
    *,
    base: str | os.PathLike | None = None,
    config=None,
    device: str = "auto",
    name: str | None = None,
    out_root: str | os.PathLike | None = None,
    pixel_ratio: float = 1.0,
    invert: bool = False,
    pixel_size_nm: float | None = None,
    ignore_value: int | str | None = "auto",
) -> Iterator:
    """Fine-tune ``base`` on the corrected ``slices`` of (Z, Y, X) ``image`` / ``labels``.

    ``pixel_ratio`` (the stack's pixel size over the base model's training pixel size) and
    ``invert`` (the stack's contrast is reversed) are kept in the new model's spec
    (:func:`~napari_mitoseg.inference.for_stack`): the new model segments this stack as it is.

    Yields :class:`~napari_mitoseg.training.TrainProgress` per step; returns (as the
    generator's value) a :class:`FinetuneResult`. The new model is saved as a new version in
    the user's model folder (``<base>-ftN``), never over an existing model; its card records
    the base, the slices, the steps, the time and the IoU on those slices before and after.

    ``pixel_size_nm`` (the stack's Y/X pixel size) is the other way to give ``pixel_ratio``
    (not both). ``labels`` are read as :func:`~napari_mitoseg.training.training_masks` reads
    masks (``ignore_value``: 0/255-only labels are background / mitochondrion).
    """
    from .training import FINETUNE, IGNORE, iter_train, training_masks

    if not slices:
        raise ValueError("no corrected slices: paint corrections on at least one slice first")
    image = np.asarray(as_stack(image))
    labels = np.asarray(as_stack(labels))
    check_stack(image)
    if image.ndim == 2:
        image, labels = image[None], labels[None]
    if labels.shape != image.shape:
        raise ValueError(f"labels {labels.shape} and image {image.shape} differ in shape")
    sl = _slice_indices(slices, image.shape[0])
    _check_not_a_mask(image)
    if pixel_size_nm is not None and pixel_ratio != 1.0:
        raise InputError("give the stack's pixel size or a pixel ratio, not both")
    cfg = config or FINETUNE
    model = get_model(base, device)
    if pixel_size_nm is not None:
        pixel_ratio, note = choose_pixel_ratio(model.spec, pixel_size_nm=pixel_size_nm)
        logger.info(note, extra=NOTE)
    base_model = for_stack(model, pixel_ratio, invert)
    ims, mks = image[sl], training_masks(labels, ignore_value)[sl]
    before = score(segment(ims, base_model) > 0, mks == 1, ignore=mks == 255).iou
    root = Path(out_root) if out_root else user_model_dir()
    name = name or next_version_name(base_model.name, root)
    if (root / name).exists():
        raise FileExistsError(f"model {name!r} already exists in {root}; choose another name")
    t0 = time.perf_counter()
    gen = iter_train(ims, mks, config=cfg, base=base_model, device=device, ignore_value=IGNORE)
    while True:
        try:
            yield next(gen)
        except StopIteration as stop:
            tuned: LoadedModel = stop.value
            break
    seconds = time.perf_counter() - t0
    after = score(segment(ims, tuned) > 0, mks == 1, ignore=mks == 255).iou
    info = {
        "summary": f"fine-tuned from {base_model.name} on {len(sl)} slice(s), IoU on them "
                   f"{before:.3f} -> {after:.3f}",
        "base_model": base_model.name, "slices": sl, "pixel_ratio": float(pixel_ratio),
        "invert": bool(invert),
        # the base model's recommended post-processing carries over
        **{k: bool(base_model.info.get(k, False)) for k in ("default_z_smooth", "default_fill_holes")},
        "steps": cfg.steps,
        "train_seconds": round(seconds, 1), "iou_before": before, "iou_after": after,
        "train_config": dataclasses.asdict(cfg),
    }
    scale_note = "".join([
        f", for pixels {pixel_ratio:g}x the size of its base model's training data" if pixel_ratio != 1 else "",
        ", for contrast the reverse of its base model's training data" if invert else "",
    ])
    card = (
        f"# {name}\n\nFine-tuned from `{base_model.name}` on slices {sl} "
        f"({cfg.steps} steps, {seconds:.0f} s){scale_note}.\n\n"
        "| | IoU on the corrected slices |\n|---|---|\n"
        f"| before | {before:.4f} |\n| after | {after:.4f} |\n"
    )
    path = save_model(tuned.net, tuned.spec, root / name, info=info, card=card)
    return FinetuneResult(name, path, sl, before, after, seconds, cfg.steps)


def _check_not_a_mask(image: np.ndarray) -> None:
    """:class:`InputError` when the image to learn from is itself a mask or label volume (the
    ground truth chosen as the image): integer, at least two values, label-like."""
    from .metrics import label_sample, looks_like_labels

    if image.dtype.kind not in "iu":
        return
    sample = label_sample(image)
    if len(np.unique(sample)) >= 2 and looks_like_labels(sample):
        raise InputError("the image looks like a mask or label volume, not an EM stack: choose the "
                         "EM image as the image and the labels as the labels")


def _slice_indices(slices: Sequence[int], depth: int) -> list[int]:
    """Sorted unique slice indices; :class:`InputError` for one outside 0..depth-1."""
    try:
        sl = sorted({int(s) for s in slices})
    except (TypeError, ValueError):
        raise InputError(f"slice indices must be whole numbers, got {list(slices)!r}") from None
    outside = [s for s in sl if not 0 <= s < depth]
    if outside:
        raise InputError(f"slice index {outside} out of range: the stack has {depth} slice(s), "
                         f"numbered 0 to {depth - 1}")
    return sl


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

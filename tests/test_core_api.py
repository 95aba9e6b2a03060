"""The public API: segmenting, keeping the user's corrections, fine-tuning into new versions."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import tifffile

from napari_mitoseg import api
from napari_mitoseg.io import WriteError, read_stack, write_labels
from napari_mitoseg.metrics import ShapeMismatchError
from napari_mitoseg.model import CARD_NAME, CONFIG_NAME, list_models, load_model, user_model_dir
from napari_mitoseg.training import IGNORE, TrainConfig, TrainProgress

FT = TrainConfig(steps=3, batch_size=2, tile=64, lr=1e-3, warmup=1, val_every=0, checkpoint_every=0)


def _folder_bytes(path):
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())}


def test_changed_slices_compares_foreground_only():
    ref = np.zeros((4, 6, 6), np.uint8)
    ref[0, 1, 1] = 1
    cur = ref.astype(np.int32) * 5  # another label value, same foreground: unchanged
    cur[1, 2, 2] = 1  # painted
    cur[3, :, :] = 2
    assert api.changed_slices(cur, ref) == [1, 3]
    assert api.changed_slices(ref, ref) == []
    assert api.changed_slices(cur[1], ref[1]) == [0]
    with pytest.raises(ValueError, match="shapes differ"):
        api.changed_slices(cur[:2], ref)


def test_merge_unpainted_keeps_painted_slices_exactly(rng):
    new = rng.integers(0, 2, (5, 8, 8)).astype(np.int32)
    painted = rng.integers(0, 9, (5, 8, 8)).astype(np.int32)
    new_before, painted_before = new.copy(), painted.copy()
    out = api.merge_unpainted(new, painted, [1, 3])
    np.testing.assert_array_equal(out[[1, 3]], painted[[1, 3]])
    np.testing.assert_array_equal(out[[0, 2, 4]], new[[0, 2, 4]])
    np.testing.assert_array_equal(new, new_before)  # inputs untouched
    np.testing.assert_array_equal(painted, painted_before)
    np.testing.assert_array_equal(api.merge_unpainted(new, painted, []), new)


def test_get_model_loads_once_per_folder_and_device(tiny_model_dir):
    a = api.get_model(tiny_model_dir, "cpu")
    assert api.get_model(str(tiny_model_dir), "cpu") is a
    assert a.name == "tiny-v1"


def test_segment_mask_and_instances(tiny_model, sample):
    image, _ = sample
    mask = api.segment(image, tiny_model)
    assert mask.shape == image.shape and mask.dtype == np.uint8
    assert set(np.unique(mask)) <= {0, 1}
    labels = api.segment(image, tiny_model, instances=True, min_size=1)
    assert labels.dtype == np.int32
    np.testing.assert_array_equal(labels > 0, mask > 0)
    assert api.segment(image[0], tiny_model).shape == (1, *image.shape[1:])


def test_segment_file_scores_and_writes(tiny_model_dir, sample, tmp_path):
    image, gt = sample
    tifffile.imwrite(tmp_path / "im.tif", image, photometric="minisblack")
    tifffile.imwrite(tmp_path / "gt.tif", gt, photometric="minisblack")
    res = api.segment_file(tmp_path / "im.tif", model=tiny_model_dir, device="cpu", gt=tmp_path / "gt.tif",
                           out=tmp_path / "out.tif")
    assert res.model_name == "tiny-v1"
    np.testing.assert_array_equal(read_stack(tmp_path / "out.tif"), res.labels)
    assert len(res.report.per_slice) == 3
    assert 0.0 <= res.report.overall.iou <= 1.0


def test_segment_file_streams_a_stack_into_zarr_slice_by_slice(tiny_model_dir, sample, tmp_path, monkeypatch):
    import zarr

    from napari_mitoseg.metrics import evaluate

    image, gt = sample
    for name, arr in (("im.zarr", image), ("gt.zarr", gt)):
        z = zarr.open(str(tmp_path / name), mode="w", shape=arr.shape, dtype=arr.dtype, chunks=(1, *arr.shape[1:]))
        z[:] = arr
    model = api.get_model(tiny_model_dir, "cpu")
    expected = api.segment(image, model)
    write_labels(tmp_path / "out.zarr", np.full(image.shape, 3, np.uint8))  # an earlier result

    def whole_volume(*args, **kwargs):
        raise AssertionError("the whole volume was segmented in memory")

    monkeypatch.setattr(api, "segment", whole_volume)
    res = api.segment_file(tmp_path / "im.zarr", model=tiny_model_dir, device="cpu", gt=tmp_path / "gt.zarr",
                           out=tmp_path / "out.zarr")
    assert res.labels is None and res.shape == image.shape
    np.testing.assert_array_equal(np.asarray(read_stack(tmp_path / "out.zarr")), expected)
    assert res.report == evaluate(expected, gt)

    # a run that fails half-way leaves the earlier result as it was, and no temporary folder
    from napari_mitoseg import inference, pipeline

    def fail_after_one(*args, **kwargs):
        gen = inference.iter_predict(*args, **kwargs)
        yield next(gen)
        raise MemoryError("out of memory")

    monkeypatch.setattr(pipeline, "iter_predict", fail_after_one)
    with pytest.raises(MemoryError):
        api.segment_file(tmp_path / "im.zarr", model=tiny_model_dir, device="cpu", out=tmp_path / "out.zarr")
    np.testing.assert_array_equal(np.asarray(read_stack(tmp_path / "out.zarr")), expected)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gt.zarr", "im.zarr", "out.zarr"]


def test_segment_file_checks_before_it_works(tiny_model_dir, sample, tmp_path):
    image, gt = sample
    tifffile.imwrite(tmp_path / "im.tif", image, photometric="minisblack")
    tifffile.imwrite(tmp_path / "gt.tif", gt[:2], photometric="minisblack")
    (tmp_path / "out.tif").write_bytes(b"the user's old result")
    with pytest.raises(ShapeMismatchError, match="ground truth shape"):
        api.segment_file(tmp_path / "im.tif", model=tiny_model_dir, device="cpu", gt=tmp_path / "gt.tif",
                         out=tmp_path / "out.tif")
    with pytest.raises(WriteError, match=r"\.tif"):
        api.segment_file(tmp_path / "im.tif", model=tiny_model_dir, device="cpu", out=tmp_path / "out.png")
    with pytest.raises(WriteError):  # the output name is checked before anything is read or run
        api.segment_file(tmp_path / "missing.tif", model="no-such-model", out=tmp_path / "out.png")
    assert (tmp_path / "out.tif").read_bytes() == b"the user's old result"
    assert not (tmp_path / "out.png").exists()


def test_iter_finetune_saves_new_versions_with_a_card_and_never_overwrites(tiny_model_dir, sample):
    image, mask = sample
    labels = mask.copy()
    labels[1, :10] = IGNORE  # part of a slice left unlabelled
    gen = api.iter_finetune(image, labels, [1, 2, 1], base=tiny_model_dir, config=FT, device="cpu")
    progress = []
    while True:
        try:
            progress.append(next(gen))
        except StopIteration as stop:
            first = stop.value
            break
    assert all(isinstance(p, TrainProgress) for p in progress)
    assert [p.step for p in progress] == [1, 2, 3]
    assert first.name == "tiny-v1-ft1"
    assert first.path == user_model_dir() / "tiny-v1-ft1"
    assert first.slices == [1, 2]
    assert 0.0 <= first.iou_before <= 1.0 and 0.0 <= first.iou_after <= 1.0
    info = json.loads((first.path / CONFIG_NAME).read_text())["info"]
    assert info["base_model"] == "tiny-v1"
    assert info["slices"] == [1, 2]
    assert info["steps"] == 3
    assert info["iou_before"] == first.iou_before and info["iou_after"] == first.iou_after
    card = (first.path / CARD_NAME).read_text()
    assert "tiny-v1" in card and "[1, 2]" in card and "before" in card and "after" in card
    assert "tiny-v1-ft1" in [m.name for m in list_models()]
    saved = _folder_bytes(first.path)

    # again from the same base: a new version, the first one untouched
    gen = api.iter_finetune(image, labels, [0], base=tiny_model_dir, config=FT, device="cpu")
    for _ in gen:
        pass
    assert (user_model_dir() / "tiny-v1-ft2" / CONFIG_NAME).exists()
    assert _folder_bytes(first.path) == saved

    # a name that exists is refused before any training
    with pytest.raises(FileExistsError, match="'tiny-v1-ft1' already exists"):
        next(api.iter_finetune(image, labels, [0], base=tiny_model_dir, config=FT, device="cpu",
                               name="tiny-v1-ft1"))
    assert _folder_bytes(first.path) == saved
    tuned = load_model("tiny-v1-ft1", device="cpu")
    assert tuned.spec == load_model(tiny_model_dir, device="cpu").spec


def test_iter_finetune_refuses_bad_requests(tiny_model_dir, sample):
    image, mask = sample
    with pytest.raises(ValueError, match="no corrected slices"):
        next(api.iter_finetune(image, mask, [], base=tiny_model_dir, device="cpu"))
    with pytest.raises(ValueError, match="differ in shape"):
        next(api.iter_finetune(image, mask[:2], [0], base=tiny_model_dir, device="cpu"))
    assert list(user_model_dir().iterdir()) == []


def test_fine_tuning_a_fine_tuned_model_counts_on(tiny_model_dir, sample):
    image, mask = sample
    cfg = dataclasses.replace(FT, steps=1)
    for _ in api.iter_finetune(image, mask, [0], base=tiny_model_dir, config=cfg, device="cpu"):
        pass
    for _ in api.iter_finetune(image, mask, [0], base="tiny-v1-ft1", config=cfg, device="cpu"):
        pass
    assert sorted(p.name for p in user_model_dir().iterdir()) == ["tiny-v1-ft1", "tiny-v1-ft2"]
    assert json.loads((user_model_dir() / "tiny-v1-ft2" / CONFIG_NAME).read_text())["info"]["base_model"] == \
        "tiny-v1-ft1"


def test_fine_tuning_for_a_stack_keeps_its_pixel_ratio_and_contrast_in_the_new_spec(tiny_model_dir, sample):
    import torch

    from napari_mitoseg.inference import InputError

    image, mask = sample
    cfg = dataclasses.replace(FT, steps=1)
    gen = api.iter_finetune(image, mask, [0], base=tiny_model_dir, config=cfg, device="cpu",
                            pixel_ratio=2.0)
    for _ in gen:
        pass
    tuned = load_model("tiny-v1-ft1", device="cpu")
    base = api.get_model(tiny_model_dir, device="cpu")
    assert tuned.spec.input_scale == 2.0 * base.spec.input_scale
    assert tuned.info["pixel_ratio"] == 2.0
    assert "2x the size" in (tuned.path / CARD_NAME).read_text()
    # the cached base model was neither rescaled nor trained
    assert base.spec.input_scale == 1.0
    fresh = load_model(tiny_model_dir, device="cpu")
    assert all(torch.equal(a, b) for a, b in zip(base.net.state_dict().values(),
                                                  fresh.net.state_dict().values(), strict=True))
    with pytest.raises(InputError, match="between 0.25 and 4"):
        next(api.iter_finetune(image, mask, [0], base=tiny_model_dir, config=cfg, device="cpu",
                               pixel_ratio=8))

    # reversed contrast is kept the same way
    for _ in api.iter_finetune(255 - image, mask, [0], base=tiny_model_dir, config=cfg, device="cpu",
                               invert=True):
        pass
    tuned = load_model("tiny-v1-ft2", device="cpu")
    assert tuned.spec.invert and tuned.info["invert"] and not base.spec.invert
    assert "contrast the reverse" in (tuned.path / CARD_NAME).read_text()

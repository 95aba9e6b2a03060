"""Nothing lost, nothing silent: outputs never replace inputs or finished runs, odd pixels and
options are refused or named, and bad input fails with one clear line before any work."""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
import os
import signal

import numpy as np
import pytest
import tifffile

from napari_mitoseg import api, io
from napari_mitoseg.cli import main
from napari_mitoseg.inference import InputError, PredictOptions, iter_predict, normalise01, predict
from napari_mitoseg.metrics import NotAMaskError, check_mask
from napari_mitoseg.model import CONFIG_NAME, ModelError, ModelSpec, load_model, save_model, user_model_dir
from napari_mitoseg.training import (
    IGNORE,
    TrainConfig,
    TrainingError,
    check_run_dir,
    iter_train,
    train,
    training_masks,
)

TWO_STEPS = TrainConfig(steps=2, batch_size=1, tile=64, warmup=1, val_every=0, checkpoint_every=1,
                        hard_fraction=0.0)


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("mitoseg: error: ")
    return err[0]


# --------------------------------------------------------------------------- data loss


@pytest.mark.parametrize("target", ["image", "link", "gt"])
def test_segment_never_writes_over_its_input(target, files, tiny_model_dir, tmp_path, capsys):
    before = {k: p.read_bytes() for k, p in files.items()}
    link = tmp_path / "link.tif"
    link.symlink_to(files["image"])
    out = link if target == "link" else files[target]
    rc = main(["segment", str(files["image"]), "--model", str(tiny_model_dir), "--device", "cpu",
               "--gt", str(files["gt"]), "-o", str(out)])
    assert rc == 2
    assert "writing it would destroy the input" in _one_error_line(capsys)
    assert {k: p.read_bytes() for k, p in files.items()} == before


def test_segment_into_the_input_zarr_store_is_refused(tmp_path, sample):
    store = tmp_path / "stack.zarr"
    io.open_labels_zarr(store, sample[0].shape, np.uint8)[:] = sample[0]
    with pytest.raises(io.WriteError, match="lies inside the input"):
        api.segment_file(store, model="no-such-model", out=store / "labels.zarr")
    with pytest.raises(io.WriteError, match="is the input"):
        api.segment_file(store, model="no-such-model", out=store)


def test_demo_never_writes_over_the_data_it_reads(tmp_path, sample, monkeypatch):
    data = tmp_path / "sbem"
    data.mkdir()
    for name, arr in zip(("test_image.tif", "test_mask.tif"), sample, strict=True):
        tifffile.imwrite(data / name, arr, photometric="minisblack")
    monkeypatch.setattr(api, "sbem_dir", lambda: data)
    before = (data / "test_image.tif").read_bytes()
    with pytest.raises(io.WriteError, match="is the input"):
        api.demo(out=data / "test_image.tif")
    assert (data / "test_image.tif").read_bytes() == before


def _train_argv(files, out, *extra):
    return ["train", "--image", str(files["image"]), "--mask", str(files["gt"]), "--spec",
            json.dumps({"encoder": "mobilenet_v2", "encoder_depth": 3, "decoder_channels": [16, 8, 8],
                        "tile_size": 128, "tile_overlap": 16}),
            "--steps", "2", "--batch-size", "1", "--device", "cpu", "--out", str(out), *extra]


def test_train_into_a_finished_run_without_resume_is_refused_and_keeps_it(files, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(_train_argv(files, run)) == 0
    kept = {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert {"checkpoint.pt", "history.json", "best/model.safetensors", "last/model.safetensors"} <= \
        {str(k) for k in kept}
    capsys.readouterr()
    assert main(_train_argv(files, run)) == 2
    line = _one_error_line(capsys)
    assert "already holds a training run" in line and "--resume" in line and "fresh --out" in line
    assert {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()} == kept


def test_resume_never_overwrites_models_it_cannot_resume(files, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(_train_argv(files, run)) == 0
    (run / "checkpoint.pt").unlink()
    best = (run / "best" / "model.safetensors").read_bytes()
    capsys.readouterr()
    assert main([*_train_argv(files, run), "--resume"]) == 2
    assert "no checkpoint.pt to resume from" in _one_error_line(capsys)
    assert (run / "best" / "model.safetensors").read_bytes() == best


def test_train_out_must_not_be_an_input(files, tmp_path, capsys):
    before = files["image"].read_bytes()
    assert main(_train_argv(files, files["image"])) == 2
    assert "is a file" in _one_error_line(capsys)
    with pytest.raises(io.WriteError, match="destroy the input"):
        check_run_dir(tmp_path, False, [tmp_path / "history.json"])
    assert files["image"].read_bytes() == before


def test_iter_train_refuses_a_folder_holding_a_run(sample, tiny_spec, tmp_path):
    image, mask = sample
    train(image, mask, spec=tiny_spec, config=TWO_STEPS, device="cpu", out_dir=tmp_path / "run")
    with pytest.raises(TrainingError, match="--resume"):
        next(iter_train(image, mask, spec=tiny_spec, config=TWO_STEPS, device="cpu", out_dir=tmp_path / "run"))


# --------------------------------------------------------------------------- odd pixels


def test_non_finite_pixels_are_left_out_of_the_normalisation(rng):
    x = rng.normal(100, 10, (64, 64)).astype(np.float32)
    y = x.copy()
    y[:4, :4] = np.nan
    y[10, 10] = np.inf
    out = normalise01(y)
    assert np.isfinite(out).all()
    assert (out[:4, :4] == 0).all() and out[10, 10] == 0
    ok = np.isfinite(y)
    lo, hi = np.percentile(y[ok], (0.5, 99.5))
    np.testing.assert_allclose(out[ok], np.clip((y[ok] - lo) / (hi - lo), 0, 1), atol=1e-5)


def test_nan_pixels_are_background_and_z_smoothing_does_not_spread_them(tiny_model, sample, caplog):
    image = sample[0].astype(np.float32)
    image[1] = np.nan  # a whole slice
    image[0, :5, :20] = np.nan  # 100 pixels
    with caplog.at_level(logging.WARNING):
        prob, mask = predict(tiny_model, image, PredictOptions(z_smooth=True, threshold=0.01))
    assert np.isfinite(prob.astype(np.float32)).all()
    assert not mask[1].any() and not mask[0, :5, :20].any()
    assert mask[0].any() and mask[2].any()  # threshold 0.01: the neighbours keep their foreground
    text = caplog.text
    assert "slice 1 holds no finite pixel" in text
    assert "slice 0: 100 pixel(s) are NaN or inf" in text


def test_an_all_nan_stack_is_refused(tiny_model):
    with pytest.raises(InputError, match="no finite pixel"):
        next(iter_predict(tiny_model, np.full((2, 32, 32), np.nan, np.float32)))


def test_slices_without_contrast_are_named_on_the_command_line(tmp_path, sample, tiny_model_dir, capsys):
    image = sample[0].copy()
    image[0] = 0
    image[2] = 255
    tifffile.imwrite(tmp_path / "im.tif", image, photometric="minisblack")
    assert main(["segment", str(tmp_path / "im.tif"), "--model", str(tiny_model_dir), "--device", "cpu",
                 "--json"]) == 0
    err = capsys.readouterr().err
    assert "mitoseg: warning: slice 0 has no contrast" in err
    assert "mitoseg: warning: slice 2 has no contrast" in err
    assert "slice 1 has no contrast" not in err


# --------------------------------------------------------------------------- thresholds


@pytest.mark.parametrize("value", ["1.5", "nan", "0", "-0.2"])
def test_cli_threshold_outside_0_1_is_refused_before_the_model_loads(value, files, capsys):
    assert main(["segment", str(files["image"]), "--model", "no-such-model", "--threshold", value]) == 2
    assert "threshold must lie in (0, 1)" in _one_error_line(capsys)


@pytest.mark.parametrize("value", [1.5, float("nan"), 0.0, True, "0.5"])
def test_one_threshold_check_for_options_and_model_specs(value):
    with pytest.raises(InputError, match="threshold must"):
        PredictOptions(threshold=value)
    with pytest.raises(ModelError, match="threshold must"):
        ModelSpec(threshold=value)
    assert PredictOptions(threshold=0.3).threshold == 0.3 and PredictOptions().threshold is None


# --------------------------------------------------------------------------- evaluate


@pytest.mark.parametrize("kind", ["grey", "nan", "fraction"])
def test_evaluate_refuses_a_prediction_that_is_not_a_mask(kind, files, sample, tmp_path, capsys):
    image, gt = sample
    pred = {"grey": image, "nan": np.where(gt > 0, np.nan, 0).astype(np.float32),
            "fraction": gt * np.float32(0.7)}[kind]
    tifffile.imwrite(tmp_path / "pred.tif", pred, photometric="minisblack")
    assert main(["evaluate", str(tmp_path / "pred.tif"), str(files["gt"])]) == 2
    line = _one_error_line(capsys)
    assert {"grey": "looks like a grey image", "nan": "NaN", "fraction": "fractional values"}[kind] in line


def test_label_volumes_and_whole_float_masks_pass_the_mask_check(sample):
    from napari_mitoseg.postprocess import instances

    _, gt = sample
    check_mask(gt)
    check_mask(gt * 255)
    check_mask(gt.astype(np.float32))
    check_mask(instances(gt))
    with pytest.raises(NotAMaskError):
        check_mask(sample[0])


# --------------------------------------------------------------------------- training masks


def test_val_image_without_val_mask_is_an_error(files, tmp_path, capsys):
    assert main([*_train_argv(files, tmp_path / "run"), "--val-image", str(files["image"])]) == 2
    assert "--val-image and --val-mask go together" in _one_error_line(capsys)
    assert not (tmp_path / "run").exists()


def test_a_mask_without_mitochondria_is_an_error_for_a_new_model(files, sample, tmp_path, capsys):
    tifffile.imwrite(tmp_path / "empty.tif", np.zeros_like(sample[1]), photometric="minisblack")
    argv = _train_argv(files, tmp_path / "run")
    argv[argv.index("--mask") + 1] = str(tmp_path / "empty.tif")
    assert main(argv) == 2
    assert "holds no mitochondrion" in _one_error_line(capsys)
    assert not (tmp_path / "run" / "best").exists()


def test_zero_255_masks_are_binary_unless_255_is_named_the_ignore_value(caplog):
    m = np.array([[0, 255], [255, 0]], np.uint8)
    with caplog.at_level(logging.INFO):
        out = training_masks(m)
    np.testing.assert_array_equal(out, [[0, 1], [1, 0]])
    assert "holds only 0 and 255" in caplog.text
    np.testing.assert_array_equal(training_masks(m, ignore_value=255), [[0, IGNORE], [IGNORE, 0]])
    three = np.array([[0, 1], [255, 2]], np.uint8)  # labelled with 1 and 2, 255 unlabelled
    np.testing.assert_array_equal(training_masks(three), [[0, 1], [IGNORE, 1]])
    np.testing.assert_array_equal(training_masks(three, ignore_value=None), [[0, 1], [1, 1]])


def test_cli_train_on_a_0_255_mask_says_how_it_read_it(files, sample, tmp_path, capsys):
    tifffile.imwrite(tmp_path / "m255.tif", sample[1] * 255, photometric="minisblack")
    argv = _train_argv(files, tmp_path / "run")
    argv[argv.index("--mask") + 1] = str(tmp_path / "m255.tif")
    assert main(argv) == 0
    assert "mitoseg: note: the mask holds only 0 and 255" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse: not an integer
        main([*_train_argv(files, tmp_path / "run2"), "--ignore-value", "x"])


def test_iter_finetune_reads_a_0_255_mask_as_mitochondria(tiny_model_dir, sample):
    image, mask = sample
    cfg = dataclasses.replace(TWO_STEPS, steps=1, checkpoint_every=0)
    results = []
    for labels in (mask, mask * 255):
        gen = api.iter_finetune(image, labels, [0], base=tiny_model_dir, config=cfg, device="cpu")
        while True:
            try:
                next(gen)
            except StopIteration as stop:
                results.append(stop.value)
                break
    assert results[0].iou_before == results[1].iou_before
    assert results[0].iou_before < 1.0  # random weights: the 255 pixels counted, not ignored


# --------------------------------------------------------------------------- crashes


def test_an_empty_zarr_group_is_a_read_error_and_not_offered_to_napari(tmp_path):
    import zarr

    from napari_mitoseg._reader import get_reader

    zarr.open_group(str(tmp_path / "empty.zarr"), mode="w")
    with pytest.raises(io.ReadError, match="holding no array"):
        io.read_stack(tmp_path / "empty.zarr")
    assert get_reader(str(tmp_path / "empty.zarr")) is None


def test_a_read_only_output_folder_fails_before_the_model_loads(files, tmp_path, monkeypatch, capsys):
    real_access = os.access
    ro = tmp_path / "ro"
    ro.mkdir()
    monkeypatch.setattr(io.os, "access", lambda p, mode: False if str(p) == str(ro) else real_access(p, mode))
    assert main(["segment", str(files["image"]), "--model", "no-such-model", "-o", str(ro / "x.tif")]) == 2
    assert "read-only" in _one_error_line(capsys)
    with pytest.raises(io.WriteError, match="not a folder"):
        api.segment_file(files["image"], model="no-such-model", out=files["gt"] / "x.tif")


def test_a_full_disk_is_one_clear_error_and_leaves_nothing(tmp_path, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tifffile, "imwrite", full)
    with pytest.raises(io.WriteError, match="no space left"):
        io.write_labels(tmp_path / "out.tif", np.zeros((2, 8, 8), np.uint8))
    assert list(tmp_path.iterdir()) == []


def test_api_takes_a_nested_list_and_refuses_a_ragged_one(tiny_model, sample):
    image = sample[0][:1]
    np.testing.assert_array_equal(api.segment(image.tolist(), tiny_model), api.segment(image, tiny_model))
    with pytest.raises(InputError, match="not a regular array"):
        api.segment([[1, 2, 3], [4, 5]], tiny_model)
    with pytest.raises(InputError, match="array of numbers"):
        api.segment([["a"] * 8] * 8, tiny_model)


def test_iter_finetune_slice_out_of_range_names_the_range(tiny_model_dir, sample):
    image, mask = sample
    for bad in ([3], [-1]):
        with pytest.raises(InputError, match="numbered 0 to 2"):
            next(api.iter_finetune(image, mask, bad, base=tiny_model_dir, device="cpu"))


def test_bytes_paths_are_accepted(files):
    np.testing.assert_array_equal(io.read_stack(os.fsencode(files["image"])), io.read_stack(files["image"]))
    with pytest.raises(io.ReadError, match="expected a file path"):
        io.read_stack(12)


def test_tifffile_log_lines_are_held_back_on_a_truncated_tiff(tmp_path, sample, caplog):
    tifffile.imwrite(tmp_path / "good.tif", sample[0], compression="zlib", photometric="minisblack")
    data = (tmp_path / "good.tif").read_bytes()
    (tmp_path / "cut.tif").write_bytes(data[: len(data) // 3])
    with caplog.at_level(logging.WARNING), pytest.raises(io.ReadError, match="truncated"):
        io.read_stack(tmp_path / "cut.tif")
    assert [r for r in caplog.records if r.name.startswith("tifffile")] == []


def test_a_training_run_folder_stands_for_its_best_model(files, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(_train_argv(files, run)) == 0
    capsys.readouterr()
    assert main(["segment", str(files["image"]), "--model", str(run), "--device", "cpu", "--json"]) == 0
    captured = capsys.readouterr()
    assert f"mitoseg: note: {run} is a training run: using its best model {run / 'best'}" in captured.err
    assert json.loads(captured.out)["model"] == "best"
    assert main(["segment", str(files["image"]), "--model", str(run / "checkpoint.pt")]) == 2
    line = _one_error_line(capsys)
    assert "training checkpoint" in line and f"{run / 'best'}" in line


def test_broken_model_folders_are_listed_with_why(tiny_model, capsys):
    root = user_model_dir()
    save_model(tiny_model.net, tiny_model.spec, root / "nospec")
    cfg = json.loads((root / "nospec" / CONFIG_NAME).read_text())
    del cfg["spec"]
    (root / "nospec" / CONFIG_NAME).write_text(json.dumps(cfg))
    (root / "garbled").mkdir()
    (root / "garbled" / CONFIG_NAME).write_text("{not json")
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "nospec\tuser" in out and "broken:" in out and "no 'spec' key" in out
    assert "garbled\tuser" in out and "not JSON" in out
    with pytest.raises(ModelError, match="no 'spec' key"):
        load_model("nospec", device="cpu")


def test_wrong_architecture_in_config_is_one_line(tiny_model_dir):
    cfg = json.loads((tiny_model_dir / CONFIG_NAME).read_text())
    cfg["spec"]["encoder"] = "resnet18"
    (tiny_model_dir / CONFIG_NAME).write_text(json.dumps(cfg))
    with pytest.raises(ModelError) as err:
        load_model(tiny_model_dir, device="cpu")
    message = str(err.value)
    assert "\n" not in message and "do not fit their config" in message and "resnet18" in message


def test_default_names_the_shipped_default_model(caplog):
    from napari_mitoseg.model import DEFAULT_MODEL, SHIPPED_DIR, resolve_model_path

    with caplog.at_level(logging.INFO):
        assert resolve_model_path("default") == SHIPPED_DIR / DEFAULT_MODEL
    assert f"the shipped default model {DEFAULT_MODEL}" in caplog.text
    with pytest.raises(ModelError, match=f"the shipped default is '{DEFAULT_MODEL}'"):
        resolve_model_path("nope")


def test_resume_without_a_checkpoint_says_so(files, tmp_path, capsys):
    assert main([*_train_argv(files, tmp_path / "run"), "--resume"]) == 0
    assert "mitoseg: warning: nothing to resume" in capsys.readouterr().err


def test_sigterm_during_a_zarr_write_removes_the_hidden_folder(files, tiny_model_dir, tmp_path, monkeypatch,
                                                               capsys):
    from napari_mitoseg import pipeline

    real = pipeline.iter_predict

    def killed_midway(*args, **kwargs):
        for r in real(*args, **kwargs):
            if r.index == 1:
                os.kill(os.getpid(), signal.SIGTERM)
            yield r

    monkeypatch.setattr(pipeline, "iter_predict", killed_midway)
    out = tmp_path / "labels.zarr"
    before = signal.getsignal(signal.SIGTERM)
    rc = main(["segment", str(files["image"]), "--model", str(tiny_model_dir), "--device", "cpu",
               "-o", str(out)])
    assert rc == 143
    assert "terminated; nothing was written" in capsys.readouterr().err
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    assert signal.getsignal(signal.SIGTERM) == before


def test_the_npe2_reader_opens_a_grey_png(tmp_path, rng):
    import skimage.io

    from napari_mitoseg._reader import get_reader

    a = rng.integers(0, 255, (30, 40), dtype=np.uint8)
    skimage.io.imsave(tmp_path / "slice.png", a, check_contrast=False)
    reader = get_reader(str(tmp_path / "slice.png"))
    assert reader is not None
    (data, meta, kind), = reader(str(tmp_path / "slice.png"))
    np.testing.assert_array_equal(np.asarray(data), a[None])
    assert kind == "image"
    skimage.io.imsave(tmp_path / "rgb.png", np.zeros((30, 40, 3), np.uint8), check_contrast=False)
    assert get_reader(str(tmp_path / "rgb.png")) is None


def test_a_full_disk_while_training_is_one_clear_error(sample, tiny_spec, tmp_path, monkeypatch):
    import torch

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    image, mask = sample
    with pytest.raises(io.WriteError, match="no space left"):
        train(image, mask, spec=tiny_spec, config=TWO_STEPS, device="cpu", out_dir=tmp_path / "run")
    assert [p.name for p in (tmp_path / "run").iterdir()] == []


def test_segment_file_takes_bytes_paths(files, tiny_model_dir, tmp_path):
    out = tmp_path / "labels.zarr"
    res = api.segment_file(os.fsencode(files["image"]), model=tiny_model_dir, device="cpu",
                           out=os.fsencode(out))
    assert res.labels is None and io.read_stack(out).shape == (3, 100, 124)


def test_sigterm_during_training_points_to_resume(files, tmp_path, monkeypatch, capsys):
    import napari_mitoseg.training as training

    real = training.iter_train_volumes

    def killed_after_the_checkpoint(*args, **kwargs):
        for prog in real(*args, **kwargs):
            yield prog
            if prog.step == 2:  # the checkpoint of the last step is written
                os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(training, "iter_train_volumes", killed_after_the_checkpoint)
    run = tmp_path / "run"
    assert main(_train_argv(files, run)) == 143
    assert f"the last checkpoint stays in {run}: continue with --resume" in capsys.readouterr().err
    assert (run / "checkpoint.pt").exists()


def test_iter_finetune_refuses_a_mask_as_the_image(tiny_model_dir, sample):
    _, mask = sample
    with pytest.raises(InputError, match="looks like a mask or label volume"):
        next(api.iter_finetune(mask, mask, [0], base=tiny_model_dir, device="cpu"))

"""The ``mitoseg`` command line, in-process through ``main([...])`` and once as a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tifffile

from napari_mitoseg.cli import main
from napari_mitoseg.io import read_stack
from napari_mitoseg.model import save_model, user_model_dir


@pytest.fixture
def files(tmp_path, sample):
    image, gt = sample
    paths = {name: tmp_path / f"{name}.tif" for name in ("image", "gt", "short_gt", "rgb", "pred")}
    tifffile.imwrite(paths["image"], image, photometric="minisblack")
    tifffile.imwrite(paths["gt"], gt, photometric="minisblack")
    tifffile.imwrite(paths["short_gt"], gt[:2], photometric="minisblack")
    tifffile.imwrite(paths["rgb"], np.zeros((40, 50, 3), np.uint8))
    tifffile.imwrite(paths["pred"], np.roll(gt, 3, axis=2), photometric="minisblack")  # a near miss
    return paths


def test_segment_with_ground_truth_prints_scores_as_json(files, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "labels.tif"
    rc = main(["segment", str(files["image"]), "--model", str(tiny_model_dir), "--device", "cpu",
               "--gt", str(files["gt"]), "--json", "-o", str(out)])
    assert rc == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert {"iou", "dice", "precision", "recall", "slices", "seconds"} <= set(report)
    assert all(0.0 <= report[k] <= 1.0 for k in ("iou", "dice", "precision", "recall"))
    assert len(report["slices"]) == 3
    assert report["model"] == "tiny-v1"
    assert report["seconds"] > 0
    assert report["pixel_ratio"] == 1.0
    labels = read_stack(out)
    assert labels.shape == (3, 100, 124)
    assert set(np.unique(labels)) <= {0, 1}


def test_segment_instances_without_ground_truth(files, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "inst.zarr"
    assert main(["segment", str(files["image"]), "--model", str(tiny_model_dir), "--device", "cpu",
                 "--instances", "-o", str(out)]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {out}"
    assert np.asarray(read_stack(out)).dtype == np.int32


def test_segment_at_a_pixel_ratio_returns_labels_at_the_stacks_size(files, tiny_model_dir, capsys):
    assert main(["segment", str(files["image"]), "--model", str(tiny_model_dir), "--device", "cpu",
                 "--pixel-ratio", "0.5", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["pixel_ratio"] == 0.5 and report["shape"] == [3, 100, 124]


def test_segment_at_several_scales_says_so_and_refuses_a_bad_scale(files, tiny_model_dir, capsys):
    assert main(["segment", str(files["image"]), "--model", str(tiny_model_dir), "--device", "cpu",
                 "--gt", str(files["gt"]), "--scales", "1", "1.5", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["scales"] == [1.0, 1.5]
    assert main(["segment", str(files["image"]), "--model", str(tiny_model_dir), "--device", "cpu",
                 "--gt", str(files["gt"]), "--scales", "1", "3", "--json"]) != 0
    captured = capsys.readouterr()
    assert "between 0.5 and 2" in captured.err and captured.out == ""


def test_segment_smooths_a_near_isotropic_stack_wide_unless_told_its_z_step(tiny_model_dir, tmp_path, capsys):
    from napari_mitoseg.api import get_model, segment
    from napari_mitoseg.inference import PredictOptions
    from napari_mitoseg.synthetic import make_isotropic

    iso = make_isotropic((14, 96, 112))
    path = tmp_path / "fib.tif"
    tifffile.imwrite(path, iso, photometric="minisblack")
    tiny = get_model(tiny_model_dir, "cpu")
    base = ["segment", str(path), "--model", str(tiny_model_dir), "--device", "cpu", "--z-smooth"]
    assert main([*base, "-o", str(tmp_path / "wide.tif")]) == 0
    assert "near-isotropic" in capsys.readouterr().err
    wide = segment(iso, tiny, PredictOptions(z_smooth=True))
    np.testing.assert_array_equal(read_stack(tmp_path / "wide.tif"), wide)
    assert main([*base, "--z-step", "4", "-o", str(tmp_path / "thick.tif")]) == 0
    assert "near-isotropic" not in capsys.readouterr().err
    thick = segment(iso, tiny, PredictOptions(z_smooth=True, z_step=4.0))
    np.testing.assert_array_equal(read_stack(tmp_path / "thick.tif"), thick)
    assert (thick != read_stack(tmp_path / "wide.tif")).any()
    assert main([*base, "--z-step", "0", "-o", str(tmp_path / "bad.tif")]) != 0
    assert "z step must be a positive number" in capsys.readouterr().err and not (tmp_path / "bad.tif").exists()


def test_evaluate(files, capsys):
    assert main(["evaluate", str(files["gt"]), str(files["gt"])]) == 0
    assert capsys.readouterr().out.strip() == "iou=1.0000  dice=1.0000  precision=1.0000  recall=1.0000"
    assert main(["evaluate", str(files["pred"]), str(files["gt"]), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert 0.0 < report["iou"] < 1.0
    assert len(report["slices"]) == 3


def test_models_lists_user_models(tiny_model, capsys):
    save_model(tiny_model.net, tiny_model.spec, user_model_dir() / "mine-ft1", info={"summary": "my model"})
    assert main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert f"mine-ft1\tuser\t{user_model_dir() / 'mine-ft1'}\tmy model" in lines


def test_info(capsys, monkeypatch):
    monkeypatch.setenv("MITOSEG_PRECISION", "bfloat16")
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("napari-mitoseg 0.1.0")
    assert "devices: " in out and "cpu" in out and "CPU inference: bfloat16" in out
    assert f"user models: {user_model_dir()}" in out


def test_train_a_couple_of_steps(files, tiny_spec, tmp_path, capsys):
    run = tmp_path / "run"
    spec = json.dumps(tiny_spec.to_dict())
    rc = main(["train", "--image", str(files["image"]), "--mask", str(files["gt"]), "--spec", spec,
               "--steps", "2", "--batch-size", "2", "--out", str(run), "--device", "cpu",
               "--val-fraction", "0.34"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "step 2/2" in out and "val_iou=" in out
    config = json.loads((run / "last" / "config.json").read_text())
    assert config["spec"]["encoder"] == "mobilenet_v2"
    assert config["info"]["train_slices"] == 2 and config["info"]["val_slices"] == 1
    assert (run / "best" / "model.safetensors").exists()


def test_train_learns_from_side_views_of_a_volume_when_asked(tiny_spec, tmp_path, capsys):
    import tifffile

    from napari_mitoseg.synthetic import make_sample

    image, gt = make_sample((12, 48, 56), seed=2)
    files = {"image": tmp_path / "image.tif", "gt": tmp_path / "gt.tif"}
    tifffile.imwrite(files["image"], image)
    tifffile.imwrite(files["gt"], gt)
    base = ["train", "--image", str(files["image"]), "--mask", str(files["gt"]), "--spec",
            json.dumps(tiny_spec.to_dict()), "--steps", "1", "--batch-size", "2", "--device", "cpu"]
    assert main([*base, "--views", "xyz", "--val-fraction", "0.25", "--out", str(tmp_path / "run")]) == 0
    z, y, x = image.shape
    side = (y + 1) // 2 + (x + 1) // 2  # every second row and column of the 9 training slices
    assert f"learning from {z - 3} XY slices and {side} XZ and YZ planes" in capsys.readouterr().out
    config = json.loads((tmp_path / "run" / "last" / "config.json").read_text())
    assert config["info"]["train_slices"] == z - 3 + side and config["info"]["val_slices"] == 3
    assert main([*base, "--views", "xy", "--views", "xyz", "--out", str(tmp_path / "r2")]) == 2
    assert "give one --views, or one per --image (1 images)" in capsys.readouterr().err


def test_train_from_a_base_for_another_stack_keeps_its_pixel_ratio_and_contrast(files, tiny_model_dir, tmp_path,
                                                                                capsys):
    run = tmp_path / "ft"
    assert main(["train", "--image", str(files["image"]), "--mask", str(files["gt"]),
                 "--base", str(tiny_model_dir), "--pixel-ratio", "2", "--invert", "--steps", "1",
                 "--batch-size", "2", "--out", str(run), "--device", "cpu"]) == 0
    config = json.loads((run / "last" / "config.json").read_text())
    assert config["spec"]["input_scale"] == 2.0 and config["spec"]["invert"] is True
    assert config["info"]["base_model"] == "tiny-v1"


def test_train_on_two_volumes_of_different_pixel_sizes(files, tiny_spec, tmp_path, capsys):
    run = tmp_path / "two"
    vol = ["--image", str(files["image"]), "--mask", str(files["gt"])]
    assert main(["train", *vol, "--pixel-size", "5", *vol, "--pixel-size", "7.5", "--spec",
                 json.dumps(tiny_spec.to_dict()), "--steps", "2", "--batch-size", "2",
                 "--val-fraction", "0.34", "--out", str(run), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "slices resized by 1.5 to the model's pixel size" in out
    config = json.loads((run / "last" / "config.json").read_text())
    assert config["spec"]["pixel_size_nm"] == 5.0  # the first volume's
    assert config["info"]["train_pixel_sizes_nm"] == [5.0, 7.5]
    assert config["info"]["train_slices"] == 4 and config["info"]["val_slices"] == 2
    history = json.loads((run / "history.json").read_text())
    assert len(history[-1]["val_iou_by_volume"]) == 2


def test_fine_tuning_at_a_pixel_size_needs_a_base_that_records_one(files, tiny_model_dir, tmp_path, capsys):
    args = ["train", "--image", str(files["image"]), "--mask", str(files["gt"]), "--pixel-size", "10",
            "--base", str(tiny_model_dir), "--steps", "1", "--batch-size", "2", "--device", "cpu"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 2
    assert "records no pixel size" in capsys.readouterr().err
    # declared in --spec, the base model's pixel size is 5 nm: a 10 nm stack is a ratio of 2
    assert main([*args, "--spec", '{"pixel_size_nm": 5}', "--out", str(tmp_path / "b")]) == 0
    config = json.loads((tmp_path / "b" / "last" / "config.json").read_text())
    assert config["spec"]["input_scale"] == 2.0 and config["spec"]["pixel_size_nm"] == 10.0


def _error_cases(files, model, tmp_path):
    missing = str(tmp_path / "missing.tif")
    seg = ["segment", str(files["image"]), "--device", "cpu"]
    return {
        "missing file": (["segment", missing, "--model", model], "does not exist"),
        "unknown model": ([*seg, "--model", "no-such-model"], "unknown model 'no-such-model'; available:"),
        "gt shape": ([*seg, "--model", model, "--gt", str(files["short_gt"])], "does not match image shape"),
        "output format": ([*seg, "--model", model], "write labels as .tif, .tiff, .zarr"),
        "rgb image": (["segment", str(files["rgb"]), "--model", model], "RGB"),
        "pixel ratio": ([*seg, "--model", model, "--pixel-ratio", "9"], "pixel ratio must lie between"),
        "evaluate shapes": (["evaluate", str(files["gt"]), str(files["short_gt"])], "does not match"),
        "train bad spec": (["train", "--image", str(files["image"]), "--mask", str(files["gt"]), "--spec", "{x",
                            "--out", str(tmp_path / "run")], "--spec must be a JSON object"),
        "train ratio without base": (["train", "--image", str(files["image"]), "--mask", str(files["gt"]),
                                      "--invert", "--out", str(tmp_path / "run")], "need --base"),
        "train bad mask": (["train", "--image", str(files["image"]), "--mask", str(files["short_gt"]), "--out",
                            str(tmp_path / "run")], "differ in shape"),
        "train masks per image": (["train", "--image", str(files["image"]), "--image", str(files["image"]),
                                   "--mask", str(files["gt"]), "--out", str(tmp_path / "run")],
                                  "one --mask per --image"),
        "train size out of range": (["train", "--image", str(files["image"]), "--mask", str(files["gt"]),
                                     "--pixel-size", "5", "--image", str(files["image"]), "--mask",
                                     str(files["gt"]), "--pixel-size", "100", "--out", str(tmp_path / "run")],
                                    "pixel size 100 nm is 20x the model's 5 nm"),
        "train sizes per image": (["train", "--image", str(files["image"]), "--mask", str(files["gt"]),
                                   "--pixel-size", "5", "--pixel-size", "6", "--out", str(tmp_path / "run")],
                                  "one --pixel-size per --image"),
    }


@pytest.mark.parametrize("case", ["missing file", "unknown model", "gt shape", "output format", "rgb image",
                                  "pixel ratio",
                                  "evaluate shapes", "train bad spec", "train ratio without base",
                                  "train bad mask", "train masks per image", "train sizes per image",
                                  "train size out of range"])
def test_errors_are_one_line_without_traceback_and_leave_the_output(case, files, tiny_model_dir, tmp_path,
                                                                     capsys):
    argv, message = _error_cases(files, str(tiny_model_dir), tmp_path)[case]
    out = tmp_path / ("labels.png" if case == "output format" else "labels.tif")
    out.write_bytes(b"the user's earlier result")
    if argv[0] == "segment":
        argv = [*argv, "-o", str(out)]
    rc = main(argv)
    captured = capsys.readouterr()
    assert rc != 0
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("mitoseg: error: ")
    assert message in lines[0]
    assert "Traceback" not in captured.err + captured.out
    assert out.read_bytes() == b"the user's earlier result"


def test_python_dash_m_runs_the_cli_and_returns_its_exit_code(tmp_path):
    env = {**os.environ, "MITOSEG_MODEL_DIR": str(tmp_path / "models")}
    proc = subprocess.run([sys.executable, "-m", "napari_mitoseg", "segment", str(tmp_path / "nope.tif")],
                          capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"mitoseg: error: {tmp_path / 'nope.tif'} does not exist"
    assert proc.stdout == ""


def test_importing_the_package_does_not_import_torch():
    code = ("import sys, napari_mitoseg, napari_mitoseg.api, napari_mitoseg.cli, napari_mitoseg.io, "
            "napari_mitoseg.metrics, napari_mitoseg.model, napari_mitoseg.inference; "
            "print(sorted(m for m in ('torch', 'segmentation_models_pytorch', 'qtpy', 'napari') "
            "if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def _all_options():
    """(sub-command, argparse action) of every option of every sub-command."""
    import argparse

    from napari_mitoseg.cli import _parser

    p = _parser()
    subs = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
    yield from (("mitoseg", a) for a in p._actions)
    for name, sp in subs.choices.items():
        yield from ((name, a) for a in sp._actions)


def test_every_option_says_what_it_does_and_its_default():
    import argparse

    actions = list(_all_options())
    assert len({c for c, _ in actions}) == 10  # the top level and its nine sub-commands
    silent = [f"{c} {a.dest}" for c, a in actions if not (a.help or "").strip()]
    assert silent == []
    plain = (argparse._HelpAction, argparse._VersionAction, argparse._SubParsersAction)
    no_default = [f"{c} {'/'.join(a.option_strings)}" for c, a in actions
                  if a.option_strings and not a.required and not isinstance(a, plain)
                  and "default" not in a.help]
    assert no_default == []


def test_help_shows_the_defaults_and_version_prints_the_version(capsys):
    from napari_mitoseg import __version__

    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.strip() == f"mitoseg {__version__}"
    with pytest.raises(SystemExit):
        main(["measure", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "in voxels (default: 64)" in out and "voxel size in nm" in out
    with pytest.raises(SystemExit):
        main(["segment", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "(default: auto)" in out and "slices per task on a cluster (default: 16)" in out


def test_the_training_defaults_in_the_help_are_the_training_defaults():
    from napari_mitoseg.cli import _parser
    from napari_mitoseg.training import FINETUNE, TrainConfig

    new, tune = TrainConfig(), FINETUNE
    helps = {a.dest: a.help for a in _parser()._subparsers._group_actions[0].choices["train"]._actions}
    assert f"default: {new.steps} for a new model, {tune.steps} with --base" in helps["steps"]
    assert f"default: {new.batch_size} for a new model, {tune.batch_size} with --base" in helps["batch_size"]
    assert f"default: {new.lr:g} for a new model, {tune.lr:g} with --base" in helps["lr"]
    assert (f"default: {new.hard_fraction:g} for a new model, {tune.hard_fraction:g} with --base"
            in helps["hard_fraction"])
    assert f"(default: {new.augment})" in helps["augment"] and tune.augment == new.augment


def test_the_readme_command_lines_parse():
    import re
    import shlex
    from pathlib import Path

    from napari_mitoseg.cli import _parser

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    text = re.sub(r"\\\n\s*", " ", readme)  # join continued lines
    lines = [ln.split("#")[0].strip() for ln in text.splitlines() if ln.strip().startswith("mitoseg ")]
    assert len(lines) >= 15
    for line in lines:
        _parser().parse_args(shlex.split(line)[1:])  # SystemExit (and a usage line) if not

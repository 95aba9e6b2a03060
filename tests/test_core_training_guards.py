"""Training refuses what cannot be right before any step, never saves a model that diverged,
never shares a run folder with another training, and follows the machine's load both ways."""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from napari_mitoseg import api, io
from napari_mitoseg.cli import main
from napari_mitoseg.inference import InputError
from napari_mitoseg.model import user_model_dir
from napari_mitoseg.training import (
    CHECKPOINT,
    TrainConfig,
    TrainingError,
    iter_train,
    split_validation,
    train,
    training_masks,
)
from napari_mitoseg.training import engine as engine_mod
from napari_mitoseg.training import threads as threads_mod
from napari_mitoseg.training.checkpoints import LOCK

FOUR = TrainConfig(steps=4, batch_size=1, tile=64, warmup=1, val_every=0, checkpoint_every=2,
                   hard_fraction=0.0)


def _train_argv(files, out, *extra):
    return ["train", "--image", str(files["image"]), "--mask", str(files["gt"]), "--spec",
            json.dumps({"encoder": "mobilenet_v2", "encoder_depth": 3, "decoder_channels": [16, 8, 8],
                        "tile_size": 128, "tile_overlap": 16}),
            "--steps", "2", "--batch-size", "1", "--device", "cpu", "--out", str(out), *extra]


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("mitoseg: error: ")
    return err[0]


def _drain(gen):
    progress = []
    while True:
        try:
            progress.append(next(gen))
        except StopIteration as stop:
            return progress, stop.value


# --------------------------------------------------------------------------- settings


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--lr", "nan"], "lr must be a number above 0"),
        (["--lr", "inf"], "lr must be a number above 0"),
        (["--lr", "-1"], "lr must be a number above 0"),
        (["--lr", "0"], "lr must be a number above 0"),
        (["--lr", "1e6"], "and at most 1"),
        (["--seed", "-1"], "seed must be a whole number from 0"),
        (["--val-fraction", "nan"], "validation fraction must be a number from 0"),
        (["--val-fraction", "1"], "not including, 1"),
        (["--val-fraction", "-0.2"], "validation fraction must be a number from 0"),
        (["--config", '{"tile": 0}'], "tile must be a whole number >= 32"),
        (["--config", '{"tile": -32}'], "tile must be a whole number >= 32"),
        (["--config", '{"lr": "x"}'], "lr must be a number above 0 and at most 1, got 'x'"),
        (["--config", '{"scale_range": [0, 1]}'], "scale_range must be two numbers"),
        (["--config", '{"scale_range": [2, 1]}'], "0 < LOW <= HIGH"),
        (["--config", '{"scale_range": "x"}'], "scale_range must be two numbers"),
        (["--config", '{"warmup": 1.5}'], "warmup must be a whole number"),
    ],
)
def test_train_refuses_impossible_settings_in_one_line(option, message, files, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(_train_argv(files, run, *option)) == 2
    assert message in _one_error_line(capsys)
    assert not run.exists()


def test_train_refuses_a_learning_rate_that_is_not_a_number(files, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(_train_argv(files, tmp_path / "run", "--lr", "fast"))
    assert exit_.value.code == 2
    assert "--lr: invalid float value: 'fast'" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["abc", "0", "-2", "1.5"])
def test_train_refuses_a_thread_count_that_is_not_one(value, files, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MITOSEG_THREADS", value)
    assert main(_train_argv(files, tmp_path / "run")) == 2
    assert f"MITOSEG_THREADS must be a whole number of threads >= 1 (e.g. 2), got {value!r}" in \
        _one_error_line(capsys)


def test_the_engine_checks_the_thread_setting_before_any_work(sample, tiny_spec, monkeypatch):
    monkeypatch.setenv("MITOSEG_THREADS", "many")
    with pytest.raises(TrainingError, match="MITOSEG_THREADS"):
        next(iter_train(*sample, spec=tiny_spec, config=FOUR, device="cpu"))


def test_split_validation_refuses_a_fraction_that_is_not_one():
    image = np.zeros((4, 8, 8), np.uint8)
    for bad in (float("nan"), -0.1, 1.5, "0.2"):
        with pytest.raises(TrainingError, match="val fraction must be a number from 0 to 1"):
            split_validation(image, image, bad)


# --------------------------------------------------------------------------- data


def test_a_mask_of_only_the_unlabelled_value_is_refused(sample, tiny_spec):
    image, _ = sample
    full = np.full(image.shape, 255, np.uint8)
    with pytest.raises(TrainingError, match="every pixel of the mask is 255"):
        train(image, full, spec=tiny_spec, config=FOUR, device="cpu")
    # a 0/255 mask stays a valid binary mask
    mask = training_masks(np.where(sample[1] > 0, 255, 0).astype(np.uint8))
    assert set(np.unique(mask)) == {0, 1}


def test_the_mask_given_as_the_image_is_refused(sample, tiny_spec):
    _, mask = sample
    with pytest.raises(TrainingError, match="the training image looks like a mask or label volume"):
        train(mask * 7, mask, spec=tiny_spec, config=FOUR, device="cpu")


def test_the_grey_stack_given_as_the_mask_is_refused(sample, tiny_spec, files, tmp_path, capsys):
    image, _ = sample
    with pytest.raises(TrainingError, match="the mask looks like a grey image"):
        train(image, image, spec=tiny_spec, config=FOUR, device="cpu")
    argv = _train_argv(files, tmp_path / "run")
    argv[argv.index("--mask") + 1] = str(files["image"])
    assert main(argv) == 2
    assert "the mask looks like a grey image" in _one_error_line(capsys)


def test_a_validation_mask_of_another_shape_is_refused_before_any_step(sample, tiny_spec, monkeypatch):
    image, mask = sample
    steps = []
    real = engine_mod._one_step
    monkeypatch.setattr(engine_mod, "_one_step", lambda *a: steps.append(1) or real(*a))
    gen = iter_train(image[:2], mask[:2], val_images=image[2:], val_masks=mask[2:, :50], spec=tiny_spec,
                     config=FOUR, device="cpu")
    with pytest.raises(TrainingError, match="validation image and mask differ in shape"):
        next(gen)
    assert steps == []


# --------------------------------------------------------------------------- divergence


def _poisoned(monkeypatch, at_step: int, what: str):
    """Make step ``at_step`` give a NaN loss, or leave an infinite weight with a finite loss."""
    real = engine_mod._one_step

    def step(run, loss_fn):
        loss = real(run, loss_fn)
        if run.step == at_step:
            if what == "loss":
                return float("nan")
            with torch.no_grad():
                next(iter(run.net.parameters())).view(-1)[0] = float("inf")
        return loss

    monkeypatch.setattr(engine_mod, "_one_step", step)


@pytest.mark.parametrize("what", ["loss", "weights"])
def test_a_diverged_model_is_never_saved(what, sample, tiny_spec, tmp_path, monkeypatch):
    _poisoned(monkeypatch, 3, what)
    out = tmp_path / "run"
    with pytest.raises(TrainingError, match="training diverged.*the last good checkpoint \\(step 2\\)"):
        train(*sample, spec=tiny_spec, config=FOUR, device="cpu", out_dir=out)
    assert not (out / "last").exists() and not (out / "best").exists()
    state = torch.load(out / CHECKPOINT, weights_only=False)
    assert state["step"] == 2
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert not (out / LOCK).exists()


def test_a_diverged_fine_tune_saves_no_model(sample, tiny_model_dir, monkeypatch):
    image, mask = sample
    _poisoned(monkeypatch, 4, "weights")  # the last step: only the final check sees it
    with pytest.raises(TrainingError, match="weights became NaN or infinite at step 4"):
        _drain(api.iter_finetune(image, mask, [0], base=tiny_model_dir, config=FOUR, device="cpu"))
    assert list(user_model_dir().iterdir()) == []


# --------------------------------------------------------------------------- the run folder


def test_two_trainings_into_one_folder_the_second_is_refused(sample, tiny_spec, tmp_path):
    out = tmp_path / "run"
    first = iter_train(*sample, spec=tiny_spec, config=FOUR, device="cpu", out_dir=out)
    next(first)
    assert (out / LOCK).read_text().split()[0] == str(os.getpid())
    second = iter_train(*sample, spec=tiny_spec, config=FOUR, device="cpu", out_dir=out)
    with pytest.raises(TrainingError, match=f"another training \\(process {os.getpid()} .*\\) is writing"):
        next(second)
    _drain(first)
    assert not (out / LOCK).exists()
    assert (out / "last").is_dir()


def test_the_cli_refuses_a_folder_another_training_holds(files, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    import socket

    (run / LOCK).write_text(f"{os.getpid()} {socket.gethostname()}")
    assert main(_train_argv(files, run)) == 2
    assert "is writing into" in _one_error_line(capsys)
    assert sorted(p.name for p in run.iterdir()) == [LOCK]


def test_a_stale_lock_of_a_dead_process_is_taken_over(sample, tiny_spec, tmp_path):
    import socket

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out = tmp_path / "run"
    out.mkdir()
    (out / LOCK).write_text(f"{dead.pid} {socket.gethostname()}")
    _drain(iter_train(*sample, spec=tiny_spec, config=FOUR, device="cpu", out_dir=out))
    assert (out / "last").is_dir() and not (out / LOCK).exists()


def test_a_truncated_checkpoint_says_how_to_start_over(files, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(_train_argv(files, run)) == 0
    ck = run / CHECKPOINT
    ck.write_bytes(ck.read_bytes()[: ck.stat().st_size // 2])
    capsys.readouterr()
    assert main([*_train_argv(files, run), "--resume", "--steps", "4"]) == 2
    line = _one_error_line(capsys)
    assert "checkpoint.pt is damaged and cannot be resumed" in line
    assert "without --resume into a fresh --out folder" in line


def test_a_full_disk_while_saving_the_model_keeps_the_folder_whole(sample, tiny_spec, tmp_path, monkeypatch):
    import safetensors.torch

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    out = tmp_path / "run"
    with pytest.raises(io.WriteError, match="no space left"):
        train(*sample, spec=tiny_spec, config=FOUR, device="cpu", out_dir=out)
    # the checkpoint of the last step is complete; no half-written model, no temporary folder
    assert sorted(p.name for p in out.iterdir()) == [CHECKPOINT, "history.json"]
    assert torch.load(out / CHECKPOINT, weights_only=False)["step"] == 4


def test_a_full_disk_while_writing_the_history_keeps_the_old_one(sample, tiny_spec, tmp_path, monkeypatch):
    from pathlib import Path

    out = tmp_path / "run"
    real = Path.write_text
    calls = []

    def write_text(self, text, *args, **kwargs):
        if "history.json" in self.name:
            calls.append(self)
            if len(calls) == 2:
                real(self, text[:10])
                raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, text, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", write_text)
    with pytest.raises(io.WriteError, match="no space left"):
        train(*sample, spec=tiny_spec, config=FOUR, device="cpu", out_dir=out)
    assert [h["step"] for h in json.loads((out / "history.json").read_text())] == [1, 2]
    assert sorted(p.name for p in out.iterdir()) == [CHECKPOINT, "history.json"]


# --------------------------------------------------------------------------- fine-tuned names


@pytest.mark.parametrize("name", ["/abs/path", "../outside", "sub/model", ".hidden", "", "a\\b"])
def test_a_fine_tuned_model_name_that_is_a_path_is_refused(name, sample, tiny_model_dir, tmp_path):
    image, mask = sample
    target = tmp_path / "elsewhere"
    with pytest.raises(InputError, match="must be a plain name"):
        next(api.iter_finetune(image, mask, [0], base=tiny_model_dir, config=FOUR, device="cpu",
                               name=str(target) if name == "/abs/path" else name))
    assert not target.exists()
    assert list(user_model_dir().iterdir()) == []


def test_a_fine_tuned_model_may_not_take_a_shipped_name(sample, tiny_model_dir):
    image, mask = sample
    with pytest.raises(InputError, match="'mito-em-v3' is a shipped model's"):
        next(api.iter_finetune(image, mask, [0], base=tiny_model_dir, config=FOUR, device="cpu",
                               name="mito-em-v3"))
    assert list(user_model_dir().iterdir()) == []


# --------------------------------------------------------------------------- threads


class _Machine:
    """A machine of 2 cores whose other work the test sets: what ``/proc/stat`` and the
    1-minute load average would read."""

    def __init__(self, monkeypatch):
        self.others = 0.0  # cores the other processes keep busy
        self.load_average = 0.0
        self.clock = 0.0
        self.busy = 0.0
        self.own = 0.0
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        monkeypatch.delenv("MITOSEG_THREADS", raising=False)
        monkeypatch.setattr(threads_mod, "_cores", lambda: 2)
        monkeypatch.setattr(threads_mod, "_load_average", lambda: self.load_average)
        monkeypatch.setattr(threads_mod, "machine_busy_seconds", lambda: self.busy)
        monkeypatch.setattr(threads_mod.time, "monotonic", lambda: self.clock)
        monkeypatch.setattr(threads_mod.time, "process_time", lambda: self.own)
        import napari_mitoseg.model as model_mod

        monkeypatch.setattr(model_mod.os, "getloadavg", lambda: (self.load_average,) * 3)

    def run(self, seconds: float, own_threads: int) -> None:
        """``seconds`` pass with this process using ``own_threads`` cores next to the others."""
        share = min(2.0, self.others + own_threads)
        own = own_threads * share / (self.others + own_threads)
        self.clock += seconds
        self.busy += share * seconds
        self.own += own * seconds


def test_the_thread_choice_rises_again_when_the_load_falls(monkeypatch):
    machine = _Machine(monkeypatch)
    choice = threads_mod.ThreadChoice(every=1)
    machine.others, machine.load_average = 8.0, 9.0
    assert choice.start(on_cpu=True) == 1
    threads = choice.update(0, 1)
    for step in range(1, 4):  # busy: one thread
        machine.run(10, threads)
        threads = choice.update(step, threads)
        assert threads == 1
    # the other work ends; the 1-minute load average still reads it for minutes
    machine.others, machine.load_average = 0.0, 2.5
    machine.run(10, threads)
    assert choice.update(4, threads) == 2


def test_the_thread_choice_stays_low_while_the_machine_is_busy(monkeypatch):
    machine = _Machine(monkeypatch)
    choice = threads_mod.ThreadChoice(every=1)
    machine.others, machine.load_average = 1.0, 2.0  # one core's worth of other work
    threads = choice.start(on_cpu=True)
    for step in range(4):
        machine.run(10, threads)
        threads = choice.update(step, threads)
        assert threads == 1
    machine.others, machine.load_average = 0.0, 1.0
    machine.run(10, threads)
    assert choice.update(4, threads) == 2
    assert threads_mod.ThreadChoice().start(on_cpu=False) is None


def test_training_follows_the_load_back_up(sample, tiny_spec, monkeypatch):
    machine = _Machine(monkeypatch)
    machine.others, machine.load_average = 8.0, 9.0
    monkeypatch.setattr(threads_mod, "CHECK_EVERY", 2)
    real = engine_mod._one_step

    def step(run, loss_fn):
        machine.run(10, torch.get_num_threads())
        if run.step == 1:  # the other work ends after the second step
            machine.others, machine.load_average = 0.0, 2.5
        return real(run, loss_fn)

    monkeypatch.setattr(engine_mod, "_one_step", step)
    before = torch.get_num_threads()
    progress, _ = _drain(iter_train(*sample, spec=tiny_spec, config=dataclasses.replace(FOUR, steps=6),
                                    device="cpu"))
    assert [h["threads"] for h in progress[-1].history] == [1, 1, 1, 1, 2, 2]
    assert torch.get_num_threads() == before

"""Model specs, self-describing checkpoints, the registry and device choice."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_mitoseg import model as M
from napari_mitoseg import precision as P
from napari_mitoseg.inference import predict
from napari_mitoseg.model import ModelError, ModelSpec


def _states_equal(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# --------------------------------------------------------------------------- spec


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"normalisation": "zscore"}, r"unknown normalisation 'zscore'; choose one of \('percentile', 'none'\)"),
        ({"encoder_depth": 3}, "decoder_channels has 5 entries but encoder_depth is 3"),
        ({"threshold": 1.0}, r"threshold must lie in \(0, 1\)"),
        ({"tile_size": 1000}, "tile_size \\(1000\\) must be a multiple of 32"),
        ({"tile_size": 128, "tile_overlap": 64}, "exceed twice tile_overlap"),
    ],
)
def test_invalid_spec_says_what_is_allowed(kwargs, message):
    with pytest.raises(ModelError, match=message):
        ModelSpec(**kwargs)


def test_spec_dict_round_trip_and_unknown_keys(tiny_spec):
    d = json.loads(json.dumps(tiny_spec.to_dict()))
    assert ModelSpec.from_dict(d) == tiny_spec
    with pytest.raises(ModelError, match=r"unknown model spec keys \['colour'\]; known: .*'encoder'"):
        ModelSpec.from_dict({**d, "colour": "red"})


@pytest.mark.parametrize(
    ("kwargs", "listed"), [({"encoder": "resnet9000"}, "'resnet18'"), ({"arch": "Vnet"}, "'unet'")]
)
def test_unknown_encoder_or_arch_lists_the_choices(kwargs, listed):
    with pytest.raises(ModelError, match=f"cannot build .*{listed}"):
        M.build_model(ModelSpec(**kwargs))


def test_stride_follows_depth(tiny_spec):
    assert tiny_spec.stride == 8
    assert ModelSpec().stride == 32


# --------------------------------------------------------------------------- checkpoints


def test_checkpoint_round_trip_is_bit_exact_in_float32(tiny_model, tmp_path, sample):
    path = M.save_model(tiny_model.net, tiny_model.spec, tmp_path / "m", info={"summary": "s", "n": 3},
                        half=False)
    assert sorted(p.name for p in path.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    loaded = M.load_model(path, device="cpu")
    assert loaded.spec == tiny_model.spec
    assert loaded.info == {"summary": "s", "n": 3}
    assert loaded.name == "m"
    assert not loaded.net.training
    assert _states_equal(loaded.net, tiny_model.net)
    image, _ = sample
    p0, m0 = predict(tiny_model, image)
    p1, m1 = predict(loaded, image)
    np.testing.assert_array_equal(p0, p1)
    np.testing.assert_array_equal(m0, m1)


def test_half_precision_checkpoint_is_half_the_size_and_within_fp16_tolerance(tiny_model, tmp_path, sample):
    full = M.save_model(tiny_model.net, tiny_model.spec, tmp_path / "full", half=False)
    half = M.save_model(tiny_model.net, tiny_model.spec, tmp_path / "half", half=True)
    size = lambda p: (p / M.WEIGHTS_NAME).stat().st_size  # noqa: E731
    assert size(half) < 0.55 * size(full)
    loaded = M.load_model(half, device="cpu")
    ref = tiny_model.net.state_dict()
    for k, v in loaded.net.state_dict().items():
        assert v.dtype == ref[k].dtype, k  # cast back to float32 on load
        if v.is_floating_point():
            torch.testing.assert_close(v, ref[k], rtol=1e-3, atol=1e-5)
        else:
            assert torch.equal(v, ref[k]), k
    image, _ = sample
    p0, _ = predict(tiny_model, image)
    p1, _ = predict(loaded, image)
    np.testing.assert_allclose(p0.astype(np.float32), p1.astype(np.float32), atol=2e-2)


@pytest.mark.parametrize("damage", [b"garbage, not safetensors", b""])
def test_corrupt_weights_raise_model_error(tiny_model_dir, damage):
    (tiny_model_dir / M.WEIGHTS_NAME).write_bytes(damage)
    with pytest.raises(ModelError, match="weights in .*tiny-v1 are corrupt"):
        M.load_model(tiny_model_dir, device="cpu")


def test_truncated_weights_raise_model_error(tiny_model_dir):
    w = tiny_model_dir / M.WEIGHTS_NAME
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    with pytest.raises(ModelError, match="corrupt"):
        M.load_model(tiny_model_dir, device="cpu")


def test_weights_that_do_not_fit_the_config(tiny_model_dir):
    cfg = json.loads((tiny_model_dir / M.CONFIG_NAME).read_text())
    cfg["spec"]["decoder_channels"] = [32, 16, 8]
    (tiny_model_dir / M.CONFIG_NAME).write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match="do not fit their config"):
        M.load_model(tiny_model_dir, device="cpu")


def test_missing_or_corrupt_config_or_weights(tiny_model_dir):
    (tiny_model_dir / M.CONFIG_NAME).write_text("{not json")
    with pytest.raises(ModelError, match="config.json is corrupt"):
        M.load_model(tiny_model_dir, device="cpu")
    (tiny_model_dir / M.CONFIG_NAME).unlink()
    with pytest.raises(ModelError, match="not a model folder: config.json is missing"):
        M.load_model(tiny_model_dir, device="cpu")


def test_missing_weights(tiny_model_dir):
    (tiny_model_dir / M.WEIGHTS_NAME).unlink()
    with pytest.raises(ModelError, match="has no model.safetensors"):
        M.load_model(tiny_model_dir, device="cpu")


def test_failed_save_leaves_the_old_model_whole(tiny_model, tiny_model_dir, monkeypatch):
    import safetensors.torch

    before = {p.name: p.read_bytes() for p in tiny_model_dir.iterdir()}

    def broken_save_file(state, filename, *a, **k):
        Path(filename).write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", broken_save_file)
    with pytest.raises(OSError, match="disk full"):
        M.save_model(tiny_model.net, tiny_model.spec, tiny_model_dir)
    assert {p.name: p.read_bytes() for p in tiny_model_dir.iterdir()} == before
    assert [p.name for p in tiny_model_dir.parent.iterdir()] == ["tiny-v1"]  # no temporary folder


# --------------------------------------------------------------------------- registry


def test_registry_lists_user_models_and_loads_them_by_name(tiny_model, tmp_path):
    user = M.user_model_dir()
    assert user.parent == tmp_path.parent  # a temporary folder (conftest), never $HOME
    M.save_model(tiny_model.net, tiny_model.spec, user / "mine-ft1", info={"summary": "my fine-tune"})
    (user / ".hidden").mkdir()
    (user / "broken").mkdir()
    (user / "broken" / M.CONFIG_NAME).write_text("{")
    (user / "not-a-model").mkdir()
    entries = [e for e in M.list_models() if not e.shipped]
    assert [(e.name, e.summary) for e in entries] == [("mine-ft1", "my fine-tune")]
    assert entries[0].path == user / "mine-ft1"
    assert all(e.shipped for e in M.list_models()[: -1])  # shipped first, then the user's
    assert M.load_model("mine-ft1", device="cpu").name == "mine-ft1"


def test_unknown_model_name_lists_the_available_ones(tiny_model):
    M.save_model(tiny_model.net, tiny_model.spec, M.user_model_dir() / "mine-ft1")
    with pytest.raises(ModelError, match=r"unknown model 'nope'; available: \[.*'mine-ft1'\]"):
        M.load_model("nope", device="cpu")


def test_user_model_dir_comes_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("MITOSEG_MODEL_DIR", str(tmp_path / "x"))
    assert M.user_model_dir() == tmp_path / "x"


def test_next_version_name_never_reuses_a_name(tmp_path):
    assert M.next_version_name("mito-em-v1", tmp_path) == "mito-em-v1-ft1"
    assert M.next_version_name("mito-em-v1", tmp_path / "missing") == "mito-em-v1-ft1"
    for name in ("mito-em-v1-ft1", "mito-em-v1-ft3", "other-ft7", ".mito-em-v1-ft9.tmp"):
        (tmp_path / name).mkdir()
    assert M.next_version_name("mito-em-v1", tmp_path) == "mito-em-v1-ft4"
    # a fine-tuned base counts on from its stem; a gap (ft2) is not filled behind ft3
    assert M.next_version_name("mito-em-v1-ft1", tmp_path) == "mito-em-v1-ft4"
    assert M.next_version_name("soft-ftune", tmp_path) == "soft-ftune-ft1"
    assert not (tmp_path / M.next_version_name("other", tmp_path)).exists()


# --------------------------------------------------------------------------- devices


def test_cpu_and_auto_without_accelerators(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert M.resolve_device("cpu") == torch.device("cpu")
    assert M.resolve_device("auto") == torch.device("cpu")
    assert M.available_devices() == ["cpu"]


@pytest.mark.parametrize("device", ["cuda", "mps"])
def test_asking_for_an_absent_accelerator_is_an_error(monkeypatch, device):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(ModelError, match=f"device '{device}' was asked for but .*available; use 'cpu'"):
        M.resolve_device(device)


def test_auto_prefers_cuda_and_unknown_device_lists_choices(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert M.resolve_device("auto") == torch.device("cuda")
    assert M.available_devices()[0] == "cuda"
    assert M.available_devices()[-1] == "cpu"
    with pytest.raises(ModelError, match=r"unknown device 'tpu'; choose one of \('auto', 'cpu', 'cuda', 'mps'\)"):
        M.resolve_device("tpu")


def test_spare_cpu_threads_leave_busy_cores_alone(monkeypatch):
    from napari_mitoseg.model import spare_cpu_threads

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("MITOSEG_THREADS", raising=False)
    assert spare_cpu_threads(cores=2, load=0.2) == 2  # an idle machine: every core
    assert spare_cpu_threads(cores=2, load=8.0) == 1  # a busy one: one thread, never 0
    assert spare_cpu_threads(cores=8, load=3.0) == 5
    assert spare_cpu_threads(own=2, cores=2, load=2.1) == 2  # its own threads are not "others"
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert spare_cpu_threads(cores=2, load=8.0) is None  # the user's choice stands
    monkeypatch.setenv("MITOSEG_THREADS", "4")
    assert spare_cpu_threads(cores=2, load=8.0) == 4


def test_training_on_a_busy_machine_uses_one_thread_and_restores_torch(monkeypatch, sample, tiny_spec):
    import torch

    from napari_mitoseg import model as model_mod
    from napari_mitoseg.training import TrainConfig, iter_train

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("MITOSEG_THREADS", raising=False)
    monkeypatch.setattr(model_mod.os, "getloadavg", lambda: (8.0, 8.0, 8.0))
    before = torch.get_num_threads()
    image, mask = sample
    cfg = TrainConfig(steps=2, batch_size=2, tile=64, warmup=1, val_every=0, checkpoint_every=0)
    progress = list(iter_train(image, mask, spec=tiny_spec, config=cfg, device="cpu"))
    assert [h["threads"] for h in progress[-1].history] == [1, 1]
    assert torch.get_num_threads() == before


# --------------------------------------------------------------------------- broken models


@pytest.mark.parametrize(("field", "value", "message"), [
    ("pixel_size_nm", 0, "pixel_size_nm must be a positive number or null \\(unknown\\), got 0"),
    ("pixel_size_nm", "5", "pixel_size_nm must be a positive number or null \\(unknown\\), got '5'"),
    ("pixel_size_nm", -4, "pixel_size_nm must be a positive number .* got -4"),
    ("pixel_size_nm", float("nan"), "pixel_size_nm must be a positive number .* got nan"),
    ("encoder_depth", "5", "encoder_depth must be a whole number >= 1, got '5'"),
    ("encoder_depth", 5.0, "encoder_depth must be a whole number >= 1, got 5.0"),
    ("decoder_channels", [128, "64", 32, 16, 16], "decoder_channels must be a list of positive whole numbers"),
    ("decoder_channels", [16.7, 8, 8, 8, 8], "decoder_channels must be a list of positive whole numbers"),
    ("input_scale", "0.5", "input_scale must be a positive number, got '0.5'"),
    ("tile_size", None, "tile_size must be a whole number >= 1, got None"),
    ("invert", "no", "invert must be true or false, got 'no'"),
])
def test_a_broken_config_is_refused_with_one_consistent_line(tiny_model_dir, field, value, message):
    cfg = json.loads((tiny_model_dir / M.CONFIG_NAME).read_text())
    cfg["spec"][field] = value
    (tiny_model_dir / M.CONFIG_NAME).write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match=message) as err:
        M.load_model(tiny_model_dir, device="cpu")
    text = str(err.value)
    assert "\n" not in text and "config.json" in text
    assert "--" not in text  # never "the model takes -1.25--20 nm"
    assert "5 entries but encoder_depth is 5" not in text


def _user_copy(src: Path, name: str) -> Path:
    import shutil

    return Path(shutil.copytree(src, M.user_model_dir() / name))


def test_models_without_usable_weights_are_listed_as_broken_with_the_reason(tiny_model_dir):
    good = _user_copy(tiny_model_dir, "good")
    (_user_copy(tiny_model_dir, "no-weights") / M.WEIGHTS_NAME).unlink()
    w = _user_copy(tiny_model_dir, "truncated") / M.WEIGHTS_NAME
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    nan = _user_copy(tiny_model_dir, "nan")
    state = {k: v.clone() for k, v in M.load_model(good, device="cpu").net.state_dict().items()}
    state["segmentation_head.0.bias"][:] = float("nan")
    M.save_model(_StateOnly(state), M.read_config(good)[0], nan, half=True)

    usable = [e.name for e in M.list_models() if not e.shipped]
    assert usable == ["good"]
    broken = {e.name: e.broken for e in M.list_models(include_broken=True) if e.broken}
    assert set(broken) == {"nan", "no-weights", "truncated"}
    assert "no model.safetensors" in broken["no-weights"]
    assert "corrupt or truncated" in broken["truncated"]
    assert "not finite" in broken["nan"]


class _StateOnly:
    def __init__(self, state):
        self._state = state

    def state_dict(self):
        return self._state


def test_a_model_with_nan_weights_is_refused_at_load(tiny_model, tmp_path):
    state = {k: v.clone() for k, v in tiny_model.net.state_dict().items()}
    next(v for k, v in state.items() if k.endswith("weight") and v.is_floating_point())[0] = float("nan")
    folder = M.save_model(_StateOnly(state), tiny_model.spec, tmp_path / "nan-ft1")
    with pytest.raises(ModelError, match=r"weights in .*nan-ft1 are not finite \(NaN or infinite in 1 tensors"):
        M.load_model(folder, device="cpu")


@pytest.mark.parametrize("source", ["", "  "])
def test_an_empty_model_name_is_refused_not_read_as_the_default(source):
    with pytest.raises(ModelError, match=r"the model name is empty; give a name \(mito-em-v2, mito-em-v3"):
        M.resolve_model_path(source)


@pytest.mark.parametrize("source", [123, 1.5, ["mito-em-v3"], None])
def test_a_model_given_as_something_else_is_a_type_error(source):
    with pytest.raises(TypeError, match=r"a model is given by its name or the path of its folder or "
                                        r"package \(a string or a path\), got \w+ "):
        M.resolve_model_path(source)
    with pytest.raises(ModelError):  # the command line's and widgets' one error class too
        M.resolve_model_path(source)


def test_precision_follows_the_environment_and_refuses_an_unknown_one(monkeypatch):
    monkeypatch.setenv("MITOSEG_PRECISION", "float32")
    assert P.cpu_bf16() is False
    monkeypatch.setenv("MITOSEG_PRECISION", "BFloat16")
    assert P.cpu_bf16() is True
    monkeypatch.setenv("MITOSEG_PRECISION", "fp8")
    with pytest.raises(ModelError, match="float32 or bfloat16"):
        P.cpu_bf16()


def test_bfloat16_segments_close_to_float32_and_training_stays_float32(tiny_model, rng, monkeypatch):
    from napari_mitoseg.inference import predict_slice

    x = rng.integers(0, 256, (96, 80), dtype=np.uint8)
    monkeypatch.setenv("MITOSEG_PRECISION", "float32")
    p32 = predict_slice(tiny_model, x)
    monkeypatch.setenv("MITOSEG_PRECISION", "bfloat16")
    p16 = predict_slice(tiny_model, x)
    assert p16.dtype == np.float32 and p16.shape == x.shape
    assert not np.array_equal(p16, p32)  # the bfloat16 path ran ...
    np.testing.assert_allclose(p16, p32, atol=0.02)  # ... and agrees to bfloat16's precision
    cpu = torch.device("cpu")
    with P.autocast(cpu):
        assert torch.is_autocast_cpu_enabled()
    with P.autocast(cpu, torch.bfloat16, cpu=False):  # what a training step uses
        assert not torch.is_autocast_cpu_enabled()


def test_inference_folds_batch_norms_into_a_cached_copy_that_follows_the_weights(tiny_model, rng, monkeypatch):
    monkeypatch.setenv("MITOSEG_PRECISION", "float32")
    net = tiny_model.net
    folded = P.inference_net(net)
    assert folded is not net and P.inference_net(net) is folded  # made once
    n_bn = sum(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules()) < n_bn  # some were folded
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules()) == n_bn  # the model keeps its own
    x = torch.from_numpy(rng.standard_normal((1, 1, 64, 64)).astype(np.float32))
    with torch.inference_mode():
        torch.testing.assert_close(folded(x), net(x), atol=1e-4, rtol=1e-4)
    with torch.no_grad():  # the weights change (a fine-tuning step): a fresh copy follows them
        next(net.parameters()).mul_(1.5)
    refolded = P.inference_net(net)
    assert refolded is not folded
    with torch.inference_mode():
        torch.testing.assert_close(refolded(x), net(x), atol=1e-4, rtol=1e-4)
    net.train()
    assert P.inference_net(net) is net  # training runs the model itself
    net.eval()

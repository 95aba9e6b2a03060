"""smp's maintained encoder names, old model folders, and the plain-torch RegNet U-Net that
loads saved weights without importing smp, timm or torchvision."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from napari_mitoseg import model as M
from napari_mitoseg.model import ModelSpec
from napari_mitoseg.networks import convert_legacy_keys, maintained_encoder
from napari_mitoseg.regnet_unet import RegNetUnet

SRC = Path(M.__file__).resolve().parents[1]


def _smp_net(spec: ModelSpec, seed: int = 0):
    """smp's network for ``spec`` with random weights and random batch-norm statistics (so a
    mix-up of running mean and variance, or of two layers, changes the output)."""
    torch.manual_seed(seed)
    net = M.build_model(spec)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.normal_()
            m.bias.data.normal_()
    return net.eval()


@pytest.mark.parametrize(("encoder", "depth", "decoder"), [
    ("tu-regnety_004", 5, (128, 64, 32, 16, 16)),
    ("tu-regnety_004", 3, (32, 16, 8)),
    ("tu-regnetx_004", 4, (64, 32, 16, 16)),
])
def test_plain_torch_network_gives_smps_outputs_exactly(encoder, depth, decoder):
    spec = ModelSpec(encoder=encoder, encoder_depth=depth, decoder_channels=decoder)
    ref = _smp_net(spec)
    ours = M.build_for_weights(spec)
    assert isinstance(ours, RegNetUnet)
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(2, 1, 64, 96)
    with torch.no_grad():
        assert torch.equal(ours.eval()(x), ref(x))


def test_other_encoders_still_build_with_smp(tiny_spec):
    assert not isinstance(M.build_for_weights(tiny_spec), RegNetUnet)
    with pytest.raises(ValueError, match="unknown RegNet 'regnety_999'; choose one of"):
        RegNetUnet("regnety_999")


@pytest.mark.parametrize(("old", "new"), [
    ("timm-regnety_004", "tu-regnety_004"),
    ("timm-regnetx_002", "tu-regnetx_002"),
    ("timm-mobilenetv3_small_100", "tu-tf_mobilenetv3_small_100"),
    ("timm-efficientnet-b0", "timm-efficientnet-b0"),  # smp's own port: no tu- twin of that name
    ("resnet18", "resnet18"),
])
def test_deprecated_timm_names_become_the_maintained_ones(old, new):
    assert maintained_encoder(old) == new
    assert ModelSpec(encoder=old).encoder == new
    assert ModelSpec.from_dict({"encoder": old}) == ModelSpec(encoder=new)


def _old_folder(tmp_path: Path, spec: ModelSpec, state: dict, name: str) -> Path:
    """A model folder as an earlier release wrote it: the ``timm-`` encoder name in config.json."""
    folder = M.save_model(_Holder(state), spec, tmp_path / name, half=False)
    cfg = json.loads((folder / M.CONFIG_NAME).read_text())
    cfg["spec"]["encoder"] = spec.encoder.replace("tu-", "timm-")
    (folder / M.CONFIG_NAME).write_text(json.dumps(cfg))
    return folder


class _Holder:
    def __init__(self, state):
        self._state = state

    def state_dict(self):
        return self._state


@pytest.mark.parametrize("layout", ["smp 0.3-0.4 keys (encoder.stem...)", "smp 0.5+ keys (encoder.model.stem...)"])
def test_old_timm_model_folders_load_with_the_same_outputs(tmp_path, layout):
    spec = ModelSpec(encoder="tu-regnety_004", encoder_depth=3, decoder_channels=(32, 16, 8))
    ref = _smp_net(spec, seed=1)
    state = ref.state_dict()
    if layout.startswith("smp 0.3"):
        state = {k.replace("encoder.model.", "encoder.", 1): v for k, v in state.items()}
        assert not any(k.startswith("encoder.model.") for k in state)
    folder = _old_folder(tmp_path, spec, state, "old-ft1")
    assert json.loads((folder / M.CONFIG_NAME).read_text())["spec"]["encoder"] == "timm-regnety_004"
    loaded = M.load_model(folder, device="cpu")
    assert loaded.spec.encoder == "tu-regnety_004"
    x = torch.randn(1, 1, 64, 64)
    with torch.no_grad():  # both in channels-last memory, as load_model gives it on the CPU
        out = loaded.net(x.contiguous(memory_format=torch.channels_last))
        assert torch.equal(out, ref.to(memory_format=torch.channels_last)(x))


def test_legacy_keys_are_renamed_only_for_universal_encoders():
    state = {"encoder.stem.conv.weight": 1, "decoder.blocks.0.conv1.0.weight": 2}
    assert convert_legacy_keys(state, "tu-regnety_004") == {
        "encoder.model.stem.conv.weight": 1, "decoder.blocks.0.conv1.0.weight": 2}
    assert convert_legacy_keys(state, "resnet18") is state
    assert convert_legacy_keys({"encoder.stages.0.x": 1}, "tu-gernet_s") == {"encoder.model.stages_0.x": 1}


def test_shipped_models_use_the_maintained_encoder():
    for entry in (e for e in M.list_models() if e.shipped):
        raw = json.loads((entry.path / M.CONFIG_NAME).read_text())
        assert raw["spec"]["encoder"] == "tu-regnety_004", entry.name


def _run(code: str) -> subprocess.CompletedProcess:
    env = {"PYTHONPATH": str(SRC), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, "-W", "error", "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, env=env, timeout=300)


def test_default_model_loads_and_segments_without_warnings_or_the_training_stack():
    """Warnings are errors (``-W error``): smp's deprecation of ``timm-`` encoders, or any other
    warning of our dependencies on this path, fails the run. And the path imports neither smp,
    timm nor torchvision, which take seconds to import."""
    done = _run("""
        import sys
        import numpy as np
        from napari_mitoseg.api import get_model, segment
        m = get_model("default", "cpu")
        mask = segment(np.random.default_rng(0).integers(0, 255, (1, 96, 96), dtype=np.uint8), m)
        heavy = sorted(n for n in ("segmentation_models_pytorch", "timm", "torchvision") if n in sys.modules)
        print(type(m.net).__name__, mask.shape, heavy)
    """)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split()[-1] == "[]", done.stdout
    assert "RegNetUnet (1, 96, 96)" in done.stdout

"""Shared test set-up: offline, one compute thread, user models in a temporary folder,
tiny random-weight models and a small seeded synthetic stack."""

from __future__ import annotations

import os

# Never reach a model hub; smp builds without downloading (encoder_weights=None) anyway.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# The models under test are tiny: one thread is as fast as two, and far faster when another
# process (a training run, a parallel build) holds the cores. Set before torch is imported.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

#: A Unet that builds in milliseconds and runs a 128 x 128 slice in a few: 3 encoder stages
#: (stride 8), 128-pixel tiles so slices above that size go through tiling.
TINY_SPEC_KW = dict(
    encoder="mobilenet_v2", encoder_depth=3, decoder_channels=(16, 8, 8), tile_size=128, tile_overlap=16
)


@pytest.fixture(autouse=True)
def _user_model_dir(tmp_path_factory, monkeypatch):
    """Fine-tuned models go to a fresh temporary folder, never to the user's data folder."""
    monkeypatch.setenv("MITOSEG_MODEL_DIR", str(tmp_path_factory.mktemp("user-models")))
    # and the fine-tune times measured here go to one too
    monkeypatch.setenv("MITOSEG_CACHE_DIR", str(tmp_path_factory.mktemp("user-cache")))


@pytest.fixture(scope="session")
def tiny_spec():
    from napari_mitoseg.model import ModelSpec

    return ModelSpec(**TINY_SPEC_KW)


def make_tiny_model(spec, seed: int = 0):
    """A :class:`LoadedModel` with seeded random weights, on the CPU, in eval mode and
    channels-last memory, as :func:`load_model` gives it."""
    import torch

    from napari_mitoseg.model import LoadedModel, build_model

    torch.manual_seed(seed)
    net = build_model(spec).eval().to(memory_format=torch.channels_last)
    return LoadedModel(net=net, spec=spec, name=f"tiny-seed{seed}")


@pytest.fixture(scope="session")
def tiny_template(tmp_path_factory):
    """A tiny random-weight U-Net (resnet18, 3 stages) saved once; widget tests copy it into
    their own model folder."""
    from napari_mitoseg._widgets._common import avoid_llvm_clash

    avoid_llvm_clash()  # a viewer may have loaded Mesa's LLVM already (as the widgets do)
    import torch

    from napari_mitoseg.model import ModelSpec, build_model, save_model

    torch.manual_seed(0)
    spec = ModelSpec(encoder="resnet18", encoder_depth=3, decoder_channels=(32, 16, 8), tile_size=256,
                     tile_overlap=32)
    return save_model(build_model(spec), spec, tmp_path_factory.mktemp("template") / "tiny",
                      info={"summary": "tiny random test model"})


@pytest.fixture
def tiny_model(tiny_spec):
    return make_tiny_model(tiny_spec)


@pytest.fixture
def tiny_model_dir(tiny_model, tmp_path_factory):
    """``tiny_model`` saved (float32) as a model folder named ``tiny-v1`` outside the registry."""
    from napari_mitoseg.model import save_model

    path = tmp_path_factory.mktemp("models") / "tiny-v1"
    return save_model(
        tiny_model.net, tiny_model.spec, path, info={"summary": "tiny test model"}, half=False
    )


@pytest.fixture(scope="session")
def _sample_cache():
    from napari_mitoseg.synthetic import make_sample

    return make_sample((3, 100, 124), seed=0)


@pytest.fixture
def sample(_sample_cache):
    """(image, mask): (3, 100, 124) uint8 EM-like stack and its uint8 0/1 mask (fresh copies)."""
    image, mask = _sample_cache
    return image.copy(), mask.copy()


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


@pytest.fixture
def files(tmp_path, sample):
    """The sample written as TIFFs: {"image": ..., "gt": ...} paths (test files needing more
    inputs define their own ``files``)."""
    import tifffile

    image, gt = sample
    paths = {"image": tmp_path / "image.tif", "gt": tmp_path / "gt.tif"}
    tifffile.imwrite(paths["image"], image, photometric="minisblack")
    tifffile.imwrite(paths["gt"], gt, photometric="minisblack")
    return paths


@pytest.fixture
def captured_masks(monkeypatch) -> list[np.ndarray]:
    """The masks fine-tuning hands to the training loop, recorded as it runs (in a worker too)."""
    from napari_mitoseg import training

    seen = []
    real = training.iter_train

    def recording(images, masks, **kw):
        seen.append(np.array(masks))
        return (yield from real(images, masks, **kw))

    monkeypatch.setattr(training, "iter_train", recording)
    return seen

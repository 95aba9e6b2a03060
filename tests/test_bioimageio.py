"""bioimage.io model packages: export, the zoo's own test (``bioimageio.core.test_model``) and
reading a package back as a model."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest
import torch

from napari_mitoseg import api
from napari_mitoseg._generators import result_of
from napari_mitoseg.bioimageio_export import ExportError, export_bioimageio
from napari_mitoseg.inference import PredictOptions, predict
from napari_mitoseg.model import ModelError, ModelSpec, build_model, load_model, save_model, user_model_dir
from napari_mitoseg.training import TrainConfig

FT = TrainConfig(steps=2, batch_size=2, tile=64, lr=1e-3, warmup=1, val_every=0, checkpoint_every=0)


@pytest.fixture
def tiny_regnet_dir(tmp_path):
    """A small RegNet U-Net (3 stages) with seeded random weights, saved as a model folder."""
    torch.manual_seed(0)
    spec = ModelSpec(encoder="tu-regnety_004", encoder_depth=3, decoder_channels=(32, 16, 8), tile_size=256,
                     tile_overlap=32, input_scale=0.5, pixel_size_nm=6.0)
    return save_model(build_model(spec), spec, tmp_path / "tiny-regnet",
                      info={"summary": "tiny test model", "licence_notice": "synthetic data"})


def _fine_tuned(base, sample) -> str:
    image, mask = sample
    done = result_of(api.iter_finetune(image, mask, [0, 1], base=base, config=FT, device="cpu"))
    return str(done.path)


def test_a_package_reads_back_as_the_same_model_with_identical_labels(tiny_regnet_dir, sample, tmp_path):
    package = export_bioimageio(tiny_regnet_dir, tmp_path / "tiny.zip", authors=["A. Tester"], torchscript=False)
    names = zipfile.ZipFile(package).namelist()
    assert {"rdf.yaml", "weights.pt", "regnet_unet.py", "README.md", "cover.png", "test_raw.npy"} <= set(names)
    original = load_model(tiny_regnet_dir, device="cpu")
    unpacked = load_model(package, device="cpu")
    assert unpacked.spec == original.spec and unpacked.info == original.info
    assert unpacked.path.parent.parent == user_model_dir() / ".packages"
    image = sample[0]
    for opts in (PredictOptions(), PredictOptions(z_smooth=False, tta=True)):
        assert np.array_equal(predict(original, image, opts)[1], predict(unpacked, image, opts)[1])
    assert np.array_equal(api.segment(image, api.get_model(str(package), "cpu")), api.segment(image, original))
    assert load_model(package, device="cpu").path == unpacked.path  # unpacked once


def test_a_zip_that_is_not_our_package_is_refused_clearly(tmp_path):
    other = tmp_path / "other.zip"
    with zipfile.ZipFile(other, "w") as zf:
        zf.writestr("rdf.yaml", "type: model\nname: someone else's\nconfig: {}\n")
    with pytest.raises(ModelError, match="a bioimage.io package that napari-mitoseg did not export"):
        load_model(other, device="cpu")
    (tmp_path / "plain.zip").write_bytes(b"not a zip")
    with pytest.raises(ModelError, match="is not a readable zip file"):
        load_model(tmp_path / "plain.zip", device="cpu")
    with zipfile.ZipFile(tmp_path / "empty.zip", "w") as zf:
        zf.writestr("a.txt", "x")
    with pytest.raises(ModelError, match="not a bioimage.io model package: it holds no rdf.yaml"):
        load_model(tmp_path / "empty.zip", device="cpu")


def test_only_regnet_unets_export_and_only_to_a_zip(tiny_model_dir, tiny_regnet_dir, tmp_path):
    with pytest.raises(ExportError, match="packages hold U-Nets with a RegNet encoder"):
        export_bioimageio(tiny_model_dir, tmp_path / "x.zip")
    with pytest.raises(ExportError, match="a model package is a .zip file"):
        export_bioimageio(tiny_regnet_dir, tmp_path / "x.tar")
    assert not list(tmp_path.glob("x.*"))


@pytest.mark.slow
@pytest.mark.parametrize("which", ["shipped", "fine-tuned"])
def test_exported_packages_pass_the_bioimageio_model_test(which, tiny_regnet_dir, sample, tmp_path):
    from bioimageio.core import test_model

    source = "mito-em-v3" if which == "shipped" else _fine_tuned(tiny_regnet_dir, sample)
    package = export_bioimageio(source, tmp_path / "package.zip")
    summary = test_model(str(package))
    failed = [d.name for d in summary.details if d.status == "failed"]
    assert summary.status == "passed", failed
    formats = {d.name for d in summary.details if "torchscript" in d.name.lower()}
    assert formats, "the TorchScript weights were not tested"


def test_the_export_command_writes_a_package_the_segment_command_reads(tiny_model_dir, tiny_regnet_dir, sample,
                                                                        tmp_path, capsys):
    import tifffile

    from napari_mitoseg.cli import main
    from napari_mitoseg.io import read_stack

    package = tmp_path / "shared" / "tiny.zip"
    assert main(["export", str(tiny_regnet_dir), "-o", str(package), "--no-torchscript"]) == 0
    assert f"wrote {package}" in capsys.readouterr().out and zipfile.is_zipfile(package)
    image = tmp_path / "im.tif"
    tifffile.imwrite(image, sample[0], photometric="minisblack")
    assert main(["segment", str(image), "--model", str(package), "--device", "cpu",
                 "-o", str(tmp_path / "from_zip.tif")]) == 0
    assert main(["segment", str(image), "--model", str(tiny_regnet_dir), "--device", "cpu",
                 "-o", str(tmp_path / "from_folder.tif")]) == 0
    assert np.array_equal(read_stack(tmp_path / "from_zip.tif"), read_stack(tmp_path / "from_folder.tif"))
    # a model that cannot travel as a package: one line, exit 2, nothing written
    assert main(["export", str(tiny_model_dir), "-o", str(tmp_path / "x.zip")]) == 2
    assert "packages hold U-Nets with a RegNet encoder" in capsys.readouterr().err
    assert not (tmp_path / "x.zip").exists()

"""Voxel sizes from file metadata, the pixel size on the command line, mask-like files opened
as Labels, and big TIFFs opened lazily."""

from __future__ import annotations

import dataclasses
import json
import logging

import numpy as np
import pytest
import tifffile

from napari_mitoseg import api, io
from napari_mitoseg._reader import get_reader
from napari_mitoseg.cli import main
from napari_mitoseg.inference import InputError, choose_pixel_ratio
from napari_mitoseg.model import ModelSpec, load_model, save_model
from napari_mitoseg.training import FINETUNE


def _stack(shape=(3, 40, 50), seed=0):
    return np.random.default_rng(seed).integers(0, 255, shape, dtype=np.uint8)


def _imagej(path, xy_um, z_um=None, unit="um", data=None):
    meta = {"unit": unit, **({"spacing": z_um} if z_um is not None else {})}
    tifffile.imwrite(path, _stack() if data is None else data, imagej=True,
                     resolution=(1 / xy_um, 1 / xy_um), metadata=meta)
    return path


# --------------------------------------------------------------------------- read_voxel_size


@pytest.mark.parametrize("unit", ["um", "micron", "\\u00B5m"])  # ImageJ escapes µ
def test_imagej_unit_spacing_and_resolution(tmp_path, unit):
    path = _imagej(tmp_path / "ij.tif", 0.005, 0.05, unit)
    assert io.read_voxel_size(path) == pytest.approx((50.0, 5.0, 5.0))


def test_imagej_in_nm_without_spacing_takes_z_from_x(tmp_path):
    path = _imagej(tmp_path / "ij.tif", 6.0, None, "nm")
    assert io.read_voxel_size(path) == pytest.approx((6.0, 6.0, 6.0))


def test_imagej_pixel_unit_is_no_size(tmp_path):
    assert io.read_voxel_size(_imagej(tmp_path / "ij.tif", 1.0, None, "pixel")) is None


def test_ome_tiff_physical_sizes_with_units(tmp_path):
    path = tmp_path / "a.ome.tif"
    tifffile.imwrite(path, _stack(), ome=True, metadata={
        "axes": "ZYX", "PhysicalSizeX": 4.0, "PhysicalSizeXUnit": "nm", "PhysicalSizeY": 4.5,
        "PhysicalSizeYUnit": "nm", "PhysicalSizeZ": 0.03, "PhysicalSizeZUnit": "µm"})
    assert io.read_voxel_size(path) == pytest.approx((30.0, 4.5, 4.0))


def test_ome_tiff_sizes_default_to_micrometres(tmp_path):
    path = tmp_path / "a.ome.tif"
    tifffile.imwrite(path, _stack(), ome=True, metadata={"axes": "ZYX", "PhysicalSizeX": 0.008,
                                                         "PhysicalSizeY": 0.008})
    assert io.read_voxel_size(path) == pytest.approx((8.0, 8.0, 8.0))


@pytest.mark.parametrize(("per_unit", "unit", "nm"), [(2e6, "CENTIMETER", 5.0), (2.54e6, "INCH", 10.0)])
def test_tiff_resolution_tags_with_a_unit(tmp_path, per_unit, unit, nm):
    tifffile.imwrite(tmp_path / "a.tif", _stack(), resolution=(per_unit, per_unit), resolutionunit=unit)
    assert io.read_voxel_size(tmp_path / "a.tif") == pytest.approx((nm, nm, nm))


@pytest.mark.parametrize("dpi", [72, 96, 300])
def test_default_dpi_is_not_a_pixel_size(tmp_path, dpi):
    tifffile.imwrite(tmp_path / "a.tif", _stack(), resolution=(dpi, dpi), resolutionunit="INCH")
    assert io.read_voxel_size(tmp_path / "a.tif") is None


def test_no_metadata_and_unitless_resolution_give_none(tmp_path):
    tifffile.imwrite(tmp_path / "plain.tif", _stack())
    tifffile.imwrite(tmp_path / "none.tif", _stack(), resolution=(200, 200), resolutionunit="NONE")
    assert io.read_voxel_size(tmp_path / "plain.tif") is None
    assert io.read_voxel_size(tmp_path / "none.tif") is None


def _ome_zarr(path, scale, units, data=None):
    import zarr

    g = zarr.open_group(str(path), mode="w")
    g.create_array("0", data=_stack() if data is None else data)
    names = "zyx"[-len(scale):]
    g.attrs["multiscales"] = [{
        "version": "0.4",
        "axes": [{"name": n, "type": "space", "unit": u} for n, u in zip(names, units, strict=True)],
        "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": scale}]}],
    }]
    return path


def test_ome_zarr_scale_with_axis_units(tmp_path):
    path = _ome_zarr(tmp_path / "a.zarr", [0.04, 0.006, 0.006], ["micrometer"] * 3)
    assert io.read_voxel_size(path) == pytest.approx((40.0, 6.0, 6.0))
    no_unit = _ome_zarr(tmp_path / "b.zarr", [40, 6, 6], [None] * 3)
    assert io.read_voxel_size(no_unit) is None


# --------------------------------------------------------------------------- the npe2 reader


def test_reader_scales_the_layer_by_the_files_voxel_size(tmp_path):
    path = _imagej(tmp_path / "em.tif", 0.005, 0.05)
    (data, meta, kind), = get_reader(str(path))(str(path))
    assert kind == "image"
    assert meta["scale"] == pytest.approx((50.0, 5.0, 5.0))
    assert meta["metadata"]["voxel_size_nm"] == pytest.approx((50.0, 5.0, 5.0))
    tifffile.imwrite(tmp_path / "plain.tif", _stack())
    (_, meta, _), = get_reader(str(tmp_path / "plain.tif"))(str(tmp_path / "plain.tif"))
    assert "scale" not in meta and "metadata" not in meta


@pytest.mark.parametrize("kind", ["binary", "binary255", "instances"])
def test_mask_like_tiffs_open_as_labels(tmp_path, sample, kind):
    from napari_mitoseg.postprocess import instances

    _, gt = sample
    data = {"binary": gt, "binary255": gt * 255, "instances": instances(gt).astype(np.uint16)}[kind]
    tifffile.imwrite(tmp_path / "gt.tif", data, photometric="minisblack")
    (out, _, layer_type), = get_reader(str(tmp_path / "gt.tif"))(str(tmp_path / "gt.tif"))
    assert layer_type == "labels"
    np.testing.assert_array_equal(np.asarray(out), data)


def test_em_and_float_stacks_open_as_images(tmp_path, sample):
    image, gt = sample
    tifffile.imwrite(tmp_path / "em.tif", image, photometric="minisblack")
    tifffile.imwrite(tmp_path / "f.tif", gt.astype(np.float32), photometric="minisblack")
    for name in ("em.tif", "f.tif"):
        (_, _, layer_type), = get_reader(str(tmp_path / name))(str(tmp_path / name))
        assert layer_type == "image", name


def test_reader_opens_lazy_mask_like_stacks_as_labels(tmp_path, sample, monkeypatch):
    monkeypatch.setattr(io, "LAZY_BYTES", 0)
    tifffile.imwrite(tmp_path / "gt.tif", sample[1], photometric="minisblack")
    (data, _, layer_type), = get_reader(str(tmp_path / "gt.tif"))(str(tmp_path / "gt.tif"))
    assert layer_type == "labels" and not isinstance(data, np.ndarray)


# --------------------------------------------------------------------------- lazy TIFFs


def test_a_130_mb_tiff_is_over_the_lazy_threshold():
    assert io.LAZY_BYTES < 130e6


def test_big_tiffs_open_lazily_one_page_per_chunk(tmp_path, monkeypatch):
    import dask.array as da

    a = _stack((6, 64, 80))
    tifffile.imwrite(tmp_path / "big.tif", a, photometric="minisblack")
    monkeypatch.setattr(io, "LAZY_BYTES", (tmp_path / "big.tif").stat().st_size - 1)
    lazy = io.read_stack(tmp_path / "big.tif")
    assert isinstance(lazy, da.Array)
    assert lazy.chunks[0] == (1,) * 6  # one slice read at a time
    np.testing.assert_array_equal(np.asarray(lazy[4]), a[4])
    monkeypatch.setattr(io, "LAZY_BYTES", (tmp_path / "big.tif").stat().st_size)
    assert isinstance(io.read_stack(tmp_path / "big.tif"), np.ndarray)


# --------------------------------------------------------------------------- the pixel size


@pytest.fixture
def model_10nm(tiny_model, tmp_path_factory):
    spec = dataclasses.replace(tiny_model.spec, pixel_size_nm=10.0)
    return save_model(tiny_model.net, spec, tmp_path_factory.mktemp("m") / "tiny-10nm", half=False)


def test_choose_pixel_ratio():
    spec = ModelSpec(pixel_size_nm=10.0)
    assert choose_pixel_ratio(spec) == (1.0, None)
    assert choose_pixel_ratio(spec, pixel_ratio=2.0) == (2.0, None)
    assert choose_pixel_ratio(spec, pixel_size_nm=5) == (0.5, "pixel size 5 nm; model 10 nm: pixel ratio 0.5")
    assert choose_pixel_ratio(spec, file_pixel_nm=10.0) == (
        1.0, "pixel size 10 nm (from file metadata); model 10 nm: no rescaling")
    ratio, note = choose_pixel_ratio(ModelSpec(), file_pixel_nm=5.0)
    assert ratio == 1.0 and "records no pixel size" in note
    with pytest.raises(InputError, match="not both"):
        choose_pixel_ratio(spec, pixel_ratio=1.0, pixel_size_nm=5.0)
    with pytest.raises(InputError, match="from the file's metadata"):
        choose_pixel_ratio(spec, file_pixel_nm=100.0)


def test_segment_uses_the_files_pixel_size_and_says_so(tmp_path, model_10nm, capsys):
    path = _imagej(tmp_path / "em.tif", 0.005, 0.05, data=_stack((2, 64, 64)))
    assert main(["segment", str(path), "--model", str(model_10nm), "--device", "cpu", "--json"]) == 0
    captured = capsys.readouterr()
    assert "mitoseg: note: pixel size 5 nm (from file metadata); model 10 nm: pixel ratio 0.5" in captured.err
    assert json.loads(captured.out)["pixel_ratio"] == 0.5


def test_pixel_size_flag_overrides_the_file_and_excludes_the_ratio(tmp_path, model_10nm, capsys):
    path = _imagej(tmp_path / "em.tif", 0.005, 0.05, data=_stack((2, 64, 64)))
    assert main(["segment", str(path), "--model", str(model_10nm), "--device", "cpu", "--json",
                 "--pixel-size", "10"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["pixel_ratio"] == 1.0
    assert "pixel size 10 nm; model 10 nm: no rescaling" in captured.err
    with pytest.raises(SystemExit):
        main(["segment", str(path), "--pixel-size", "10", "--pixel-ratio", "1"])
    assert "not allowed with argument" in capsys.readouterr().err
    assert main(["segment", str(path), "--model", "no-such-model", "--pixel-size", "-3"]) == 2
    assert "pixel size must be a positive number" in capsys.readouterr().err


def test_api_segment_file_takes_pixel_size_nm(tmp_path, model_10nm, sample):
    tifffile.imwrite(tmp_path / "im.tif", sample[0], photometric="minisblack")
    res = api.segment_file(tmp_path / "im.tif", model=model_10nm, device="cpu", pixel_size_nm=20)
    assert res.pixel_ratio == 2.0 and res.labels.shape == sample[0].shape


def test_train_records_the_pixel_size_of_a_new_model(tmp_path, sample, caplog):
    image, mask = sample
    _imagej(tmp_path / "im.tif", 0.007, None, data=image)
    tifffile.imwrite(tmp_path / "m.tif", mask, photometric="minisblack")
    base = ["train", "--image", str(tmp_path / "im.tif"), "--mask", str(tmp_path / "m.tif"), "--spec",
            json.dumps({"encoder": "mobilenet_v2", "encoder_depth": 3, "decoder_channels": [16, 8, 8],
                        "tile_size": 128, "tile_overlap": 16}),
            "--steps", "1", "--batch-size", "1", "--device", "cpu"]
    assert main([*base, "--out", str(tmp_path / "a"), "--pixel-size", "6"]) == 0
    assert load_model(tmp_path / "a" / "best", device="cpu").spec.pixel_size_nm == 6.0
    assert main([*base, "--out", str(tmp_path / "b")]) == 0  # from the file: 7 nm
    assert load_model(tmp_path / "b" / "best", device="cpu").spec.pixel_size_nm == pytest.approx(7.0)


def test_finetune_from_a_base_converts_the_pixel_size(tmp_path, model_10nm, sample, caplog):
    image, mask = sample
    cfg = dataclasses.replace(FINETUNE, steps=1, batch_size=1, tile=64)
    gen = api.iter_finetune(image, mask, [0], base=model_10nm, config=cfg, device="cpu", pixel_size_nm=20)
    with caplog.at_level(logging.INFO):
        while True:
            try:
                next(gen)
            except StopIteration as stop:
                result = stop.value
                break
    assert "pixel size 20 nm; model 10 nm: pixel ratio 2" in caplog.text
    assert load_model(result.path, device="cpu").spec.pixel_size_nm == 20.0
    with pytest.raises(InputError, match="not both"):
        next(api.iter_finetune(image, mask, [0], base=model_10nm, pixel_ratio=2.0, pixel_size_nm=20))


def test_api_segment_takes_pixel_size_nm(model_10nm, sample):
    from napari_mitoseg.inference import PredictOptions

    model = api.get_model(model_10nm, "cpu")
    image = sample[0][:1]
    by_size = api.segment(image, model, pixel_size_nm=20)
    by_ratio = api.segment(image, model, PredictOptions(pixel_ratio=2.0))
    np.testing.assert_array_equal(by_size, by_ratio)
    with pytest.raises(InputError, match="not both"):
        api.segment(image, model, PredictOptions(pixel_ratio=2.0), pixel_size_nm=20)

"""Reading EM stacks in every supported layout, and writing labels atomically."""

from __future__ import annotations

import os

import dask.array as da
import numpy as np
import pytest
import tifffile
import zarr

from napari_mitoseg import io, ngff


def _stack(dtype=np.uint8, shape=(4, 40, 50)):
    a = np.arange(int(np.prod(shape)), dtype=np.float64).reshape(shape)
    a = a % np.iinfo(dtype).max if np.issubdtype(dtype, np.integer) else a / a.max()
    return a.astype(dtype)


def test_tiff_single_page_is_one_slice(tmp_path):
    a = _stack(shape=(40, 50))
    tifffile.imwrite(tmp_path / "one.tif", a)
    out = io.read_stack(tmp_path / "one.tif")
    assert isinstance(out, np.ndarray)
    assert out.shape == (1, 40, 50)
    np.testing.assert_array_equal(out[0], a)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_tiff_multipage_keeps_values_and_dtype(tmp_path, dtype):
    a = _stack(dtype)
    tifffile.imwrite(tmp_path / "s.tiff", a, photometric="minisblack")
    out = io.read_stack(tmp_path / "s.tiff")
    assert out.dtype == dtype
    np.testing.assert_array_equal(out, a)


def test_imagej_hyperstack_with_singleton_time_and_channel(tmp_path):
    a = _stack()
    tifffile.imwrite(tmp_path / "hs.tif", a[None, :, None], imagej=True, metadata={"axes": "TZCYX"})
    out = io.read_stack(tmp_path / "hs.tif")
    assert out.shape == (4, 40, 50)
    np.testing.assert_array_equal(out, a)


def test_singleton_axes_of_a_5d_array_are_dropped(tmp_path):
    a = _stack()
    z = zarr.open(str(tmp_path / "t.zarr"), mode="w", shape=(1, 4, 1, 40, 50), dtype=a.dtype)
    z[:] = a[None, :, None]
    out = io.read_stack(tmp_path / "t.zarr")
    assert out.shape == (4, 40, 50)
    np.testing.assert_array_equal(np.asarray(out), a)


def test_hyperstack_with_two_channels_is_refused(tmp_path):
    tifffile.imwrite(tmp_path / "c2.tif", np.zeros((1, 4, 2, 40, 50), np.uint8), imagej=True,
                     metadata={"axes": "TZCYX"})
    with pytest.raises(io.ReadError, match="single channel"):
        io.read_stack(tmp_path / "c2.tif")


def test_zarr_array_reads_lazily(tmp_path):
    a = _stack(np.uint16)
    z = zarr.open(str(tmp_path / "s.zarr"), mode="w", shape=a.shape, dtype=a.dtype, chunks=(1, 40, 50))
    z[:] = a
    out = io.read_stack(tmp_path / "s.zarr")
    assert isinstance(out, da.Array)
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out.compute(), a)
    eager = io.read_stack(tmp_path / "s.zarr", lazy=False)
    assert isinstance(eager, np.ndarray)
    np.testing.assert_array_equal(eager, a)


def test_ome_zarr_group_reads_the_full_resolution_named_in_multiscales(tmp_path):
    a = _stack()
    g = zarr.open_group(str(tmp_path / "ome.zarr"), mode="w")
    g.create_array("scale0", shape=a.shape, dtype=a.dtype)[:] = a
    # sorts before "scale0": only the multiscales metadata says which level is the full one
    g.create_array("a_half", shape=(4, 20, 25), dtype=a.dtype)[:] = a[:, ::2, ::2]
    g.attrs["multiscales"] = [{
        "version": "0.4",
        "axes": [{"name": n, "type": "space"} for n in "zyx"],
        "datasets": [{"path": "scale0"}, {"path": "a_half"}],
    }]
    out = io.read_stack(tmp_path / "ome.zarr")
    assert isinstance(out, da.Array)
    assert out.shape == (4, 40, 50)
    np.testing.assert_array_equal(out.compute(), a)


def test_folder_of_png_slices_in_name_order(tmp_path):
    import skimage.io

    a = _stack()
    folder = tmp_path / "slices"
    folder.mkdir()
    for i in reversed(range(4)):  # written out of order; read in name order
        skimage.io.imsave(folder / f"z{i:03d}.png", a[i], check_contrast=False)
    (folder / "notes.txt").write_text("not a slice")
    out = io.read_stack(folder)
    assert out.shape == (4, 40, 50)
    np.testing.assert_array_equal(out, a)


def test_folder_with_slices_of_different_sizes_is_refused(tmp_path):
    import skimage.io

    skimage.io.imsave(tmp_path / "a.png", np.zeros((10, 12), np.uint8), check_contrast=False)
    skimage.io.imsave(tmp_path / "b.png", np.zeros((10, 13), np.uint8), check_contrast=False)
    with pytest.raises(io.ReadError, match="differ in shape"):
        io.read_stack(tmp_path)


def test_empty_folder_is_refused(tmp_path):
    with pytest.raises(io.ReadError, match="no PNG or TIFF slices"):
        io.read_stack(tmp_path)


def test_single_png_is_one_slice(tmp_path):
    import skimage.io

    a = _stack(shape=(40, 50))
    skimage.io.imsave(tmp_path / "one.png", a, check_contrast=False)
    out = io.read_stack(tmp_path / "one.png")
    assert out.shape == (1, 40, 50)
    np.testing.assert_array_equal(out[0], a)


@pytest.mark.parametrize("name", ["rgb.tif", "rgb.png"])
def test_rgb_is_refused_with_a_clear_message(tmp_path, name):
    import skimage.io

    rgb = np.zeros((40, 50, 3), np.uint8)
    if name.endswith(".tif"):
        tifffile.imwrite(tmp_path / name, rgb)
    else:
        skimage.io.imsave(tmp_path / name, rgb, check_contrast=False)
    with pytest.raises(io.ReadError, match=r"RGB.*grey"):
        io.read_stack(tmp_path / name)


def test_big_tiff_opens_lazily(tmp_path, monkeypatch):
    a = _stack()
    tifffile.imwrite(tmp_path / "s.tif", a, photometric="minisblack")
    assert isinstance(io.read_stack(tmp_path / "s.tif"), np.ndarray)
    monkeypatch.setattr(io, "LAZY_BYTES", 1000)  # the file is larger than this
    out = io.read_stack(tmp_path / "s.tif")
    assert isinstance(out, da.Array)
    np.testing.assert_array_equal(out.compute(), a)
    assert isinstance(io.read_stack(tmp_path / "s.tif", lazy=False), np.ndarray)


def test_missing_file(tmp_path):
    with pytest.raises(io.ReadError, match="does not exist"):
        io.read_stack(tmp_path / "nope.tif")


def test_unsupported_format(tmp_path):
    (tmp_path / "a.txt").write_text("hello")
    with pytest.raises(io.ReadError, match="unsupported format"):
        io.read_stack(tmp_path / "a.txt")


@pytest.mark.parametrize("lazy", [False, True])
def test_corrupt_tiff_gives_a_read_error(tmp_path, lazy):
    good = tmp_path / "good.tif"
    tifffile.imwrite(good, _stack(), photometric="minisblack")
    for name, data in [("text.tif", b"this is not a TIFF file"), ("header.tif", good.read_bytes()[:6])]:
        (tmp_path / name).write_bytes(data)
        with pytest.raises(io.ReadError, match=f"{name} is not a readable TIFF"):
            io.read_stack(tmp_path / name, lazy=lazy)


@pytest.mark.parametrize("imagej", [False, True])
@pytest.mark.parametrize("keep", [0.3, 0.6, 0.95])
@pytest.mark.parametrize("lazy", [False, True])
def test_truncated_tiff_is_refused_not_read_short(tmp_path, imagej, keep, lazy):
    good = tmp_path / "good.tif"
    tifffile.imwrite(good, _stack(shape=(6, 40, 50)), compression="zlib", imagej=imagej,
                     photometric="minisblack")
    data = good.read_bytes()
    (tmp_path / "cut.tif").write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(io.ReadError, match="cut.tif is (truncated|not a readable TIFF)"):
        io.read_stack(tmp_path / "cut.tif", lazy=lazy)


def test_imagej_single_ifd_stack_is_read_whole(tmp_path):
    """ImageJ saves stacks over 4 GB with one IFD and the slices contiguous: not truncated."""
    a = _stack(shape=(5, 40, 50))
    path = tmp_path / "ij.tif"
    tifffile.imwrite(path, a, imagej=True, metadata={"axes": "ZYX"})
    data = bytearray(path.read_bytes())
    first = tifffile.TiffFile(path)
    ifd = first.pages[0].offset
    first.close()
    n_tags = int.from_bytes(data[ifd : ifd + 2], "little")
    next_ptr = ifd + 2 + 12 * n_tags
    data[next_ptr : next_ptr + 4] = b"\0\0\0\0"  # drop every IFD after the first
    path.write_bytes(bytes(data))
    with tifffile.TiffFile(path) as tif:
        assert len(tif.pages) == 1
    np.testing.assert_array_equal(io.read_stack(path), a)
    path.write_bytes(bytes(data[: len(data) - 2000]))  # and cut short, it is refused
    with pytest.raises(io.ReadError, match="truncated"):
        io.read_stack(path)


# --------------------------------------------------------------------------- writing


@pytest.mark.parametrize("suffix", [".tif", ".tiff", ".zarr"])
def test_write_labels_round_trip_and_replace(tmp_path, suffix):
    labels = (_stack(np.uint16) % 7).astype(np.int32)
    path = tmp_path / f"labels{suffix}"
    assert io.write_labels(path, labels) == path
    np.testing.assert_array_equal(np.asarray(io.read_stack(path)), labels)
    io.write_labels(path, labels + 1)  # replaces the old one whole
    np.testing.assert_array_equal(np.asarray(io.read_stack(path)), labels + 1)
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no temporary left behind


@pytest.mark.parametrize("z", [1, 3, 4])
def test_label_tiff_is_a_grey_stack_whatever_its_depth(tmp_path, z):
    path = io.write_labels(tmp_path / "l.tif", np.ones((z, 20, 30), np.uint8))
    with tifffile.TiffFile(path) as tif:
        assert len(tif.pages) == z
        assert tif.pages[0].photometric == tifffile.PHOTOMETRIC.MINISBLACK
    assert io.read_stack(path).shape == (z, 20, 30)


def test_write_labels_bool_becomes_uint8(tmp_path):
    io.write_labels(tmp_path / "m.tif", np.ones((2, 8, 8), bool))
    out = io.read_stack(tmp_path / "m.tif")
    assert out.dtype == np.uint8
    assert out.min() == out.max() == 1


def test_write_labels_refuses_float_and_unknown_suffix(tmp_path):
    with pytest.raises(io.WriteError, match="integer"):
        io.write_labels(tmp_path / "m.tif", np.zeros((2, 8, 8), np.float32))
    with pytest.raises(io.WriteError, match=r"\.tif"):
        io.write_labels(tmp_path / "m.png", np.zeros((2, 8, 8), np.uint8))
    assert list(tmp_path.iterdir()) == []


def test_written_file_gets_the_usual_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        path = io.write_labels(tmp_path / "m.tif", np.zeros((2, 8, 8), np.uint8))
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644


def test_failed_tiff_write_leaves_the_old_file_intact(tmp_path, monkeypatch):
    path = tmp_path / "labels.tif"
    io.write_labels(path, np.ones((2, 8, 8), np.uint8))
    before = path.read_bytes()

    def broken_imwrite(file, *args, **kwargs):
        with open(file, "wb") as f:
            f.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(tifffile, "imwrite", broken_imwrite)
    with pytest.raises(OSError, match="disk full"):
        io.write_labels(path, np.zeros((2, 8, 8), np.uint8))
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["labels.tif"]


def test_failed_zarr_write_leaves_the_old_store_intact(tmp_path, monkeypatch):
    path = tmp_path / "labels.zarr"
    io.write_labels(path, np.ones((2, 8, 8), np.uint8))
    real_create = ngff.create_label_pyramid

    def broken_create(*args, **kwargs):
        group = real_create(*args, **kwargs)
        group["0"][0] = 9  # part written, then the disk fills
        raise OSError("disk full")

    monkeypatch.setattr(ngff, "create_label_pyramid", broken_create)
    with pytest.raises(OSError, match="disk full"):
        io.write_labels(path, np.zeros((2, 8, 8), np.uint8))
    monkeypatch.undo()
    np.testing.assert_array_equal(np.asarray(io.read_stack(path)), np.ones((2, 8, 8), np.uint8))
    assert [p.name for p in tmp_path.iterdir()] == ["labels.zarr"]


# --------------------------------------------------------------------------- OME-Zarr output


def _ome_zarr_node(path):
    """The node ome-zarr-py's own reader makes of ``path`` (not our reader)."""
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Label, Multiscales, Reader

    node = next(iter(Reader(parse_url(str(path)))()))
    assert node.load(Label) is not None and node.load(Multiscales) is not None
    return node


def _voxel_tiff(path, image, voxel=(30.0, 8.0, 8.0)):
    """An ImageJ TIFF recording ``voxel`` (Z, Y, X) nm."""
    tifffile.imwrite(path, image, imagej=True, resolution=(1000 / voxel[2], 1000 / voxel[1]),
                     metadata={"spacing": voxel[0] / 1000, "unit": "um", "axes": "ZYX"})
    return path


def test_segment_writes_an_ome_zarr_label_pyramid_that_ome_zarr_py_reads(tmp_path, tiny_model_dir):
    import ome_zarr_models
    import skimage.measure

    from napari_mitoseg import api

    rng = np.random.default_rng(3)
    image = (rng.random((3, 600, 520)) * 255).astype(np.uint8)
    src = _voxel_tiff(tmp_path / "em.tif", image)
    out = tmp_path / "mito.zarr"
    res = api.segment_file(src, model=tiny_model_dir, device="cpu", out=out, threshold=0.5)
    assert res.labels is None  # streamed slice by slice, never held whole
    expected = api.segment(image, api.get_model(tiny_model_dir, "cpu"), api.PredictOptions(threshold=0.5))
    assert 0 < expected.mean() < 1
    node = _ome_zarr_node(out)
    levels = [np.asarray(d) for d in node.data]
    assert [lv.shape for lv in levels] == [(3, 600, 520), (3, 300, 260), (3, 150, 130)]
    np.testing.assert_array_equal(levels[0], expected)
    np.testing.assert_array_equal(levels[1], skimage.measure.block_reduce(levels[0], (1, 2, 2), np.max))
    scales = [t[0]["scale"] for t in node.metadata["coordinateTransformations"]]
    assert scales == [[30.0, 8.0, 8.0], [30.0, 16.0, 16.0], [30.0, 32.0, 32.0]]
    assert [a["unit"] for a in node.metadata["axes"]] == ["nanometer"] * 3
    # the NGFF models (the validator's) accept it as a label image; our own readers agree
    assert type(ome_zarr_models.open_ome_zarr(str(out))).__name__ == "ImageLabel"
    assert io.read_voxel_size(out) == (30.0, 8.0, 8.0)
    np.testing.assert_array_equal(np.asarray(io.read_stack(out)), expected)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["em.tif", "mito.zarr"]


def test_instances_to_zarr_are_an_ome_zarr_label_image_too(tmp_path, tiny_model_dir):
    from napari_mitoseg import api

    rng = np.random.default_rng(4)
    src = _voxel_tiff(tmp_path / "em.tif", (rng.random((2, 96, 80)) * 255).astype(np.uint8), (40.0, 5.0, 5.0))
    res = api.segment_file(src, model=tiny_model_dir, device="cpu", out=tmp_path / "obj.zarr",
                           instances=True, threshold=0.5)
    node = _ome_zarr_node(tmp_path / "obj.zarr")
    np.testing.assert_array_equal(np.asarray(node.data[0]), res.labels)
    assert node.metadata["coordinateTransformations"][0][0]["scale"] == [40.0, 5.0, 5.0]


def test_streamed_zarr_interrupted_leaves_the_old_result(tmp_path):
    out = io.write_labels(tmp_path / "l.zarr", np.ones((3, 8, 8), np.uint8))
    with pytest.raises(KeyboardInterrupt), io.labels_zarr(out, (3, 8, 8), np.uint8) as arr:
        arr[0] = 5
        raise KeyboardInterrupt
    np.testing.assert_array_equal(np.asarray(io.read_stack(out)), np.ones((3, 8, 8), np.uint8))
    assert [p.name for p in tmp_path.iterdir()] == ["l.zarr"]


# --------------------------------------------------------------------------- outputs that would lose data


def _tree(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_output_zarr_that_holds_the_input_is_refused(tmp_path):
    from napari_mitoseg import api
    from napari_mitoseg.cli import main

    img = tmp_path / "img.zarr"  # an OME-Zarr image whose level 0 is segmented
    g = zarr.open_group(str(img), mode="w", zarr_format=2)
    g.create_array("0", shape=(2, 16, 16), dtype="uint8")[:] = 7
    proj = tmp_path / "proj.zarr" / "slices"  # PNG slices inside the folder named as output
    proj.mkdir(parents=True)
    import skimage.io

    skimage.io.imsave(proj / "a.png", np.full((16, 16), 9, np.uint8), check_contrast=False)
    before = _tree(tmp_path)
    for src, out in ((img / "0", img), (proj, proj.parent)):
        with pytest.raises(io.WriteError, match="holds the input"):
            api.segment_file(src, model="no-such-model", out=out)
        assert main(["segment", str(src), "--model", "no-such-model", "-o", str(out)]) == 2
    assert _tree(tmp_path) == before


def test_existing_zarr_that_is_not_our_result_is_refused(tmp_path, capsys):
    from napari_mitoseg.cli import main

    analysis = tmp_path / "analysis.zarr"  # the user's own group: raw data and manual labels
    g = zarr.open_group(str(analysis), mode="w")
    g.create_array("raw", shape=(2, 16, 16), dtype="uint8")[:] = 3
    g.create_array("my_manual_labels", shape=(2, 16, 16), dtype="uint8")[:] = 1
    src = tmp_path / "stack.tif"
    tifffile.imwrite(src, np.zeros((2, 16, 16), np.uint8))
    before = _tree(analysis)
    with pytest.raises(io.WriteError, match="not a label image written by mitoseg"):
        io.check_label_path(analysis, inputs=[src])
    with pytest.raises(io.WriteError, match="not a label image written by mitoseg"):
        io.write_labels(analysis, np.ones((2, 16, 16), np.uint8))
    assert main(["segment", str(src), "--model", "no-such-model", "-o", str(analysis)]) == 2
    assert "not a label image written by mitoseg" in capsys.readouterr().err
    assert _tree(analysis) == before
    # an empty folder, or a result of ours, may be replaced
    (tmp_path / "empty.zarr").mkdir()
    io.write_labels(tmp_path / "empty.zarr", np.ones((2, 8, 8), np.uint8))
    io.write_labels(tmp_path / "empty.zarr", np.zeros((2, 8, 8), np.uint8))
    assert not np.asarray(io.read_stack(tmp_path / "empty.zarr")).any()


def test_output_zarr_that_is_a_regular_file_is_refused_untouched(tmp_path):
    from napari_mitoseg import api

    out = tmp_path / "out.zarr"
    out.write_bytes(b"my notes")
    src = tmp_path / "stack.tif"
    tifffile.imwrite(src, np.zeros((2, 16, 16), np.uint8))
    with pytest.raises(io.WriteError, match="is not a folder"):
        api.segment_file(src, model="no-such-model", out=out)
    with pytest.raises(io.WriteError, match="is not a folder"):
        io.write_labels(out, np.ones((2, 16, 16), np.uint8))
    assert out.read_bytes() == b"my notes"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.zarr", "stack.tif"]

"""Reading EM stacks in every supported layout, and writing labels atomically."""

from __future__ import annotations

import os

import dask.array as da
import numpy as np
import pytest
import tifffile
import zarr

from napari_mitoseg import io


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
    real_open = zarr.open

    def broken_open(*args, **kwargs):
        arr = real_open(*args, **kwargs)
        arr[0] = 9  # part written, then the disk fills
        raise OSError("disk full")

    monkeypatch.setattr(zarr, "open", broken_open)
    with pytest.raises(OSError, match="disk full"):
        io.write_labels(path, np.zeros((2, 8, 8), np.uint8))
    monkeypatch.undo()
    np.testing.assert_array_equal(np.asarray(io.read_stack(path)), np.ones((2, 8, 8), np.uint8))
    assert [p.name for p in tmp_path.iterdir()] == ["labels.zarr"]

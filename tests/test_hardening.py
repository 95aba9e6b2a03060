"""Hostile input, handled: every case ends in a correct result or one clear refusal, never a
silent wrong result, a traceback or a hang."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_mitoseg import api
from napari_mitoseg.cli import main
from napari_mitoseg.inference import InputError, PredictOptions, normalise01, predict
from napari_mitoseg.io import ReadError, read_stack
from napari_mitoseg.morphology import MeasureError, measure

SRC = str(Path(api.__file__).resolve().parents[1])  # the sources under test, for subprocesses


def _one_error_line(capsys) -> str:
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out
    lines = [ln for ln in captured.err.splitlines() if ln.startswith("mitoseg: error: ")]
    assert len(lines) == 1, captured.err
    return lines[0]


@pytest.fixture
def files(tmp_path, sample):
    image, gt = sample
    paths = {n: tmp_path / f"{n}.tif" for n in ("image", "gt", "prob", "nan", "neg")}
    tifffile.imwrite(paths["image"], image)
    tifffile.imwrite(paths["gt"], gt)
    tifffile.imwrite(paths["prob"], (gt * 0.7 + 0.1).astype(np.float32))
    tifffile.imwrite(paths["nan"], np.full(gt.shape, np.nan, np.float32))
    neg = gt.astype(np.int16)
    neg[0, :5, :5] = -3
    tifffile.imwrite(paths["neg"], neg)
    return paths


def _zarr(path: Path, data: np.ndarray) -> Path:
    import zarr

    z = zarr.open(str(path), mode="w", shape=data.shape, dtype=data.dtype, chunks=(1, *data.shape[1:]))
    z[:] = data
    return path


def _chunk_files(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(("zarr.json", ".z")))


# --------------------------------------------------------------------------- ground truth


@pytest.mark.parametrize(("gt", "message"), [("image", "looks like a grey image"),
                                             ("prob", "fractional values"), ("nan", "NaN")])
def test_segment_refuses_ground_truth_that_is_not_a_mask(gt, message, files, capsys):
    argv = ["segment", str(files["image"]), "--model", "no-such-model", "--gt", str(files[gt]), "--json"]
    assert main(argv) == 2  # refused before the (unknown) model is even looked up
    assert message in _one_error_line(capsys)


def test_evaluate_refuses_negative_label_ids(files, capsys):
    assert main(["evaluate", str(files["neg"]), str(files["gt"])]) == 2
    assert "negative values (down to -3)" in _one_error_line(capsys)


# --------------------------------------------------------------------------- damaged files


def test_zarr_image_with_a_missing_chunk_is_not_segmented_silently(tmp_path, sample, tiny_model_dir, capsys):
    store = _zarr(tmp_path / "im.zarr", sample[0])
    _chunk_files(store)[1].unlink()
    out = tmp_path / "out.tif"
    assert main(["segment", str(store), "--model", str(tiny_model_dir), "--device", "cpu", "-o", str(out)]) == 0
    err = capsys.readouterr().err
    assert f"mitoseg: warning: {store}: 1 of 3 chunks are not stored and read as 0" in err
    assert out.exists()


def test_cluster_path_warns_of_a_missing_chunk_before_any_work(tmp_path, sample, tiny_model_dir, caplog):
    from napari_mitoseg.distributed.run import prepare

    store = _zarr(tmp_path / "im.zarr", sample[0])
    _chunk_files(store)[1].unlink()
    with caplog.at_level("WARNING"):
        prepare(str(store), str(tmp_path / "out.zarr"), model=str(tiny_model_dir), device="cpu")
    assert "1 of 3 chunks are not stored and read as 0" in caplog.text


@pytest.mark.parametrize("suffix", [".tif", ".zarr"])
def test_zarr_with_an_undecodable_chunk_is_one_clear_error(suffix, tmp_path, sample, tiny_model_dir, capsys):
    store = _zarr(tmp_path / "im.zarr", sample[0])
    _chunk_files(store)[2].write_bytes(b"not a compressed chunk" * 8)
    with pytest.raises(ReadError, match=r"chunk \(slice 2\) cannot be decoded"):
        np.asarray(read_stack(store))
    out = tmp_path / f"out{suffix}"
    assert main(["segment", str(store), "--model", str(tiny_model_dir), "--device", "cpu", "-o", str(out)]) == 2
    assert "the store is damaged" in _one_error_line(capsys)
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["im.zarr"]  # no half-written output


def test_multipage_tiff_cut_between_pages_is_refused(tmp_path, sample):
    path = tmp_path / "pages.tif"
    with tifffile.TiffWriter(path) as w:  # one page at a time, no metadata declaring the count
        for s in sample[0]:
            w.write(s, contiguous=False, metadata=None)
    with tifffile.TiffFile(path) as tif:
        third = tif.pages[2].offset
    cut = tmp_path / "cut.tif"
    cut.write_bytes(path.read_bytes()[:third])
    assert read_stack(path).shape == (3, 100, 124)
    with pytest.raises(ReadError, match=r"truncated: 2 page\(s\) read"):
        read_stack(cut)


def test_a_named_pipe_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "x.tif"
    os.mkfifo(fifo)
    code = f"from napari_mitoseg.io import read_stack\nread_stack({str(fifo)!r})"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": SRC})
    assert "is not a regular file" in proc.stderr


# --------------------------------------------------------------------------- extreme values


@pytest.mark.parametrize("factor", [1e300, 1e-300])
def test_float64_beyond_float32_range_keeps_its_contrast(factor, sample, tiny_model):
    image = sample[0].astype(np.float64)
    ref = normalise01(image[0])
    assert ref.std() > 0.1
    np.testing.assert_allclose(normalise01(image[0] * factor), ref, atol=1e-5)
    prob_ref, _ = predict(tiny_model, image)
    prob, _ = predict(tiny_model, image * factor)
    np.testing.assert_allclose(prob.astype(np.float32), prob_ref.astype(np.float32), atol=2e-3)


# --------------------------------------------------------------------------- measure


def test_measure_refuses_negative_ids_and_grey_images(tmp_path, files, capsys):
    lab = np.zeros((4, 32, 32), np.int64)
    lab[1:3, 4:10, 4:10] = -2
    with pytest.raises(MeasureError, match="negative ids"):
        measure(lab, (30, 8, 8))
    table = tmp_path / "m.csv"
    cases = [(files["neg"], "negative ids (down to -3)"), (files["image"], "looks like a grey image")]
    for path, message in cases:
        assert main(["measure", str(path), "--voxel-size", "30", "8", "8", "-o", str(table)]) == 2
        assert message in _one_error_line(capsys)
    assert not table.exists()


def test_measure_refuses_a_grey_alpha_png(tmp_path, capsys):
    import skimage.io

    la = np.zeros((32, 32, 2), np.uint8)
    la[..., 0] = np.random.default_rng(0).integers(0, 255, (32, 32))
    la[..., 1] = 255
    png = tmp_path / "la.png"
    skimage.io.imsave(png, la, check_contrast=False)
    assert main(["measure", str(png), "--voxel-size", "30", "8", "8", "-o", str(tmp_path / "m.csv")]) == 2
    assert "alpha channel" in _one_error_line(capsys)


def test_measure_says_when_a_mask_loses_small_objects(tmp_path, capsys):
    small = np.zeros((4, 32, 32), np.uint8)
    small[1:3, 4:6, 4:6] = 1
    path = tmp_path / "small.tif"
    tifffile.imwrite(path, small)
    assert main(["measure", str(path), "--voxel-size", "30", "8", "8", "-o", str(tmp_path / "m.csv")]) == 0
    err = capsys.readouterr().err
    assert "read as a binary mask" in err and "1 smaller than 64 voxels dropped" in err


def test_measure_keeps_ids_near_2_to_the_40():
    lab = np.zeros((4, 32, 32), np.int64)
    lab[1:3, 4:10, 4:10] = 2**40
    lab[1:3, 14:20, 14:20] = 2**40 + 7
    lab[0, 25:30, 25:30] = 3
    rows = measure(lab, (30, 8, 8), surfaces=False)
    assert [(r.id, r.voxels) for r in rows] == [(3, 25), (2**40, 72), (2**40 + 7, 72)]


# --------------------------------------------------------------------------- API


def test_api_segment_takes_no_model_a_name_and_a_dict_of_options(tiny_model_dir, tiny_model):
    image = np.random.default_rng(0).integers(0, 255, (2, 64, 64)).astype(np.uint8)
    by_object = api.segment(image, tiny_model, PredictOptions(threshold=0.4))
    by_folder = api.segment(image, str(tiny_model_dir), {"threshold": 0.4})
    np.testing.assert_array_equal(by_object, by_folder)
    assert api.segment(image, None).shape == (2, 64, 64)  # the default model
    with pytest.raises(InputError, match="unknown option.*thresh; valid: threshold, tta"):
        api.segment(image, tiny_model, {"thresh": 0.4})
    with pytest.raises(InputError, match="dict of its fields"):
        api.segment(image, tiny_model, 0.4)


def test_merge_unpainted_refuses_slices_outside_the_stack():
    new, painted = np.zeros((3, 8, 8), np.uint8), np.ones((3, 8, 8), np.uint8)
    with pytest.raises(InputError, match=r"slice index \[99\] out of range: the stack has 3"):
        api.merge_unpainted(new, painted, keep_slices=[99])
    assert api.merge_unpainted(new, painted, [1])[:, 0, 0].tolist() == [0, 1, 0]
    assert api.merge_unpainted(new[0], painted[0], [0]).all()  # a 2D pair: the whole slice


def test_an_error_in_the_progress_callback_is_named_as_such(tiny_model):
    def callback(done, total):
        raise ZeroDivisionError("in the caller's code")

    image = np.random.default_rng(0).integers(0, 255, (2, 64, 64)).astype(np.uint8)
    with pytest.raises(api.ProgressCallbackError, match="progress callback callback raised "
                                                        "ZeroDivisionError: in the caller's code") as info:
        api.segment(image, tiny_model, progress=callback)
    assert isinstance(info.value.__cause__, ZeroDivisionError)


# --------------------------------------------------------------------------- CLI


def test_segment_without_an_output_is_refused_before_any_slice_is_segmented(files, tiny_model_dir,
                                                                           capsys):
    assert main(["segment", str(files["image"]), "--model", str(tiny_model_dir), "--device", "cpu"]) == 2
    captured = capsys.readouterr()
    assert captured.err.strip() == ("mitoseg: error: nothing would be kept: give an output (-o OUT, .tif "
                                    "or .zarr) to write the labels, or ground truth (--gt TRUTH) or --json "
                                    "for scores")


def test_sigint_stops_segment_even_when_started_with_sigint_ignored(tmp_path, tiny_model_dir):
    """A script that starts ``mitoseg`` in the background leaves SIGINT ignored; Ctrl+C or
    ``kill -INT`` must still stop it promptly, with nothing written."""
    stack = tmp_path / "big.tif"
    tifffile.imwrite(stack, np.random.default_rng(0).integers(0, 255, (400, 128, 128)).astype(np.uint8))
    out = tmp_path / "out.tif"
    code = textwrap.dedent(f"""
        import sys
        from napari_mitoseg.cli import main
        sys.exit(main(["segment", {str(stack)!r}, "--model", {str(tiny_model_dir)!r}, "--device", "cpu",
                       "--tta", "-o", {str(out)!r}]))
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": SRC},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    line = proc.stderr.readline()  # the first progress line: the work has started
    assert line.startswith("segment:"), line
    proc.send_signal(signal.SIGINT)
    t0 = time.monotonic()
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 130, err
    assert time.monotonic() - t0 < 60
    assert "interrupted; nothing was written" in err
    assert not out.exists()


def test_a_tiny_slice_is_called_too_small_not_rgb(tmp_path):
    path = tmp_path / "tiny.tif"
    tifffile.imwrite(path, np.zeros((1, 4, 4), np.uint8), photometric="minisblack")
    with pytest.raises(InputError, match="slices of 4x4 are too small"):
        api.segment(read_stack(path), None)

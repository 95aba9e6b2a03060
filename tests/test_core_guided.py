"""Ortho planes and uncertainty from the command line and the API: segment --ortho,
--uncertainty-out, --json's per-slice uncertainty, and `mitoseg suggest`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile

from napari_mitoseg import api
from napari_mitoseg.cli import main
from napari_mitoseg.inference import PredictOptions, iter_predict
from napari_mitoseg.io import read_stack
from napari_mitoseg.synthetic import make_sample
from napari_mitoseg.uncertainty import suggest_slices, to_uint8, uncertainty_map


@pytest.fixture
def stack_file(tmp_path):
    image = make_sample((10, 64, 72), seed=5)[0]
    path = tmp_path / "em.tif"
    tifffile.imwrite(path, image, photometric="minisblack")
    return path, image


def _cli(*args) -> int:
    return main([*map(str, args)])


def test_segment_json_lists_each_slices_uncertainty_and_writes_the_map(stack_file, tiny_model_dir, tmp_path,
                                                                        capsys):
    path, image = stack_file
    umap = tmp_path / "unsure.tif"
    assert _cli("segment", path, "--model", tiny_model_dir, "--device", "cpu", "--json",
                "--uncertainty-out", umap, "--no-ortho") == 0
    out = json.loads(capsys.readouterr().out)
    results = list(iter_predict(api.get_model(tiny_model_dir, "cpu"), image))
    assert out["uncertainty"] == [round(r.uncertainty, 4) for r in results] and out["ortho"] is False
    written = tifffile.imread(umap)
    assert written.dtype == np.uint8 and written.shape == image.shape
    np.testing.assert_array_equal(written, np.stack([to_uint8(uncertainty_map(r.prob, r.threshold))
                                                     for r in results]))


def test_segment_ortho_from_the_command_line_and_refused_for_a_thin_stack(stack_file, tiny_model_dir, tmp_path,
                                                                         capsys):
    path, image = stack_file
    out = tmp_path / "labels.tif"
    assert _cli("segment", path, "--model", tiny_model_dir, "--device", "cpu", "--ortho", "-o", out, "--json") == 0
    assert json.loads(capsys.readouterr().out)["ortho"] is True
    model = api.get_model(tiny_model_dir, "cpu")
    np.testing.assert_array_equal(read_stack(out), api.segment(image, model, PredictOptions(ortho=True)))
    thin = tmp_path / "thin.tif"
    tifffile.imwrite(thin, image[:3], photometric="minisblack")
    assert _cli("segment", thin, "--model", tiny_model_dir, "--device", "cpu", "--ortho", "--json") == 2
    assert "at least 8 slices" in capsys.readouterr().err


def test_ortho_progress_counts_the_planes_of_all_three_passes(stack_file, tiny_model_dir):
    path, image = stack_file
    calls = []
    api.segment_file(path, model=tiny_model_dir, device="cpu", ortho=True,
                     progress=lambda d, t: calls.append((d, t)))
    total = sum(image.shape)
    assert calls[-1] == (total, total) and len(calls) == total


def test_suggest_names_the_most_uncertain_slices_spread_along_z(stack_file, tiny_model_dir, capsys):
    path, _ = stack_file
    assert _cli("suggest", path, "--model", tiny_model_dir, "--device", "cpu", "--n", "2", "--json") == 0
    out = json.loads(capsys.readouterr().out)
    unc = api.segment_file(path, model=tiny_model_dir, device="cpu").uncertainty
    assert out["slices"] == suggest_slices(unc, 2) and len(set(out["slices"])) == 2
    assert out["uncertainty"] == [unc[i] for i in out["slices"]]
    assert _cli("suggest", path, "--model", tiny_model_dir, "--n", "0") == 2

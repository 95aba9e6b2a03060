"""How a model is named through the API and the command line: empty names, wrong types, broken
models in the list."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import tifffile

from napari_mitoseg import api
from napari_mitoseg.cli import main
from napari_mitoseg.model import WEIGHTS_NAME, ModelError, user_model_dir


def test_get_model_refuses_an_empty_name_and_a_number():
    with pytest.raises(ModelError, match="the model name is empty"):
        api.get_model("")
    with pytest.raises(TypeError, match="got int 123"):
        api.get_model(123)


def test_segment_with_an_empty_model_name_is_refused_before_work(tmp_path, capsys):
    image = tmp_path / "image.tif"
    tifffile.imwrite(image, np.zeros((1, 64, 64), np.uint8))
    out = tmp_path / "labels.tif"
    assert main(["segment", str(image), "--model", "", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mitoseg: error: the model name is empty") and err.count("\n") == 1
    assert not out.exists()


def test_models_marks_a_model_with_missing_weights_as_broken(tiny_model_dir, capsys):
    folder = shutil.copytree(tiny_model_dir, user_model_dir() / "lost-weights")
    (folder / WEIGHTS_NAME).unlink()
    assert main(["models"]) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("lost-weights"))
    assert "broken: it has no model.safetensors" in line

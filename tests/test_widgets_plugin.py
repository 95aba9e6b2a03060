"""The npe2 contributions: manifest, reader, writer, sample data and widgets opened from the
Plugins menu, through napari itself."""

import os
import subprocess
import sys

os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np
import pytest
import tifffile

pytestmark = pytest.mark.gui

PLUGIN = "napari-mitoseg"
WIDGETS = {
    "Segment mitochondria": "SegmentWidget",
    "Evaluate segmentation": "EvaluateWidget",
    "Fine-tune model": "FinetuneWidget",
    "Mitochondria 3D & measurements": "View3DWidget",
    "Mitochondria: all steps": "StepsWidget",
}


def _manifest():
    import npe2

    return npe2.PluginManifest.from_distribution(PLUGIN)


def test_manifest_is_valid_and_complete():
    mf = _manifest()
    assert mf.name == PLUGIN
    assert mf.display_name.startswith("Mitochondria segmentation")
    contrib = mf.contributions
    assert sorted(w.display_name for w in contrib.widgets) == sorted(WIDGETS)
    assert [s.key for s in contrib.sample_data] == ["em_sample"]
    assert contrib.readers[0].accepts_directories
    assert {"*.tif", "*.tiff", "*.zarr"} <= set(contrib.readers[0].filename_patterns)
    assert contrib.writers[0].layer_types == ["labels"]
    assert set(contrib.writers[0].filename_extensions) == {".tif", ".tiff"}
    for cmd in contrib.commands:
        module, _, attr = cmd.python_name.partition(":")
        assert module.startswith("napari_mitoseg._"), cmd.python_name  # thin submodules only


def test_manifest_modules_do_not_import_torch():
    """napari imports these at start-up or when a menu opens; torch must load only on use."""
    names = sorted({c.python_name.partition(":")[0] for c in _manifest().contributions.commands})
    code = (
        "import importlib, sys\n"
        f"for m in {names!r}:\n"
        "    importlib.import_module(m)\n"
        "heavy = [m for m in ('torch', 'segmentation_models_pytorch', 'torchvision') if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
        "sys.exit(1 if heavy else 0)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "QT_QPA_PLATFORM": "offscreen"})
    assert res.returncode == 0, res.stdout + res.stderr
    assert "HEAVY []" in res.stdout


def test_reader_opens_tiff_zarr_and_folders(make_napari_viewer, tmp_path):
    import zarr

    from napari_mitoseg._reader import get_reader

    stack = np.random.default_rng(0).integers(0, 255, (3, 40, 50), dtype=np.uint8)
    tif = tmp_path / "stack.tif"
    tifffile.imwrite(tif, stack, photometric="minisblack")
    zpath = tmp_path / "stack.zarr"
    z = zarr.open(str(zpath), mode="w", shape=stack.shape, dtype=stack.dtype, chunks=(1, 40, 50))
    z[:] = stack
    folder = tmp_path / "slices"
    folder.mkdir()
    for i, s in enumerate(stack):
        tifffile.imwrite(folder / f"s{i:03d}.tif", s, photometric="minisblack")
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.txt").write_text("x")

    assert get_reader(str(tmp_path / "notes.txt")) is None
    assert get_reader(str(tmp_path / "empty")) is None
    assert get_reader([str(tif), str(tif)]) is None

    viewer = make_napari_viewer()
    for path, name in ((tif, "stack"), (zpath, "stack"), (folder, "slices")):
        assert callable(get_reader(str(path)))
        layers = viewer.open(str(path), plugin=PLUGIN)
        assert len(layers) == 1 and layers[0].__class__.__name__ == "Image"
        assert layers[0].name.startswith(name)
        np.testing.assert_array_equal(np.asarray(layers[0].data), stack)


def test_writer_saves_labels_tiff(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    labels = np.zeros((4, 30, 30), np.int32)
    labels[1:3, 5:15, 5:15] = 3
    layer = viewer.add_labels(labels, name="seg")
    out = tmp_path / "seg.tif"
    written = layer.save(str(out), plugin=PLUGIN)
    assert written and os.path.samefile(written[0] if isinstance(written, list) else written, out)
    np.testing.assert_array_equal(tifffile.imread(out), labels)


def test_sample_data_menu(make_napari_viewer, monkeypatch):
    from napari_mitoseg import synthetic

    real = synthetic.make_sample
    monkeypatch.setattr(synthetic, "make_sample", lambda: real(shape=(3, 64, 64)))
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "em_sample")
    image, gt = viewer.layers["EM sample"], viewer.layers["EM sample ground truth"]
    assert image.__class__.__name__ == "Image" and gt.__class__.__name__ == "Labels"
    exp_image, exp_gt = real(shape=(3, 64, 64))
    np.testing.assert_array_equal(image.data, exp_image)
    np.testing.assert_array_equal(gt.data, exp_gt)


@pytest.mark.parametrize("title", sorted(WIDGETS))
def test_widgets_open_from_plugins_menu(make_napari_viewer, title, tmp_path, monkeypatch):
    monkeypatch.setenv("MITOSEG_MODEL_DIR", str(tmp_path))
    viewer = make_napari_viewer()
    dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, title)
    assert type(widget).__name__ == WIDGETS[title]
    # napari hands plugin widgets a public-only proxy of the viewer
    assert getattr(widget.viewer, "__wrapped__", widget.viewer) is viewer

"""Helpers shared by the GUI tests."""

from __future__ import annotations


def wait_for(qtbot, widget, signal, action=None, timeout: int = 60_000):
    """Run ``action`` and wait for ``signal``; return its arguments. On a timeout, say what the
    widget's message line says (why a run stopped)."""
    try:
        with qtbot.waitSignal(signal, timeout=timeout) as blocker:
            if action is not None:
                action()
    except qtbot.TimeoutError as exc:
        raise AssertionError(f"{exc}; the widget says: {widget.message.text()!r}") from exc
    return blocker.args


PLUGIN = "napari-mitoseg"


def user_models(tmp_path, monkeypatch, template, with_nm: bool = True):
    """MITOSEG_MODEL_DIR = tmp_path/models holding "tiny" (no pixel size recorded) and, with
    ``with_nm``, "tiny-nm" (the same weights, 5 nm pixels); the shipped folder hidden (empty)."""
    import json
    import shutil

    from napari_mitoseg import model as model_mod

    root = tmp_path / "models"
    shutil.copytree(template, root / "tiny")
    if with_nm:
        shutil.copytree(template, root / "tiny-nm")
        cfg_path = root / "tiny-nm" / "config.json"
        cfg = json.loads(cfg_path.read_text())
        cfg["spec"]["pixel_size_nm"] = 5.0
        cfg_path.write_text(json.dumps(cfg))
    monkeypatch.setenv("MITOSEG_MODEL_DIR", str(root))
    monkeypatch.setattr(model_mod, "SHIPPED_DIR", tmp_path / "no-shipped-models")
    return root


def open_dock(viewer, title):
    """A widget as napari's Plugins menu opens it (with a public-only proxy of the viewer)."""
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, title)
    return widget


def segment_dock(viewer, model="tiny"):
    """The Segment widget, opened from the plugin, with ``model`` chosen."""
    w = open_dock(viewer, "Segment mitochondria")
    assert w.model_choice.select(model)
    return w


def run_segment(qtbot, w, timeout: int = 60_000):
    """Click Run on the Segment widget ``w`` and wait for the run to finish; its first argument."""
    return wait_for(qtbot, w, w.run_finished, w.run_button.click, timeout=timeout)[0]

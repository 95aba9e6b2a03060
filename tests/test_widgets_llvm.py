"""Napari's OpenGL canvas on Mesa (llvmpipe under Xvfb, radeonsi, Intel) maps a system libLLVM;
Triton, imported by CUDA builds of PyTorch, brings its own LLVM, and loading it afterwards
crashed the whole napari process with a segmentation fault on the first Segment click."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from napari_mitoseg._widgets._common import avoid_llvm_clash


@pytest.fixture
def no_triton_entry(monkeypatch):
    """Run with 'triton' absent from sys.modules; the original entry comes back afterwards."""
    monkeypatch.delitem(sys.modules, "triton", raising=False)
    yield
    # monkeypatch restores (or removes) the entry when the test ends


def test_triton_is_blocked_only_when_a_system_llvm_is_loaded(tmp_path, monkeypatch, no_triton_entry):
    maps = tmp_path / "maps"
    maps.write_text("7f00-7f01 r-xp 0 08:01 1 /usr/lib/x86_64-linux-gnu/libGL.so.1\n")
    assert avoid_llvm_clash(maps) is False
    assert "triton" not in sys.modules
    maps.write_text("7f00-7f01 r-xp 0 08:01 1 /usr/lib/x86_64-linux-gnu/libLLVM-15.so.1\n")
    assert avoid_llvm_clash(maps) is True
    assert sys.modules["triton"] is None
    with pytest.raises(ImportError):
        import triton  # noqa: F401
    assert avoid_llvm_clash(maps) is False  # already decided
    assert avoid_llvm_clash(tmp_path / "missing") is False


def test_already_imported_triton_is_left_alone(tmp_path, monkeypatch):
    sentinel = object()
    monkeypatch.setitem(sys.modules, "triton", sentinel)
    maps = tmp_path / "maps"
    maps.write_text("/usr/lib/libLLVM-15.so.1\n")
    assert avoid_llvm_clash(maps) is False
    assert sys.modules["triton"] is sentinel


SCRIPT = textwrap.dedent(
    """
    import numpy as np
    import napari
    from qtpy.QtWidgets import QApplication

    from napari_mitoseg._widgets.segment import SegmentWidget
    from napari_mitoseg.synthetic import make_sample

    viewer = napari.Viewer(show=True)
    image, _ = make_sample(shape=(2, 96, 96))
    viewer.add_image(image, name="em")
    QApplication.processEvents()  # the canvas draws: Mesa's LLVM is loaded now
    w = SegmentWidget(viewer)
    viewer.window.add_dock_widget(w)
    done = []
    w.run_finished.connect(done.append)
    w.run_button.click()  # the first import of torch and the model code happens here
    for _ in range(6000):
        QApplication.processEvents()
        if done:
            break
        import time; time.sleep(0.01)
    layer = done[0] if done else None
    print("RESULT", layer is not None and layer.data.shape == image.shape)
    viewer.close()
    """
)


@pytest.mark.gui
@pytest.mark.slow
def test_segmenting_in_a_fresh_napari_does_not_crash(tmp_path):
    """A fresh process: napari draws first, the model code is imported by the Segment click."""
    env_script = tmp_path / "fresh.py"
    env_script.write_text(SCRIPT)
    proc = subprocess.run([sys.executable, str(env_script)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, f"exit {proc.returncode}:\n{proc.stderr[-3000:]}"
    assert "RESULT True" in proc.stdout, proc.stdout + proc.stderr[-3000:]

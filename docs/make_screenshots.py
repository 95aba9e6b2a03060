"""Make the user guide's screenshots from the real widgets: ``xvfb-run -a python docs/make_screenshots.py``.

Walks through the guide on the synthetic sample (segment, evaluate, paint, fine-tune, segment
again, 3D) in a 1,280 x 800 window with three widgets docked at a time, as on a laptop, and saves
PNGs under ``docs/images``. It uses the shipped model when it is
installed; otherwise it trains a tiny stand-in model on the synthetic sample for a minute first
(say so in the guide; re-run this script once the shipped model is there). Fine-tuned models go
to a temporary folder, never to your model folder.

Options: ``--out DIR`` (default docs/images), ``--model NAME_OR_FOLDER``, ``--width PX``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def wait_for(signal, timeout_s: float = 600.0):
    """Run the Qt event loop until ``signal`` fires; return its arguments."""
    from qtpy.QtCore import QEventLoop, QTimer

    loop, got = QEventLoop(), []

    def on_signal(*args):
        got.append(args)
        loop.quit()

    signal.connect(on_signal)
    QTimer.singleShot(int(timeout_s * 1000), loop.quit)
    loop.exec()
    signal.disconnect(on_signal)
    if not got:
        raise TimeoutError(f"no signal within {timeout_s} s")
    return got[0]


def settle(ms: int = 300) -> None:
    """Let Qt and vispy draw."""
    from qtpy.QtCore import QCoreApplication, QEventLoop, QTimer

    loop = QEventLoop()
    QTimer.singleShot(ms, loop.quit)
    loop.exec()
    QCoreApplication.processEvents()


def save_png(rgba, path: Path, width: int) -> None:
    """Downscale to ``width`` px and store as a palette PNG (small files for the docs)."""
    import numpy as np
    from PIL import Image

    img = Image.fromarray(np.ascontiguousarray(rgba[..., :3]))
    if img.width > width:
        img = img.resize((width, round(img.height * width / img.width)), Image.Resampling.LANCZOS)
    img = img.quantize(colors=64, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, optimize=True)
    print(f"  {path} ({path.stat().st_size // 1024} KB)")


def grab(widget):
    """A QWidget as an (H, W, 4) uint8 array, through QWidget.grab() (public Qt API)."""
    import numpy as np
    from PIL import Image

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "widget.png"
        widget.grab().save(str(path))
        return np.asarray(Image.open(path).convert("RGBA"))


def stand_in_model(root: Path) -> str:
    """Train a tiny U-Net on a synthetic volume for a minute (stand-in for the shipped model)."""
    from napari_mitoseg.model import ModelSpec, save_model
    from napari_mitoseg.synthetic import make_sample
    from napari_mitoseg.training import TrainConfig, train

    print("shipped model not installed: training a tiny stand-in model (about a minute)...")
    t0 = time.perf_counter()
    image, mask = make_sample(shape=(8, 256, 256), seed=11)  # not the sample shown in the guide
    spec = ModelSpec(encoder="resnet18", encoder_depth=3, decoder_channels=(32, 16, 8), tile_size=512,
                     tile_overlap=32)
    cfg = TrainConfig(steps=120, batch_size=4, tile=128, lr=3e-3, warmup=10, val_every=0,
                      checkpoint_every=0, scale_range=(0.8, 1.25))
    tuned = train(image, mask, spec=spec, config=cfg, device="cpu")
    name = "tiny-demo"
    save_model(tuned.net, spec, root / name,
               info={"summary": f"tiny stand-in trained {cfg.steps} steps on synthetic data "
                                "for the screenshots"})
    print(f"  trained in {time.perf_counter() - t0:.0f} s")
    return name


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(Path(__file__).parent / "images"))
    p.add_argument("--model", default=None, help="default: the shipped model, else a tiny stand-in")
    p.add_argument("--width", type=int, default=1280)
    args = p.parse_args(argv)
    out = Path(args.out)

    tmp = Path(tempfile.mkdtemp(prefix="mitoseg-shots-"))
    os.environ["MITOSEG_MODEL_DIR"] = str(tmp / "models")  # fine-tuned models stay out of $HOME

    import napari
    import numpy as np

    from napari_mitoseg.model import DEFAULT_MODEL, list_models
    from napari_mitoseg.training import FINETUNE

    model = args.model
    if model is None:
        names = [e.name for e in list_models()]
        model = DEFAULT_MODEL if DEFAULT_MODEL in names else stand_in_model(tmp / "models")

    viewer = napari.Viewer(show=True, title="napari-mitoseg")
    plugin = "napari-mitoseg"

    def shot(name: str) -> None:
        settle()
        save_png(viewer.screenshot(canvas_only=False, flash=False), out / name, args.width)

    # 1. open the sample and segment it
    viewer.open_sample(plugin, "em_sample")
    image, truth = viewer.layers["EM sample"], viewer.layers["EM sample ground truth"]
    truth.visible = False
    for layer in (image, truth):  # EM-like anisotropy: slices 4x thicker than the pixels
        layer.scale = (4.0, 1.0, 1.0)
    _, seg = viewer.window.add_plugin_dock_widget(plugin, "Segment mitochondria")
    ev_dock, ev = viewer.window.add_plugin_dock_widget(plugin, "Evaluate segmentation")
    _, ft = viewer.window.add_plugin_dock_widget(plugin, "Fine-tune model")
    window = seg.window()
    window.resize(1280, 800)
    settle()
    print(f"  window {window.width()} x {window.height()}")
    if not seg.model_choice.select(Path(model).name):
        print(f"model {model!r} not found", file=sys.stderr)
        return 1
    viewer.dims.set_current_step(0, 8)
    seg.run_button.click()
    wait_for(seg.run_finished)
    result = viewer.layers["EM sample mitochondria"]
    shot("01-segment.png")
    save_png(grab(seg.scroll_area.widget()), out / "segment-widget.png", 420)

    # 2. evaluate against the ground truth
    ev.scroll_area.ensureWidgetVisible(ev.run_button)
    ev.run_button.click()
    wait_for(ev.evaluated)
    worst = int(np.argmin([s.iou for s in ev.report.per_slice]))
    ev.go_to_slice(worst)
    shot("02-evaluate.png")
    viewer.layers.remove("EM sample mitochondria errors")

    # 3. paint a correction on the worst slice: here, copy the truth into the result
    z = worst
    result.data[z] = truth.data[z]
    result.refresh()
    viewer.layers.selection.active = result
    result.mode = "paint"
    shot("03-paint.png")
    result.mode = "pan_zoom"

    # 4. fine-tune on the corrected slice
    ft.find_button.click()
    ft.steps.setValue(20)  # a short run: the screenshot shows the widget, not a good model
    ft.base_config = dataclasses.replace(FINETUNE, batch_size=2, tile=128)
    ft.run_button.click()
    (tuned,) = wait_for(ft.finetuned)
    if tuned is None:
        print(f"fine-tuning failed: {ft.message.text()}", file=sys.stderr)
        return 1
    ft.scroll_area.ensureWidgetVisible(ft.segment_again_button)
    shot("04-finetune.png")

    # 5. segment again: the corrected slice is kept
    ft.segment_again_button.click()
    wait_for(ft.resegmented)
    ev.run_button.click()  # the score again, now with the uncorrected slices apart
    wait_for(ev.evaluated)
    viewer.layers.remove("EM sample mitochondria errors")
    shot("05-segment-again.png")

    # 6. one object per mitochondrion, in 3D, with measurements (in place of Evaluate)
    viewer.window.remove_dock_widget(ev_dock)
    image.visible = True
    dock, v3 = viewer.window.add_plugin_dock_widget(plugin, "Mitochondria 3D & measurements")
    window.resize(1280, 800)
    v3.labels_choice.set_layer("EM sample mitochondria")
    v3.voxel.set_value((30.0, 8.0, 8.0))  # typed: the sample's files carry no voxel size
    v3.run_button.click()
    wait_for(v3.measured)
    image.visible = False
    for layer in viewer.layers:  # the 3D view frames the objects, not the layers left at scale 1
        layer.visible = layer is viewer.layers.selection.active
    settle()
    viewer.reset_view()
    settle()
    camera = getattr(viewer, "scene", viewer).camera  # napari >= 0.9 moved it to viewer.scene
    camera.angles = (0, -40, 60)
    shot("06-3d.png")
    print(f"screenshots in {out} (model: {Path(model).name})")
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Make the user guide's screenshots from the real widgets: ``xvfb-run -a python docs/make_screenshots.py``.

Walks through the guide (segment, evaluate, paint, fine-tune, segment again, 3D) in a
1,280 x 800 window with the four steps as tabs of one dock, as on a laptop, and saves PNGs
under ``docs/images``. On a real stack and its ground truth (``--image``, ``--truth``, a few
slices of it with ``--slices``, its voxel size with ``--voxel``) or, without them, on the
synthetic sample. It uses the shipped model when it is installed; otherwise it trains a tiny
stand-in model on a synthetic volume for a minute first (say so in the guide; re-run this
script once the shipped model is there). Fine-tuned models go to a temporary folder, never to
your model folder.

Options: ``--out DIR`` (default docs/images), ``--model NAME_OR_FOLDER``, ``--width PX``,
``--image TIF --truth TIF --slices A:B --voxel Z Y X``.
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


def open_stack(viewer, plugin: str, args):
    """(image layer, ground-truth layer): the slices ``args.slices`` of ``args.image`` and
    ``args.truth`` at their voxel size, or the synthetic sample (slices 4x thicker than its
    pixels)."""
    import numpy as np

    if not args.image:
        viewer.open_sample(plugin, "em_sample")
        image, truth = viewer.layers["EM sample"], viewer.layers["EM sample ground truth"]
        for layer in (image, truth):
            layer.scale = (4.0, 1.0, 1.0)
        return image, truth
    from napari_mitoseg.io import read_stack, read_voxel_size

    a, b = (int(v) for v in args.slices.split(":"))
    voxel = tuple(args.voxel) if args.voxel else read_voxel_size(args.image)
    meta = {"scale": voxel, "units": ("nm",) * 3, "metadata": {"voxel_size_nm": voxel}} if voxel else {}
    name = Path(args.image).stem
    image = viewer.add_image(np.asarray(read_stack(args.image)[a:b]), name=name, **meta)
    truth = viewer.add_labels((np.asarray(read_stack(args.truth)[a:b]) > 0).astype(np.uint8),
                              name=f"{name} ground truth", opacity=0.8, **meta)
    truth.contour = 2
    return image, truth


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(Path(__file__).parent / "images"))
    p.add_argument("--model", default=None, help="default: the shipped model, else a tiny stand-in")
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--image", help="an EM stack (TIFF); default: the synthetic sample")
    p.add_argument("--truth", help="its ground truth (TIFF)")
    p.add_argument("--slices", default="0:20", help="the slices shown, A:B (default 0:20)")
    p.add_argument("--voxel", type=float, nargs=3, default=None, metavar=("Z", "Y", "X"),
                   help="the stack's voxel size in nm when its file records none")
    args = p.parse_args(argv)
    out = Path(args.out)

    tmp = Path(tempfile.mkdtemp(prefix="mitoseg-shots-"))
    os.environ["MITOSEG_MODEL_DIR"] = str(tmp / "models")  # fine-tuned models stay out of $HOME

    import napari
    import numpy as np
    from qtpy.QtCore import Qt

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

    # 1. open the stack and segment it
    image, truth = open_stack(viewer, plugin, args)
    truth.visible = False
    dock, steps = viewer.window.add_plugin_dock_widget(plugin, "Mitochondria: all steps")
    seg, ev, ft, v3 = steps.segment, steps.evaluate, steps.finetune, steps.view3d
    window = seg.window()
    window.resize(1280, 800)
    settle()
    window.resizeDocks([dock], [460], Qt.Orientation.Horizontal)  # the canvas gets the rest
    settle()
    print(f"  window {window.width()} x {window.height()}")
    if not seg.model_choice.select(Path(model).name):
        print(f"model {model!r} not found", file=sys.stderr)
        return 1
    viewer.dims.set_current_step(0, image.data.shape[0] // 2)
    seg.uncertainty.enabled.setChecked(True)  # the guided loop: where is the model unsure?
    seg.run_button.click()
    wait_for(seg.run_finished)
    result = viewer.layers[f"{image.name} mitochondria"]
    umap = viewer.layers[f"{image.name} uncertainty"]
    umap.visible = False
    shot("01-segment.png")
    save_png(grab(seg.scroll_area.widget()), out / "segment-widget.png", 420)

    # 1b. which slices to correct first: the uncertainty map and Suggest slices
    umap.visible, result.contour = True, 2  # the heat map under the result's outlines
    image.visible = False  # on black: the thin bright bands along the edges read
    suggested = seg.uncertainty.suggest()
    seg.scroll_area.ensureWidgetVisible(seg.uncertainty.table)
    seg.uncertainty.table.scrollToTop()
    shot("01b-suggest.png")
    umap.visible, result.contour, image.visible = False, 0, True

    # 2a. without ground truth: Evaluate plots the uncertainty per slice
    steps.setCurrentWidget(ev)
    ev.pred_choice.set_layer(result)
    ev.gt_choice.set_layer(image)  # no ground truth: the EM stack itself is chosen
    ev.run_button.click()
    shot("02a-evaluate-uncertainty.png")

    # 2. evaluate against the ground truth
    ev.gt_choice.set_layer(truth)
    truth.visible = True
    ev.run_button.click()
    wait_for(ev.evaluated)
    ev.go_to_slice(int(np.argmin([s.iou for s in ev.report.per_slice])))  # the worst slice
    shot("02-evaluate.png")
    viewer.layers.remove(f"{image.name} mitochondria errors")

    # 3. paint corrections on the suggested slices: here, copy the truth into the result
    for z in suggested:
        result.data[z] = truth.data[z]
    result.refresh()
    viewer.dims.set_current_step(0, suggested[0])
    viewer.layers.selection.active = result
    result.mode = "paint"
    shot("03-paint.png")
    result.mode = "pan_zoom"

    # 4. fine-tune on the corrected slice
    steps.setCurrentWidget(ft)
    ft.find_button.click()
    # 4a. only the left half of each corrected slice was checked: a rectangle on each
    regions = ft.regions.add_layer()
    depth, height, width = image.data.shape
    for z in suggested:
        regions.add_rectangles([[z, 0, 0], [z, 0, width // 2], [z, height, width // 2], [z, height, 0]])
    regions.mode = "pan_zoom"
    viewer.layers.selection.active = result
    settle(1500)  # the note of each slice's checked share comes from a worker
    ft.scroll_area.ensureWidgetVisible(ft.regions)
    shot("04a-checked-regions.png")
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
    regions.visible = False  # the result, not the regions, from here on
    ft.segment_again_button.click()
    wait_for(ft.resegmented)
    steps.setCurrentWidget(ev)
    ev.run_button.click()  # the score again, now with the uncorrected slices apart
    wait_for(ev.evaluated)
    viewer.layers.remove(f"{image.name} mitochondria errors")
    shot("05-segment-again.png")

    # 6. one object per mitochondrion, in 3D, with measurements
    steps.setCurrentWidget(v3)
    v3.labels_choice.set_layer(f"{image.name} mitochondria")
    if not v3.voxel.known():
        v3.voxel.set_value((30.0, 8.0, 8.0))  # typed: the synthetic sample carries no voxel size
    v3.run_button.click()
    wait_for(v3.measured)  # the widget turns to an oblique 3D view of the objects alone
    settle(1000)
    shot("06-3d.png")
    print(f"screenshots in {out} (model: {Path(model).name})")
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

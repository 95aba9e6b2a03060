"""Dock widget "Fine-tune model": learn from the slices you corrected, then segment again.

The widget reads as its sections: the training slices (:mod:`._training_slices`) and the checked
regions of them (:mod:`._checked_regions`), the model and its settings, the run (this module:
worker, progress, loss plot, result) and "Segment again" (:mod:`._segment_again`).
"""

from __future__ import annotations

import dataclasses

import napari
import numpy as np
from napari.layers import Image, Labels
from napari.utils.notifications import show_error
from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import QHBoxLayout, QLabel, QPushButton, QSpinBox, QWidget

from ._checked_regions import CheckedRegions, RegionError, region_masks
from ._common import CORRECTED, avoid_llvm_clash, is_em_image, is_mask_layer, layer_array
from ._controls import (
    DeviceChoice,
    LayerChoice,
    ModelChoice,
    PlotCanvas,
    compact_form,
    invert_box,
    message_label,
    no_model_message,
    scrollable,
)
from ._export_package import ExportPackage
from ._pixel_size import PixelSizeControls
from ._progress import RunProgress
from ._segment_again import SegmentAgain
from ._segment_run import SegmentationRun
from ._training_slices import CorrectionFinder, SliceEditor


def finetune_job(image, labels, slices, base, config, device, pixel_ratio=1.0, invert=False, regions=None):
    """Worker: :func:`api.iter_finetune`, yielding ``TrainProgress`` per step, then the
    ``FinetuneResult`` (also returned). ``regions``: a :class:`RegionSnapshot` of the checked
    regions, made into per-slice masks here (None, or no shape on any training slice: whole slices)."""
    from ..api import iter_finetune

    checked = region_masks(regions, image.shape, slices) if regions is not None else None
    result = yield from iter_finetune(image, labels, slices, base=base, config=config, device=device,
                                      pixel_ratio=pixel_ratio, invert=invert, checked=checked or None)
    yield result  # the model is saved by now: report it even if Cancel comes this instant
    return result


def _is_result(layer) -> bool:
    return layer.name.endswith("mitochondria")


class FinetuneWidget(CorrectionFinder, SegmentAgain, ExportPackage, QWidget):
    """Fine-tune a model on the slices corrected in a result layer, then segment again.

    Corrected slices are found by comparing the layer with the model output recorded when it
    was segmented (``_common.painted_slices``); add or drop slices by hand. The new model is saved
    as a new version in the user's model folder, never over an existing one. ``base_config``
    (a ``TrainConfig``) holds the training settings other than the number of steps.
    ``finetuned`` fires with the ``FinetuneResult`` (None if cancelled or failed);
    ``resegmented`` with the result layer after "Segment again" (None if it stopped).
    """

    finetuned = Signal(object)
    resegmented = Signal(object)
    exported = Signal(object)  # the bioimage.io package written (a Path), or None when it failed
    #: the corrected slices found in the background (after painting or a segmentation)
    slices_found = Signal(list)

    def __init__(self, napari_viewer: napari.viewer.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        from ..training import FINETUNE

        self.viewer = napari_viewer
        self.base_config = FINETUNE
        self.result = None
        self.worker = None
        self._training = False
        self.segment_run: SegmentationRun | None = None
        self.losses: list[float] = []
        self._trained_on: tuple = (None, None)  # (labels layer, slices) of the running fine-tune
        #: (network, config, slices, area, threads, load) of the running fine-tune on the CPU
        self._timing: tuple | None = None
        self._init_finder()

        form = compact_form()
        self._build_layers(form)
        self._build_model(form)
        layout = scrollable(self)
        layout.addLayout(form)
        self._build_run(layout)
        layout.addStretch(1)
        self._connect()

    # ------------------------------------------------------------------ sections

    def _build_layers(self, form) -> None:
        """Image, corrected labels and the training slices."""
        self.image_choice = LayerChoice(self.viewer, Image, prefer=is_em_image, parent=self)
        self.image_choice.setToolTip("The EM stack the labels belong to (not its mask)")
        self.labels_choice = LayerChoice(self.viewer, Labels, prefer=_is_result, parent=self)
        self.labels_choice.setToolTip("The segmentation you corrected by painting")
        self.find_button = QPushButton("Find")
        self.find_button.setToolTip("Find the corrected slices: compare the layer with the model's output")
        self.find_button.clicked.connect(self.find_corrected_slices)
        self.slice_editor = SliceEditor(self.viewer, self.labels_choice.layer, self)
        ed = self.slice_editor
        self.slice_list, self.slices_note, self.slice_spin = ed.slice_list, ed.note, ed.spin
        self.add_button, self.add_current_button = ed.add_button, ed.add_current_button
        self.remove_button = ed.remove_button
        form.addRow("Image", self.image_choice)
        labels_row = QHBoxLayout()
        labels_row.addWidget(self.labels_choice, 1)
        labels_row.addWidget(self.find_button)
        form.addRow("Corrected labels", labels_row)
        form.addRow("Training slices", ed)
        self.regions = CheckedRegions(self.viewer, self.image_choice.layer, self.slices, self)
        self.regions_choice, self.regions_note = self.regions.choice, self.regions.note
        form.addRow("Checked regions", self.regions)

    def _build_model(self, form) -> None:
        """Base model, device, the stack's pixel size and contrast, the number of steps."""
        from ..training import FINETUNE, FINETUNE_SECONDS

        self.model_choice = ModelChoice(self)
        self.device_choice = DeviceChoice(self)
        self.steps = QSpinBox()
        self.steps.setRange(1, 100_000)
        self.steps.setValue(FINETUNE.steps)
        self.pixel_size = PixelSizeControls(self)
        self.pixel_ratio = self.pixel_size.ratio
        self.invert = invert_box(self)
        for box in (self.pixel_ratio, self.pixel_size.nm, self.invert):
            box.setToolTip(box.toolTip() + " Set from the labels layer's segmentation; the new "
                           "model keeps it.")
        self.steps.setToolTip(f"Optimiser steps of {FINETUNE.batch_size} crops; {FINETUNE.steps} take "
                              f"about {FINETUNE_SECONDS} s on 2 idle CPU cores, seconds on a GPU")
        self.estimate = message_label()
        form.addRow("Base model", self.model_choice)
        device_row = QHBoxLayout()
        device_row.addWidget(self.device_choice, 1)
        device_row.addWidget(QLabel("Steps"))
        device_row.addWidget(self.steps)
        form.addRow("Device", device_row)
        form.addRow(self.pixel_size)
        form.addRow(self.invert)
        form.addRow(self.estimate)

    def _build_run(self, layout) -> None:
        """Fine-tune / Cancel / Segment again, progress, the loss plot and the result."""
        self.run_button = QPushButton("Fine-tune")
        self.run_button.clicked.connect(self.start)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        self.segment_again_button = QPushButton("Segment again")
        self.segment_again_button.setToolTip("Re-segment the image with the new model, into the layer it "
                                             "was trained on; the corrected slices are kept exactly")
        self.segment_again_button.setEnabled(False)
        self.segment_again_button.clicked.connect(self.segment_again)
        run_row = QHBoxLayout()
        for button in (self.run_button, self.cancel_button, self.segment_again_button):
            run_row.addWidget(button)
        self.progress = RunProgress("step")
        self.plot = PlotCanvas(self, height_px=90)
        self.plot.axes.set_xlabel("step")
        self.plot.axes.set_ylabel("loss")
        (self._loss_line,) = self.plot.axes.plot([], [], color="#3b8bd0", lw=1.2)
        self._empty_plot(self.steps.value())
        self.result_label = QLabel("")
        self.result_label.setWordWrap(True)
        self.result_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.result_label.setVisible(False)  # until there is a result
        self.message = message_label()
        layout.addLayout(run_row)
        for w in (self.progress, self.plot, self.result_label, self._build_export(), self.message):
            layout.addWidget(w)

    def _connect(self) -> None:
        self.model_choice.currentIndexChanged.connect(
            lambda *a: self.pixel_size.set_model(self.model_choice.source()))
        self.pixel_size.set_model(self.model_choice.source())
        self.image_choice.layer_changed.connect(self.pixel_size.set_layer)
        self.pixel_size.set_layer(self.image_choice.layer())
        self.labels_choice.layer_changed.connect(self._on_labels_layer)
        self._on_labels_layer(self.labels_choice.layer())
        self.steps.valueChanged.connect(self.show_estimate)
        self.device_choice.currentIndexChanged.connect(self.show_estimate)
        self.device_choice.ready.connect(self.show_estimate)  # a GPU may turn up
        model = self.slice_list.model()
        for sig in (model.rowsInserted, model.rowsRemoved, model.modelReset):
            sig.connect(self.show_estimate)
            sig.connect(self.regions.schedule)
        self.image_choice.layer_changed.connect(self.regions.schedule)
        self.show_estimate()

    # ------------------------------------------------------------------ expected time

    def expected_seconds(self, threads: int | None = None, crowded: float | None = None) -> float | None:
        """The time fine-tuning should take now on the CPU (``threads``: those the load leaves
        free; ``crowded``: how much slower the other work makes it); None on a GPU."""
        from ._finetune_time import cpu_threads, crowding, expected_seconds

        if self.device_choice.device() not in ("cpu", "auto") or (
                self.device_choice.device() == "auto" and self.device_choice.findText("cuda") >= 0):
            return None
        n, area = self._work()
        return expected_seconds(self.config(), n, area, threads or cpu_threads(),
                                crowding() if crowded is None else crowded, model=self._network())

    def _network(self) -> str | None:
        """The chosen model's network, what the time measured here is kept by."""
        from ._finetune_time import network_key

        source = self.model_choice.source()
        return network_key(source) if source else None

    def _work(self) -> tuple[int, int]:
        """(corrected slices, pixels per slice) of the run the controls describe."""
        layer = self.labels_choice.layer()
        return len(self.slices()) or 1, int(np.prod(layer.data.shape[-2:])) if layer is not None else 0

    def show_estimate(self, *args) -> None:
        """Say how long the run should take on this stack and machine, before it starts."""
        from ._finetune_time import cpu_threads, crowding
        from ._progress import format_duration

        seconds = self.expected_seconds()
        if seconds is None:
            self.estimate.setText("Expected: seconds to a minute on the GPU.")
            return
        from ._finetune_time import base_seconds

        threads, busy = cpu_threads(), crowding()
        note = f"; other work slows it {busy:.1f}x" if busy > 1.2 else ""
        source = ("from the last fine-tune on this machine" if base_seconds(self._network())[1]
                  else "from a reference machine")
        self.estimate.setText(f"Expected: about {format_duration(seconds)} here now ({threads} CPU "
                              f"thread{'s' if threads > 1 else ''} free{note}; {source}).")

    # ------------------------------------------------------------------ slices

    def slices(self) -> list[int]:
        """The slices to train on, sorted."""
        return self.slice_editor.slices()

    def set_slices(self, slices) -> None:
        self.slice_editor.set_slices(slices)

    def add_slice(self, z: int) -> None:
        self.slice_editor.add_slice(z)

    def add_current_slice(self) -> None:
        self.slice_editor.add_current_slice()

    def remove_selected(self) -> None:
        self.slice_editor.remove_selected()

    # ------------------------------------------------------------------ fine-tuning

    def config(self):
        """``base_config`` with the chosen number of steps."""
        return dataclasses.replace(self.base_config, steps=self.steps.value())

    def start(self):
        """Fine-tune the base model on the listed slices in a worker thread."""
        from napari.qt.threading import create_worker

        avoid_llvm_clash()

        image, labels = self.image_choice.layer(), self.labels_choice.layer()
        base = self.model_choice.source()
        slices = self.slices()
        if image is None or labels is None:
            return self._fail("Choose the image and the labels layer you corrected.")
        if base is None:
            return self._fail(no_model_message())
        if not slices:
            return self._fail("No training slice: paint corrections on at least one slice, then "
                              "press 'Find' beside the labels (or add slices by hand).")
        img = layer_array(image)
        if tuple(img.shape) != tuple(labels.data.shape):
            return self._fail(f"Image '{image.name}' {tuple(img.shape)} and labels '{labels.name}' "
                              f"{tuple(labels.data.shape)} differ in shape.")
        if is_mask_layer(image):
            return self._fail(
                f"'{image.name}' looks like a mask (only a few values, in flat patches), not an EM "
                "image: choose the EM stack as Image. The model would learn nothing from it."
            )
        from ..inference import InputError

        try:
            ratio = self.pixel_size.pixel_ratio()
            regions = self.regions.snapshot()
        except (InputError, RegionError) as exc:
            return self._fail(f"Cannot fine-tune on '{image.name}': {exc}")
        cfg = self.config()
        self.losses = []
        self._empty_plot(cfg.steps)
        self.result = None
        self.result_label.setText("")
        self.result_label.setVisible(False)
        self.segment_again_button.setEnabled(False)
        self._export_ready()
        self.progress.begin(cfg.steps, "step")
        self._trained_on = (labels, slices)
        self._timing = None
        if self.expected_seconds() is not None:  # on the CPU: what the run's measured time is scaled by
            from ._finetune_time import cpu_threads, crowding

            self._timing = (self._network(), cfg, *self._work(), cpu_threads(), crowding())
        self.worker = create_worker(
            finetune_job, img, np.array(labels.data), slices, base, cfg, self.device_choice.device(),
            ratio, self.invert.isChecked(), regions, _ignore_errors=True, _start_thread=False,
        )
        self.worker.yielded.connect(self._on_step)
        # a run's late signals ('returned' after its yielded result, a cancelled run's
        # 'aborted'/'finished') must not end the run started after it
        worker = self.worker
        self.worker.returned.connect(lambda r: self._on_returned(r) if worker is self.worker else None)
        self.worker.errored.connect(self._on_errored)
        self.worker.aborted.connect(lambda: self._on_aborted() if worker is self.worker else None)
        self.worker.finished.connect(lambda: self._on_finished() if worker is self.worker else None)
        self._training = True
        self.run_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        from ._progress import format_duration

        seconds = self.expected_seconds()
        about = f", expected about {format_duration(seconds)}" if seconds else ""
        self.message.setText(f"Fine-tuning {self.model_choice.name()} on slices {slices}{about}...")
        self.worker.start()
        return self.worker

    def cancel(self) -> None:
        """Stop fine-tuning (nothing is saved) or the running re-segmentation."""
        if self.segment_run is not None and self.segment_run.running:
            self.segment_run.cancel()
        elif self.worker is not None:
            self.worker.quit()
        self.message.setText("Cancelling...")

    def _fail(self, text: str, signal=None):
        self.message.setText(text)
        show_error(text)
        (signal if signal is not None else self.finetuned).emit(None)
        return None

    def _idle(self) -> None:
        self.run_button.setEnabled(True)
        self.cancel_button.setEnabled(False)

    def _empty_plot(self, steps: int) -> None:
        """No loss yet: the step axis spans the run (0 to ``steps``), the loss 0 to 1."""
        self._loss_line.set_data([], [])
        self.plot.axes.set_xlim(0, max(1, steps))
        self.plot.axes.set_ylim(0, 1)
        self.plot.draw()

    def _on_step(self, p) -> None:
        if not hasattr(p, "step"):  # the FinetuneResult
            self._on_returned(p)
            return
        self.progress.advance(p.step, p.total)
        self.losses.append(p.loss)
        self._loss_line.set_data(np.arange(1, len(self.losses) + 1), self.losses)
        ax = self.plot.axes
        ax.relim()
        ax.autoscale_view(scalex=False)  # the step axis spans the whole run from the start
        self.plot.draw()
        left = self.progress.time_left()
        left = f", {left} left" if left and p.step < p.total else ""
        self.message.setText(f"step {p.step}/{p.total}{left}: loss {p.loss:.3f} ({p.seconds:.0f} s)")

    def _on_finished(self) -> None:
        # a Cancel that lands after the last step suppresses both 'returned' and 'aborted'
        if self._training:
            self._on_aborted()

    def _on_returned(self, result) -> None:
        if not self._training:  # already shown (it is yielded, then returned)
            return
        self._training = False
        self._idle()
        self.result = result
        self.progress.finish()
        labels, _ = self._trained_on
        if labels is not None:  # Evaluate scores the other slices apart
            labels.metadata[CORRECTED] = list(result.slices)
        self.model_choice.select(result.name)
        self.result_label.setVisible(True)
        scored, share = "the corrected slices", getattr(result, "checked_share", None)
        if share is not None:
            scored = f"the checked regions ({share:.0%} of the corrected slices' pixels)"
        self.result_label.setText(
            f"IoU on {scored}: before {result.iou_before:.3f} -> after "
            f"{result.iou_after:.3f}\nNew model: {result.name} (saved in {result.path.parent})"
        )
        if self._timing is not None and self._timing[0] is not None and result.seconds > 0:
            from ._finetune_time import remember

            remember(*self._timing, result.seconds)
        self.message.setText(f"Fine-tuned in {result.seconds:.0f} s. Segment again to use it.")
        self.segment_again_button.setEnabled(True)
        self._export_ready()
        self.finetuned.emit(result)

    def _on_errored(self, exc) -> None:
        self._training = False
        self._idle()
        self._fail(f"Fine-tuning failed: {exc}")

    def _on_aborted(self) -> None:
        if not self._training:  # finished before the Cancel took effect
            return
        self._training = False
        self._idle()
        self.progress.idle("cancelled")
        self.message.setText("Fine-tuning cancelled; no model was saved.")
        self.finetuned.emit(None)


"""Dock widget "Fine-tune model": learn from the slices you corrected, then segment again."""

from __future__ import annotations

import dataclasses

import napari
import numpy as np
from napari.layers import Image, Labels
from napari.utils.notifications import show_error
from qtpy.QtCore import Qt, QTimer, Signal
from qtpy.QtWidgets import (
    QAbstractItemView,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QSpinBox,
    QWidget,
)

from ._common import (
    CORRECTED,
    INSTANCES,
    MODEL_NAME,
    MODEL_OUTPUT,
    OPTIONS,
    PIXEL_SIZE_NM,
    PREVIOUS_OUTPUT,
    DeviceChoice,
    LayerChoice,
    ModelChoice,
    PlotCanvas,
    avoid_llvm_clash,
    compact_form,
    invert_box,
    is_em_image,
    is_mask_layer,
    layer_array,
    message_label,
    model_output,
    no_model_message,
    painted_in,
    painted_slices,
    recorded_stack_options,
    same_layer,
    scrollable,
)
from ._pixel_size import PixelSizeControls
from ._progress import RunProgress
from ._segment_run import SegmentationRun


def finetune_job(image, labels, slices, base, config, device, pixel_ratio=1.0, invert=False):
    """Worker: :func:`api.iter_finetune`, yielding ``TrainProgress`` per step, then the
    ``FinetuneResult`` (also returned)."""
    from ..api import iter_finetune

    result = yield from iter_finetune(image, labels, slices, base=base, config=config, device=device,
                                      pixel_ratio=pixel_ratio, invert=invert)
    yield result  # the model is saved by now: report it even if Cancel comes this instant
    return result


def _is_result(layer) -> bool:
    return layer.name.endswith("mitochondria")


class FinetuneWidget(QWidget):
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
    #: the corrected slices found in the background (after painting or a segmentation)
    slices_found = Signal(list)

    def __init__(self, napari_viewer: napari.viewer.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        from ..training import FINETUNE, FINETUNE_SECONDS

        self.viewer = napari_viewer
        self.base_config = FINETUNE
        self.result = None
        self.worker = None
        self._training = False
        self.segment_run: SegmentationRun | None = None
        self.losses: list[float] = []
        self._watched = None
        self._seen_options = None  # the layer's recorded options last copied to the controls
        self._debounce = QTimer(self)
        self._debounce.setSingleShot(True)
        self._debounce.setInterval(400)
        self._debounce.timeout.connect(self._find_in_background)
        self._finder = None  # the worker looking for corrected slices
        self._trained_on: tuple = (None, None)  # (labels layer, slices) of the running fine-tune

        self.image_choice = LayerChoice(self.viewer, Image, prefer=is_em_image, parent=self)
        self.image_choice.setToolTip("The EM stack the labels belong to (not its mask)")
        self.labels_choice = LayerChoice(self.viewer, Labels, prefer=_is_result, parent=self)
        self.labels_choice.setToolTip("The segmentation you corrected by painting")
        self.find_button = QPushButton("Find corrected slices")
        self.find_button.setToolTip("Compare the layer with the model's output to find painted slices")
        self.find_button.clicked.connect(self.find_corrected_slices)
        self.slice_list = QListWidget()
        self.slice_list.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.slice_list.setMaximumHeight(70)
        self.slices_note = message_label()
        self.slice_spin = QSpinBox()
        self.slice_spin.setRange(0, 0)
        self.add_button = QPushButton("Add")
        self.add_button.setToolTip("Add this slice (e.g. one the model got right) to the training set")
        self.add_button.clicked.connect(lambda: self.add_slice(self.slice_spin.value()))
        self.add_current_button = QPushButton("Add current")
        self.add_current_button.setToolTip("Add the slice shown in the viewer")
        self.add_current_button.clicked.connect(self.add_current_slice)
        self.remove_button = QPushButton("Remove")
        self.remove_button.setToolTip("Remove the selected slices from the list")
        self.remove_button.clicked.connect(self.remove_selected)
        edit_row = QHBoxLayout()
        for w in (self.slice_spin, self.add_button, self.add_current_button, self.remove_button):
            edit_row.addWidget(w)

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
        self.run_button = QPushButton("Fine-tune")
        self.run_button.clicked.connect(self.start)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        run_row = QHBoxLayout()
        run_row.addWidget(self.run_button)
        run_row.addWidget(self.cancel_button)
        self.progress = RunProgress("step")
        self.plot = PlotCanvas(self, height_px=120)
        self.plot.axes.set_xlabel("step")
        self.plot.axes.set_ylabel("loss")
        (self._loss_line,) = self.plot.axes.plot([], [], color="#3b8bd0", lw=1.2)
        self.result_label = QLabel("")
        self.result_label.setWordWrap(True)
        self.result_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.segment_again_button = QPushButton("Segment again with the new model")
        self.segment_again_button.setToolTip("Re-segment the image; the corrected slices are kept exactly")
        self.segment_again_button.setEnabled(False)
        self.segment_again_button.clicked.connect(self.segment_again)
        self.message = message_label()

        form = compact_form()
        form.addRow("Image", self.image_choice)
        form.addRow("Corrected labels", self.labels_choice)
        form.addRow(self.find_button)
        form.addRow("Training slices", self.slice_list)
        form.addRow(edit_row)
        form.addRow(self.slices_note)
        form.addRow("Base model", self.model_choice)
        form.addRow("Device", self.device_choice)
        form.addRow(self.pixel_size)
        form.addRow(self.invert)
        form.addRow("Steps", self.steps)
        layout = scrollable(self)
        layout.addLayout(form)
        layout.addLayout(run_row)
        layout.addWidget(self.progress)
        layout.addWidget(self.plot)
        layout.addWidget(self.result_label)
        layout.addWidget(self.segment_again_button)
        layout.addWidget(self.message)
        layout.addStretch(1)

        self.model_choice.currentIndexChanged.connect(
            lambda *a: self.pixel_size.set_model(self.model_choice.source()))
        self.pixel_size.set_model(self.model_choice.source())
        self.image_choice.layer_changed.connect(self.pixel_size.set_layer)
        self.pixel_size.set_layer(self.image_choice.layer())
        self.labels_choice.layer_changed.connect(self._on_labels_layer)
        self._on_labels_layer(self.labels_choice.layer())

    # ------------------------------------------------------------------ slices

    def slices(self) -> list[int]:
        """The slices to train on, sorted."""
        return sorted(self.slice_list.item(i).data(Qt.ItemDataRole.UserRole)
                      for i in range(self.slice_list.count()))

    def set_slices(self, slices) -> None:
        self.slice_list.clear()
        for z in sorted({int(s) for s in slices}):
            item = QListWidgetItem(f"slice {z}")
            item.setData(Qt.ItemDataRole.UserRole, z)
            self.slice_list.addItem(item)

    def add_slice(self, z: int) -> None:
        layer = self.labels_choice.layer()
        n = self._n_slices(layer)
        if not 0 <= z < n:
            self.slices_note.setText(f"Slice {z} is outside the layer (0..{n - 1}).")
            return
        self.set_slices([*self.slices(), z])

    def add_current_slice(self) -> None:
        layer = self.labels_choice.layer()
        if layer is None or layer.ndim < 3:
            self.add_slice(0)
            return
        axis = self.viewer.dims.ndim - layer.ndim
        world = self.viewer.dims.point[axis]
        self.add_slice(int(round((world - layer.translate[0]) / layer.scale[0])))

    def remove_selected(self) -> None:
        for item in self.slice_list.selectedItems():
            self.slice_list.takeItem(self.slice_list.row(item))

    @staticmethod
    def _n_slices(layer) -> int:
        if layer is None:
            return 0
        return layer.data.shape[0] if layer.ndim == 3 else 1

    def find_corrected_slices(self) -> list[int]:
        """List the slices where the labels layer differs from its recorded model output."""
        layer = self.labels_choice.layer()
        if not self._can_find(layer):
            return self.slices()
        self._show_found(layer, painted_slices(layer))
        return self.slices()

    def _can_find(self, layer) -> bool:
        if layer is None:
            self.slices_note.setText("Choose the labels layer you corrected.")
            return False
        if not layer.editable:
            # a segmentation is writing into the layer; its slices are compared when it lands
            self.slices_note.setText(f"'{layer.name}' is being segmented; corrections are found when "
                                     "it is done.")
            return False
        self._sync_stack_options(layer)
        return True

    def _show_found(self, layer, found: list[int] | None) -> None:
        if found is None:
            self.slices_note.setText(
                f"'{layer.name}' has no recorded model output (segment the image with 'Segment "
                "mitochondria' first), so corrections cannot be found; add slices by hand."
            )
            return
        self.set_slices(found)
        self.slices_note.setText(
            f"Corrected slices: {found}." if found else
            "No corrected slice yet: paint corrections on the layer (or add slices by hand)."
        )

    def _find_in_background(self) -> None:
        """:meth:`find_corrected_slices` with the comparison in a worker thread (after painting
        and after a segmentation lands, so that the event loop never waits for it)."""
        from napari.qt.threading import create_worker

        layer = self.labels_choice.layer()
        if not self._can_find(layer):
            return
        if self._finder is not None:
            self._finder.quit()
        data = layer.data
        finder = create_worker(painted_in, data, model_output(layer, MODEL_OUTPUT),
                               model_output(layer, PREVIOUS_OUTPUT), _start_thread=False)

        def on_found(found) -> None:
            current = self.labels_choice.layer()
            # only an answer about the layer as it still is counts (not a preview of a run)
            if (finder is self._finder and same_layer(layer, current) and current.data is data
                    and current.editable):
                self._show_found(layer, found)
                self.slices_found.emit(self.slices())

        finder.returned.connect(on_found)
        self._finder = finder
        finder.start()

    def _sync_stack_options(self, layer) -> None:
        """Set pixel ratio and contrast from the layer's latest segmentation, once per run (a
        segmentation by a fine-tuned model records 1 and no inversion: the model holds them)."""
        used = layer.metadata.get(OPTIONS)
        if used is not None and used is self._seen_options:
            return
        self._seen_options = used
        if layer.metadata.get(MODEL_NAME):  # a new segmentation: start from the model that made it
            self.model_choice.select(layer.metadata[MODEL_NAME])
        ratio, invert = recorded_stack_options(layer)
        self.pixel_ratio.setValue(ratio)
        self.invert.setChecked(invert)
        self.pixel_size.set_default(layer.metadata.get(PIXEL_SIZE_NM), "as segmented")

    def _schedule_find(self, event=None) -> None:
        """Look for corrected slices shortly after painting stops."""
        self._debounce.start()

    def _on_labels_layer(self, layer) -> None:
        if self._watched is not None:
            for emitter in (self._watched.events.paint, self._watched.events.data):
                emitter.disconnect(self._schedule_find)
        self._watched = layer
        self.slice_spin.setRange(0, max(0, self._n_slices(layer) - 1))
        if layer is None:
            self.set_slices([])
            return
        for emitter in (layer.events.paint, layer.events.data):
            emitter.connect(self._schedule_find)
        if layer.metadata.get(MODEL_NAME):
            self.model_choice.select(layer.metadata[MODEL_NAME])
        self._seen_options = None
        self.find_corrected_slices()

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
                              "press 'Find corrected slices' (or add slices by hand).")
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
        except InputError as exc:
            return self._fail(f"Cannot fine-tune on '{image.name}': {exc}")
        cfg = self.config()
        self.losses = []
        self._loss_line.set_data([], [])
        self.plot.draw()
        self.result = None
        self.result_label.setText("")
        self.segment_again_button.setEnabled(False)
        self.progress.begin(cfg.steps, "step")
        self._trained_on = (labels, slices)
        self.worker = create_worker(
            finetune_job, img, np.array(labels.data), slices, base, cfg, self.device_choice.device(),
            ratio, self.invert.isChecked(), _ignore_errors=True, _start_thread=False,
        )
        self.worker.yielded.connect(self._on_step)
        self.worker.returned.connect(self._on_returned)
        self.worker.errored.connect(self._on_errored)
        # a cancelled run's late 'aborted'/'finished' must not end the run started after it
        worker = self.worker
        self.worker.aborted.connect(lambda: self._on_aborted() if worker is self.worker else None)
        self.worker.finished.connect(lambda: self._on_finished() if worker is self.worker else None)
        self._training = True
        self.run_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.message.setText(f"Fine-tuning {self.model_choice.currentText()} on slices {slices}...")
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

    def _on_step(self, p) -> None:
        if not hasattr(p, "step"):  # the FinetuneResult
            self._on_returned(p)
            return
        self.progress.advance(p.step, p.total)
        self.losses.append(p.loss)
        self._loss_line.set_data(np.arange(1, len(self.losses) + 1), self.losses)
        ax = self.plot.axes
        ax.relim()
        ax.autoscale_view()
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
        self.result_label.setText(
            f"IoU on the corrected slices: before {result.iou_before:.3f} -> after "
            f"{result.iou_after:.3f}\nNew model: {result.name} (saved in {result.path.parent})"
        )
        self.message.setText(f"Fine-tuned in {result.seconds:.0f} s. Segment again to use it.")
        self.segment_again_button.setEnabled(True)
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

    # ------------------------------------------------------------------ segment again

    def segment_again(self):
        """Re-segment the image with the new model; corrected and listed slices stay exactly."""
        image, labels = self.image_choice.layer(), self.labels_choice.layer()
        if self.result is None or image is None or labels is None:
            return self._fail("Fine-tune first, with the image and corrected labels chosen.",
                              self.resegmented)
        from ..inference import PredictOptions

        # the settings the layer was segmented with (TTA, threshold, z-smoothing, hole
        # filling); what is not recorded (None) falls to the new model's defaults, which
        # iter_finetune copied from its base model. The pixel ratio and the inversion are part
        # of the new model's spec, so it takes the stack as it is.
        used = labels.metadata.get(OPTIONS) or {}
        known = {f.name for f in dataclasses.fields(PredictOptions)} - {"pixel_ratio", "invert"}
        options = PredictOptions(**{k: v for k, v in used.items() if k in known})
        run = SegmentationRun(
            self.viewer, image, str(self.result.path), device=self.device_choice.device(),
            options=options, instances=bool(labels.metadata.get(INSTANCES, False)), target_name=labels.name,
            extra_keep=self.slices(), pixel_size_nm=self.pixel_size.pixel_size_nm(), parent=self,
        )
        run.progress.connect(self._on_slice)
        run.status.connect(self.message.setText)
        run.done.connect(self._on_resegmented)
        run.stopped.connect(self._on_resegment_stopped)
        try:
            run.start()
        except ValueError as exc:
            return self._fail(f"Cannot segment '{image.name}': {exc}", self.resegmented)
        self.segment_run = run
        self.progress.begin(self._n_slices(labels), "slice")
        self.run_button.setEnabled(False)
        self.segment_again_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        return run

    def _on_slice(self, done: int, total: int) -> None:
        self.progress.advance(done, total)

    def _on_resegmented(self, layer) -> None:
        self._idle()
        self.progress.finish()
        self.segment_again_button.setEnabled(True)
        self._debounce.stop()
        self._find_in_background()  # against the new model's output, at once
        kept = self.segment_run.kept if self.segment_run else []
        undo = self.segment_run.undo_note if self.segment_run is not None else ""
        self.message.setText(f"Segmented again with {self.result.name}; kept slices {kept} exactly.{undo}")
        self.resegmented.emit(layer)

    def _on_resegment_stopped(self, text: str) -> None:
        self._idle()
        self.progress.idle("cancelled" if text.startswith("Cancelled") else "failed")
        self.segment_again_button.setEnabled(True)
        self.message.setText(text)
        self.resegmented.emit(None)

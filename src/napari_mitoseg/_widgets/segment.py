"""Dock widget "Segment mitochondria": image layer -> "<image> mitochondria" labels layer."""

from __future__ import annotations

import napari
from napari.layers import Image
from napari.utils.notifications import show_error
from qtpy.QtCore import Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QDoubleSpinBox,
    QGridLayout,
    QHBoxLayout,
    QPushButton,
    QWidget,
)

from ._common import default_z_smooth, is_em_image, is_mask_layer, layer_array, made_for_a_stack
from ._controls import (
    DeviceChoice,
    LayerChoice,
    ModelChoice,
    compact_form,
    invert_box,
    message_label,
    no_model_message,
    scrollable,
)
from ._display import has_physical_size, show_in_nm
from ._pixel_size import PixelSizeControls
from ._progress import RunProgress
from ._segment_run import SegmentationRun
from ._uncertainty_panel import UncertaintyPanel


class SegmentWidget(QWidget):
    """Choose an image, a model, a device and options; segment slice by slice in a worker.

    The result goes to the labels layer ``"<image> mitochondria"``. Running again keeps the
    slices you painted on that layer exactly and replaces the others. ``run_finished`` fires
    with the result layer (or None when the run was cancelled or failed).
    """

    run_finished = Signal(object)

    def __init__(self, napari_viewer: napari.viewer.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.current_run: SegmentationRun | None = None
        self._watched = None  # the result layer whose later change makes a stop message stale

        form = compact_form()
        self._build_input(form)
        self._build_options(form)
        layout = scrollable(self)
        layout.addLayout(form)
        self._build_run(layout)
        layout.addStretch(1)
        self._connect()

    # ------------------------------------------------------------------ sections

    def _build_input(self, form) -> None:
        """The image, the model (with Refresh) and the device."""
        self.image_choice = LayerChoice(self.viewer, Image, prefer=is_em_image, parent=self)
        self.image_choice.setToolTip("The EM stack to segment, (Z, Y, X) or (Y, X) grey-scale")
        self.model_choice = ModelChoice(self)
        self.refresh_models_button = QPushButton("Refresh")
        self.refresh_models_button.setToolTip("List the models again (new fine-tuned ones appear)")
        self.refresh_models_button.clicked.connect(self.model_choice.refresh)
        model_row = QHBoxLayout()
        model_row.addWidget(self.model_choice, 1)
        model_row.addWidget(self.refresh_models_button)
        self.device_choice = DeviceChoice(self)
        self.model_message = message_label()
        form.addRow("Image", self.image_choice)
        form.addRow("Model", model_row)
        form.addRow(self.model_message)
        form.addRow("Device", self.device_choice)

    def _build_options(self, form) -> None:
        """Threshold, pixel size, contrast, TTA, multi-scale, z-smoothing, ortho planes and 3D objects."""
        self.threshold = QDoubleSpinBox()
        self.threshold.setRange(0.0, 0.99)
        self.threshold.setSingleStep(0.05)
        self.threshold.setDecimals(2)
        self.threshold.setSpecialValueText("model default")
        self.threshold.setValue(0.0)
        self.threshold.setToolTip("Probability above which a pixel is mitochondrion; lower finds more")
        self.tta = QCheckBox("TTA (8x slower)")
        self.tta.setToolTip("Test-time augmentation: average the predictions of 8 flipped and rotated "
                            "views; smoother edges, 8x slower")
        self.multi_scale = QCheckBox("Multi-scale (3x slower)")
        self.multi_scale.setToolTip("Average the model at its working resolution and at 1.5x it; more "
                                    "accurate outlines, about 3.2x slower")
        self.z_smooth = QCheckBox("Smooth along z")
        self.z_smooth.setToolTip("Average each slice's probabilities with its neighbours' before "
                                 "thresholding; set to the model's recommendation when you pick it")
        self.pixel_size = PixelSizeControls(self)
        self.pixel_ratio = self.pixel_size.ratio
        self.invert = invert_box(self)
        self.guess_contrast = QCheckBox("Guess reversed contrast")
        self.guess_contrast.setChecked(True)
        self.guess_contrast.setToolTip("When Inverted contrast is not ticked, invert a stack the model is clearly "
                                       "surer of inverted (bright membranes on dark), and say so; about a second. "
                                       "Shipped models only: a fine-tuned model is set up for its stack")
        self.ortho = QCheckBox("Ortho planes (3x slower)")
        self.ortho.setToolTip("Average the model over the XY, XZ and YZ planes; for near-isotropic stacks "
                              "(FIB-SEM). Ticked when the image's voxel size says so")
        self.instances = QCheckBox("3D objects")
        self.instances.setToolTip("One id per mitochondrion: split the mask into 3D-connected objects, "
                                  "each with its own id")
        form.addRow("Threshold", self.threshold)
        form.addRow(self.pixel_size)
        boxes = QGridLayout()
        boxes.setContentsMargins(0, 0, 0, 0)
        boxes.setVerticalSpacing(2)
        for i, box in enumerate((self.invert, self.guess_contrast, self.tta, self.z_smooth, self.multi_scale,
                                 self.ortho, self.instances)):
            boxes.addWidget(box, i // 2, i % 2)
        form.addRow(boxes)

    def _build_run(self, layout) -> None:
        """Segment / Cancel, the progress bar and the message line."""
        self.run_button = QPushButton("Segment")
        self.run_button.clicked.connect(self.start)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.cancel_button)
        self.progress = RunProgress("slice")
        self.message = message_label()
        layout.addLayout(buttons)
        layout.addWidget(self.progress)
        layout.addWidget(self.message)
        self.uncertainty = UncertaintyPanel(self.viewer, self)
        layout.addWidget(self.uncertainty)

    def _connect(self) -> None:
        if not self.device_choice.is_ready:
            self.message.setText("Loading PyTorch in the background...")
            self.device_choice.ready.connect(self._on_ready)
        self.model_choice.availability_changed.connect(self._on_models)
        self.model_choice.currentIndexChanged.connect(self._on_model_chosen)
        self.image_choice.layer_changed.connect(self.pixel_size.set_layer)
        self.image_choice.layer_changed.connect(self._on_image)
        self.image_choice.layer_changed.connect(self._show_scale_bar)
        self._show_scale_bar(self.image_choice.layer())
        self.pixel_size.set_layer(self.image_choice.layer())
        self._on_image(self.image_choice.layer())
        self._on_models(self.model_choice.source() is not None)
        self._on_model_chosen()

    def _on_image(self, layer) -> None:
        """Tick Ortho planes for a stack whose recorded voxel size is near-isotropic."""
        from ..ortho import choose_ortho

        voxel = layer.metadata.get("voxel_size_nm") if layer is not None else None
        z = layer.data.shape[0] if layer is not None and layer.ndim == 3 else 1
        self.ortho.setChecked(choose_ortho(None, voxel if voxel is not None and len(voxel) == 3 else None, z)[0])

    @property
    def ready(self) -> bool:
        """Whether PyTorch is loaded (it loads in a worker when the widget opens)."""
        return self.device_choice.is_ready

    def _on_ready(self) -> None:
        if self.message.text().startswith("Loading PyTorch"):
            self.message.setText("")

    def _show_scale_bar(self, layer) -> None:
        """A stack whose scale is a physical size gets nm units and the scale bar."""
        if has_physical_size(layer):
            show_in_nm(self.viewer, [layer])

    def _on_model_chosen(self, index: int = -1) -> None:
        source = self.model_choice.source()
        self.pixel_size.set_model(source)
        self.z_smooth.setChecked(default_z_smooth(source))
        if made_for_a_stack(source):  # the model holds that stack's pixel ratio and contrast
            self.pixel_ratio.setValue(1.0)
            self.invert.setChecked(False)

    def _on_models(self, available: bool) -> None:
        self.model_message.setText("" if available else no_model_message())
        self.model_message.setVisible(not available)
        self.run_button.setEnabled(available and not (self.current_run and self.current_run.running))

    # ------------------------------------------------------------------ actions

    def options(self):
        """The ``PredictOptions`` the controls say (raises ``InputError`` when the pixel size
        does not fit the model)."""
        from ..inference import MULTI_SCALE, PredictOptions
        from ..neighbours import known_z_step

        thr = self.threshold.value()
        layer = self.image_choice.layer()
        voxel = layer.metadata.get("voxel_size_nm") if layer is not None else None
        return PredictOptions(threshold=thr if thr > 0 else None, tta=self.tta.isChecked(),
                              scales=MULTI_SCALE if self.multi_scale.isChecked() else (1.0,),
                              z_smooth=self.z_smooth.isChecked(),
                              pixel_ratio=self.pixel_size.pixel_ratio(), invert=self.invert.isChecked(),
                              ortho=self.ortho.isChecked(), z_step=known_z_step(voxel))

    def start(self) -> SegmentationRun | None:
        """Start segmenting the chosen image with the chosen model (returns the run)."""
        image = self.image_choice.layer()
        source = self.model_choice.source()
        if image is None:
            return self._fail("Open an image first (File > Open, or File > Open Sample).")
        if source is None:
            return self._fail(no_model_message())
        if is_mask_layer(image):
            return self._fail(f"'{image.name}' looks like a mask (only a few values, in flat patches), "
                              "not an EM image: choose the EM stack as Image.")
        from ..inference import InputError

        try:
            options = self.options()
        except InputError as exc:
            return self._fail(f"Cannot segment '{image.name}': {exc}")
        run = SegmentationRun(
            self.viewer, image, source, device=self.device_choice.device(), options=options,
            instances=self.instances.isChecked(), pixel_size_nm=self.pixel_size.pixel_size_nm(),
            recorder=self.uncertainty.recorder(layer_array(image).shape),
            guess_contrast=None if self.guess_contrast.isChecked() else False, parent=self,
        )
        run.progress.connect(self._on_progress)
        run.status.connect(self.message.setText)
        run.done.connect(self._on_done)
        run.stopped.connect(self._on_stopped)
        try:
            run.start()
        except ValueError as exc:
            return self._fail(f"Cannot segment '{image.name}': {exc}")
        self._unwatch()
        self.current_run = run
        n = image.data.shape[0] if image.ndim == 3 else 1
        self.progress.begin(n)
        self.run_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.message.setText("Starting...")
        return run

    def cancel(self) -> None:
        """Stop the running segmentation before its next slice; the layers stay as they were."""
        if self.current_run is not None and self.current_run.running:
            self.message.setText("Cancelling...")
            self.current_run.cancel()

    # ------------------------------------------------------------------ handlers

    def _fail(self, text: str) -> None:
        self.message.setText(text)
        show_error(text)
        self.run_finished.emit(None)
        return None

    def _on_progress(self, done: int, total: int) -> None:
        self.progress.advance(done, total)
        left = self.progress.time_left()
        if left and done < total:
            self.message.setText(f"Segmenting: slice {done} of {total}, about {left} left.")

    def _idle(self) -> None:
        self.run_button.setEnabled(self.model_choice.source() is not None)
        self.cancel_button.setEnabled(False)

    def _on_done(self, layer) -> None:
        self._idle()
        self.progress.finish()
        kept = self.current_run.kept if self.current_run else []
        note = f" Kept your painted slices {kept} exactly." if kept else ""
        if self.current_run is not None:
            note += self.current_run.undo_note
            note += "".join(" " + n for n in self.current_run.notes)
            if getattr(self.current_run.options, "invert", False):
                self.invert.setChecked(True)  # as the run took it (guessed, or ticked)
            if self.current_run.recorder is not None:
                self.uncertainty.show_result(self.current_run.image_layer, layer, self.current_run.recorder)
        self.message.setText(f"Done: '{layer.name}' ({layer.metadata.get('mitoseg_model')}).{note}")
        self.run_finished.emit(layer)

    def _on_stopped(self, text: str) -> None:
        self._idle()
        self.progress.idle("cancelled" if text.startswith("Cancelled") else "failed")
        self.message.setText(text)
        # the message is about the layer as it is now; a later run elsewhere (Fine-tune's
        # "Segment again", another Segment) makes it stale
        run = self.current_run
        layer = run.layer if run is not None else None
        if layer is not None and layer in self.viewer.layers:
            self._watched = layer
            layer.events.data.connect(self._on_result_changed)
        self.run_finished.emit(None)

    def _unwatch(self) -> None:
        if self._watched is not None:
            self._watched.events.data.disconnect(self._on_result_changed)
            self._watched = None

    def _on_result_changed(self, event=None) -> None:
        layer = self._watched
        self._unwatch()
        if self.current_run is not None and self.current_run.running:
            return
        self.progress.idle()
        self.message.setText(f"'{layer.name}' has changed since the run that stopped here." if layer
                             else "")

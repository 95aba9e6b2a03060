"""The training slices of the Fine-tune widget: the list you edit, and the corrected slices found
by comparing a result layer with the model output recorded when it was segmented.

:class:`SliceEditor` is the list with its Add / Add current / Remove row; :class:`CorrectionFinder`
is a mixin of :class:`finetune.FinetuneWidget`, which provides ``viewer``, ``labels_choice``,
``model_choice``, ``pixel_size``, ``pixel_ratio``, ``invert`` and the ``slices_found`` signal.
"""

from __future__ import annotations

from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import (
    QAbstractItemView,
    QHBoxLayout,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ._common import (
    MODEL_NAME,
    MODEL_OUTPUT,
    OPTIONS,
    PIXEL_SIZE_NM,
    PREVIOUS_OUTPUT,
    model_output,
    painted_in,
    painted_slices,
    recorded_stack_options,
    same_layer,
)
from ._controls import message_label


def n_slices(layer) -> int:
    """The number of slices of a (Z, Y, X) layer (1 for a 2D one, 0 for None)."""
    if layer is None:
        return 0
    return layer.data.shape[0] if layer.ndim == 3 else 1


class SliceEditor(QWidget):
    """The sorted list of training slices, a slice box and Add / Add current / Remove buttons,
    and a note below. ``layer`` is a callable giving the labels layer the slices belong to."""

    def __init__(self, viewer, layer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._viewer, self._layer = viewer, layer
        self.slice_list = QListWidget()
        self.slice_list.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.slice_list.setMaximumHeight(60)
        self.note = message_label()
        self.spin = QSpinBox()
        self.spin.setRange(0, 0)
        self.add_button = QPushButton("Add")
        self.add_button.setToolTip("Add this slice (e.g. one the model got right) to the training set")
        self.add_button.clicked.connect(lambda: self.add_slice(self.spin.value()))
        self.add_current_button = QPushButton("Add current")
        self.add_current_button.setToolTip("Add the slice shown in the viewer")
        self.add_current_button.clicked.connect(self.add_current_slice)
        self.remove_button = QPushButton("Remove")
        self.remove_button.setToolTip("Remove the selected slices from the list")
        self.remove_button.clicked.connect(self.remove_selected)
        row = QHBoxLayout()
        for w in (self.spin, self.add_button, self.add_current_button, self.remove_button):
            row.addWidget(w)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.setSpacing(3)
        lay.addWidget(self.slice_list)
        lay.addLayout(row)
        lay.addWidget(self.note)

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

    def set_layer(self, layer) -> None:
        """The slice box follows the slices of ``layer``."""
        self.spin.setRange(0, max(0, n_slices(layer) - 1))

    def add_slice(self, z: int) -> None:
        layer = self._layer()
        if layer is None:
            self.note.setText("Choose the labels layer you corrected first (under 'Corrected labels'); "
                              "slices are added from it.")
            return
        n = n_slices(layer)
        if not 0 <= z < n:
            self.note.setText(f"Slice {z} is outside '{layer.name}' (slices 0 to {n - 1}).")
            return
        self.set_slices([*self.slices(), z])

    def add_current_slice(self) -> None:
        layer = self._layer()
        if layer is None or layer.ndim < 3:
            self.add_slice(0)
            return
        axis = self._viewer.dims.ndim - layer.ndim
        world = self._viewer.dims.point[axis]
        self.add_slice(int(round((world - layer.translate[0]) / layer.scale[0])))

    def remove_selected(self) -> None:
        for item in self.slice_list.selectedItems():
            self.slice_list.takeItem(self.slice_list.row(item))


class CorrectionFinder:
    """Finds the corrected slices of the chosen labels layer: at once (the button), or in a
    worker shortly after painting stops and after a segmentation lands."""

    def _init_finder(self) -> None:
        self._watched = None
        self._seen_options = None  # the layer's recorded options last copied to the controls
        self._debounce = QTimer(self)
        self._debounce.setSingleShot(True)
        self._debounce.setInterval(400)
        self._debounce.timeout.connect(self._find_in_background)
        self._finder = None  # the worker looking for corrected slices

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
            if finder is not self._finder:
                return
            try:
                current = self.labels_choice.layer()
            except RuntimeError:  # the dock was closed while the worker compared
                return
            # only an answer about the layer as it still is counts (not a preview of a run)
            if same_layer(layer, current) and current.data is data and current.editable:
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
        self.slice_editor.set_layer(layer)
        if layer is None:
            self.set_slices([])
            return
        for emitter in (layer.events.paint, layer.events.data):
            emitter.connect(self._schedule_find)
        if layer.metadata.get(MODEL_NAME):
            self.model_choice.select(layer.metadata[MODEL_NAME])
        self._seen_options = None
        self.find_corrected_slices()

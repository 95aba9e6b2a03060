"""Dock widget "Mitochondria 3D & measurements": one object per mitochondrion at its true voxel
size in 3D, their morphology in a sortable table with a histogram, meshes, and object-level
proofreading (delete, merge, split), each one undo step of the labels layer.

Splitting, measuring and editing run in workers with progress; the main thread only puts
layers and rows in place. The voxel size comes from the layer (or a layer of the same shape),
is said when unknown, and a typed one rescales the layers and the table.
"""

from __future__ import annotations

import time

import napari
import numpy as np
from napari.layers import Labels
from napari.utils.notifications import show_error
from qtpy.QtCore import QTimer, Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QFormLayout,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSpinBox,
    QWidget,
)

from ._common import layer_array, same_layer, unwrapped
from ._controls import LayerChoice, message_label, scrollable
from ._display import View3D, show_in_nm
from ._measure_table import Histogram, ObjectTable, VoxelSizeBox
from ._progress import RunProgress
from ._view3d_edits import ObjectEdits
from ._view3d_selection import ObjectSelection
from ._voxel_size import VOXEL_RANGE_NM, layer_voxel_size, voxel_size_for

__all__ = ["View3DWidget", "layer_voxel_size", "measure_job"]

#: progress is reported at most this often (seconds) while measuring
PROGRESS_INTERVAL_S = 0.1


def measure_job(labels, min_size: int, voxel_size, split: bool = True):
    """Worker: yields status strings and ``(done, total)`` objects measured; returns
    ``(instances or None, rows, snapshot)``. A binary mask is split into 3D-connected objects
    (int32, shaped like ``labels``) when ``split``; labels holding ids are measured as they are
    (None). ``snapshot`` is a copy of what was measured."""
    from .. import morphology
    from ..postprocess import instances

    lab = np.asarray(labels)
    lab3 = lab if lab.ndim == 3 else lab[None]
    inst = None
    if split and morphology.is_mask(lab3):
        yield "Separating mitochondria in 3D..."
        inst = instances(lab3, min_size=min_size)
    target = inst if inst is not None else lab3
    total = int(inst.max()) if inst is not None else int(np.count_nonzero(np.unique(target)))
    yield f"Measuring {total} objects..."
    rows, shown = [], 0.0
    for m, _, _ in morphology.iter_objects(target, voxel_size):
        rows.append(m)
        now = time.perf_counter()
        if now - shown >= PROGRESS_INTERVAL_S or len(rows) == total:
            shown = now
            yield len(rows), total
    snapshot = np.array(target, copy=True).reshape(lab.shape)
    return (inst.reshape(lab.shape) if inst is not None else None), rows, snapshot


def _is_source(layer) -> bool:
    return layer.name.endswith("mitochondria")


class View3DWidget(ObjectEdits, ObjectSelection, QWidget):
    """Split a mask into 3D-connected mitochondria (layer "<name> instances", one colour each),
    show them in 3D at the voxel size, list their morphology and let objects be corrected.

    A labels layer that already holds one id per object is measured and corrected in place.
    ``measured`` fires with the rows (``MitoMeasure``) after a run, or None on error;
    ``table_updated`` after the table follows an edit, an undo or a typed voxel size.
    """

    measured = Signal(object)
    table_updated = Signal()

    def __init__(self, napari_viewer: napari.viewer.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.rows: list = []
        self.worker = None
        self.instances_layer = None
        self._source = None
        self._snapshot: np.ndarray | None = None
        self._voxel: tuple[float, float, float] = (1.0, 1.0, 1.0)
        self._typed: dict[int, tuple] = {}  # id of the (unwrapped) layer -> voxel size typed for it
        self._busy = False
        self.view = View3D(self.viewer)
        self._sync_timer = self._timer(250, self.sync_table)
        self._rescale_timer = self._timer(400, self._rescale)

        layout = scrollable(self)
        self._build_measure(layout)
        self._build_table(layout)
        self._build_files(layout)
        self._enable()
        self._on_layer_changed(self.labels_choice.layer())
        self.voxel.changed.connect(self._on_voxel_changed)
        self.viewer.layers.events.removed.connect(self._on_layer_removed)

    def _timer(self, ms: int, slot) -> QTimer:
        timer = QTimer(self)
        timer.setSingleShot(True)
        timer.setInterval(ms)
        timer.timeout.connect(slot)
        return timer

    # ------------------------------------------------------------------ sections

    def _build_measure(self, layout) -> None:
        """The labels layer, its voxel size, the minimum object size, the run button, progress."""
        self.labels_choice = LayerChoice(self.viewer, Labels, prefer=_is_source, parent=self)
        self.labels_choice.layer_changed.connect(self._on_layer_changed)
        self.voxel = VoxelSizeBox()
        self.voxel_note = message_label()
        self.min_size = QSpinBox()
        self.min_size.setRange(0, 10_000_000)
        self.min_size.setValue(64)
        self.min_size.setSuffix(" voxels")
        self.min_size.setToolTip("When splitting a mask: objects smaller than this are dropped as noise")
        self.run_button = QPushButton("Separate mitochondria && measure")
        self.run_button.clicked.connect(self.start)
        self.progress = RunProgress("object")
        form = QFormLayout()
        form.addRow("Labels", self.labels_choice)
        form.addRow("Voxel size (Z, Y, X)", self.voxel)
        form.addRow(self.voxel_note)
        form.addRow("Minimum size", self.min_size)
        layout.addLayout(form)
        layout.addWidget(self.run_button)
        layout.addWidget(self.progress)

    def _build_table(self, layout) -> None:
        """The summary, the table of objects, "show alone", the edit buttons, the histogram."""
        self.summary = QLabel("")
        self.summary.setWordWrap(True)
        self.table = ObjectTable()
        self.table.ids_selected.connect(self._on_rows_selected)
        self.histogram = Histogram()
        self.alone = QCheckBox("Show the selected object alone")
        self.alone.toggled.connect(self._on_alone)
        self.delete_button = QPushButton("Delete")
        self.merge_button = QPushButton("Merge")
        self.split_button = QPushButton("Split")
        self.delete_button.setToolTip("Remove the selected objects (one undo step)")
        self.merge_button.setToolTip("Join the selected objects (two or more) under the smallest id")
        self.split_button.setToolTip("Split the selected object in two: seeded watershed at its neck, "
                                     "or a cut across its long axis")
        self.delete_button.clicked.connect(self.delete_selected)
        self.merge_button.clicked.connect(self.merge_selected)
        self.split_button.clicked.connect(self.split_selected)
        edit = QGridLayout()
        for i, b in enumerate((self.delete_button, self.merge_button, self.split_button)):
            edit.addWidget(b, 0, i)
        layout.addWidget(self.summary)
        layout.addWidget(self.table, 1)
        layout.addWidget(self.alone)
        layout.addLayout(edit)
        layout.addWidget(self.histogram)

    def _build_files(self, layout) -> None:
        """Save CSV, export meshes, and the message line."""
        self.save_button = QPushButton("Save CSV...")
        self.save_button.clicked.connect(self._ask_save_csv)
        self.mesh_button = QPushButton("Export meshes...")
        self.mesh_button.clicked.connect(self._ask_export_meshes)
        self.message = message_label()
        files = QHBoxLayout()
        files.addWidget(self.save_button)
        files.addWidget(self.mesh_button)
        layout.addLayout(files)
        layout.addWidget(self.message)

    # ------------------------------------------------------------------ voxel size

    def _on_layer_changed(self, layer) -> None:
        """The voxel size of the chosen layer: typed for it, else its own or a layer's of the
        same shape (said so), else unknown."""
        if layer is None:
            self.voxel_note.setText("")
            return
        typed = self._typed.get(id(unwrapped(layer)))
        if typed is not None:
            self.voxel.set_value(typed, typed=True)
            self.voxel_note.setText("Typed.")
            return
        vox, note = voxel_size_for(layer, list(self.viewer.layers))
        self.voxel.set_value(vox, typed=False)
        self.voxel_note.setText(note)

    def _on_voxel_changed(self) -> None:
        if not self.voxel.typed:
            return
        layer = self.labels_choice.layer()
        if layer is not None:
            self._typed[id(unwrapped(layer))] = self.voxel.value()
            self.voxel_note.setText("Typed.")
        if self.instances_layer is not None and self.voxel.known() and (
                same_layer(layer, self._source) or same_layer(layer, self.instances_layer)):
            self._rescale_timer.start()

    def voxel_size(self) -> tuple[float, float, float]:
        """The voxel size in use (nm, Z Y X): typed, else from the layer (0 where unknown)."""
        return self.voxel.value()

    # ------------------------------------------------------------------ measuring

    def start(self):
        """Split (if a mask) and measure the chosen labels layer in a worker."""
        layer = self.labels_choice.layer()
        if layer is None:
            return self._fail("Choose a labels layer (a segmentation) first.", run=True)
        if layer.ndim not in (2, 3):
            return self._fail(f"'{layer.name}' has {layer.ndim} dimensions; expected (Z, Y, X).", run=True)
        if not self.voxel.known():
            lo, hi = VOXEL_RANGE_NM
            return self._fail(f"Type the voxel size of '{layer.name}' (Z, Y, X, {lo:g} to {hi:g} nm) "
                              "first: every volume and surface depends on it.", run=True)
        self._voxel = self.voxel_size()
        self._source = layer
        self.message.setText(f"Measuring the mitochondria of '{layer.name}'...")
        return self._measure(layer_array(layer), split=True, done=self._on_returned)

    def _measure(self, data, split: bool, done):
        from napari.qt.threading import create_worker

        self._set_busy(True)
        self.progress.begin(1, "object")
        self.worker = create_worker(measure_job, data, self.min_size.value(), self._voxel, split,
                                    _ignore_errors=True, _start_thread=False)
        self.worker.yielded.connect(self._on_progress)
        self.worker.returned.connect(done)
        self.worker.errored.connect(lambda exc: self._fail(f"Could not measure objects: {exc}", run=True))
        self.worker.finished.connect(lambda: self._set_busy(False))
        self.worker.start()
        return self.worker

    def _on_progress(self, item) -> None:
        if isinstance(item, str):
            self.message.setText(item)
        else:
            self.progress.advance(*item)

    def _on_returned(self, result) -> None:
        self._set_busy(False)  # (the worker's 'finished' comes after this)
        inst, rows, snapshot = result
        src = self._source
        if inst is None:  # the layer holds ids already: it is the instances layer
            layer = src
        else:
            name = f"{src.name} instances"
            if name in self.viewer.layers and isinstance(self.viewer.layers[name], Labels):
                layer = self.viewer.layers[name]
                layer.data = inst
            else:
                layer = self.viewer.add_labels(inst, name=name, scale=src.scale, translate=src.translate,
                                               units=src.units)
        self._set_scale(src, layer)
        self._attach(layer)
        self._snapshot = snapshot
        self.view.show([layer])
        self.rows = rows
        self.progress.finish(f"{len(rows)} objects measured")
        self._show_rows()
        self.message.setText(f"{len(rows)} mitochondria in '{layer.name}'. Click a row (or an object "
                             "in the viewer) to select it.")
        self.measured.emit(rows)

    def _rescale(self) -> None:
        """A typed voxel size after measuring: rescale the layers, fit the view, re-measure."""
        layer = self.instances_layer
        if layer is None or self._busy:
            return
        self._voxel = self.voxel_size()
        self._set_scale(self._source if self._source is not None else layer, layer)
        self.view.reset()
        self._measure(layer.data, split=False, done=self._on_remeasured)

    def _on_remeasured(self, result) -> None:
        self._set_busy(False)
        _, self.rows, self._snapshot = result
        self.progress.finish(f"{len(self.rows)} objects measured")
        self._show_rows()
        self.message.setText(f"Measured again at {self._voxel[0]:g} x {self._voxel[1]:g} x "
                             f"{self._voxel[2]:g} nm.")
        self.table_updated.emit()

    def _set_scale(self, src, layer) -> None:
        """Give the layers the voxel size in nm, so the 3D view has the stack's true proportions;
        other layers aligned with the source (same shape and scale) follow."""
        vox = self._voxel
        scale = vox if layer.ndim == 3 else vox[1:]
        old = tuple(src.scale)
        # by name: a plugin's viewer hands out a new proxy object for a layer at each access
        mine = {layer.name, src.name}
        moved = []
        for other in self.viewer.layers:
            if other.name in mine or (
                other.ndim == src.ndim and tuple(other.scale) == old
                and tuple(np.shape(layer_array(other))) == tuple(np.shape(layer_array(src)))
            ):
                other.scale = scale
                moved.append(other)
        layer.translate = src.translate
        show_in_nm(self.viewer, moved)

    # ------------------------------------------------------------------ the measured layer

    def _attach(self, layer) -> None:
        if same_layer(self.instances_layer, layer):
            return
        if self.instances_layer is not None:
            self._detach(self.instances_layer)
        self.instances_layer = layer
        for ev in (layer.events.paint, layer.events.set_data, layer.events.data):
            ev.connect(self._schedule_sync)
        layer.events.selected_label.connect(self._on_label_picked)
        layer.mouse_drag_callbacks.append(self._on_click)
        self._enable()

    def _detach(self, layer) -> None:
        for ev in (layer.events.paint, layer.events.set_data, layer.events.data):
            ev.disconnect(self._schedule_sync)
        layer.events.selected_label.disconnect(self._on_label_picked)
        if self._on_click in layer.mouse_drag_callbacks:
            layer.mouse_drag_callbacks.remove(self._on_click)

    def _on_layer_removed(self, event) -> None:
        """The measured layer was deleted: forget it and its table, show the layers hidden."""
        if event.value is None or not same_layer(event.value, self.instances_layer):
            return
        self._detach(self.instances_layer)
        self.instances_layer, self._snapshot, self.rows = None, None, []
        self._sync_timer.stop()
        self.table.set_rows([])
        self.histogram.set_rows([])
        self.summary.setText("")
        self.progress.idle()
        self.view.restore()
        self.message.setText(f"'{event.value.name}' was removed; measure again for a new table.")
        self._enable()

    def _show_rows(self) -> None:
        from ..morphology import summarize

        self.table.set_rows(self.rows)
        self.histogram.set_rows(self.rows, self.table.selected_ids())
        layer = self.instances_layer
        if layer is not None:
            s = summarize(self.rows, np.shape(layer.data), self._voxel)
            self.summary.setText(
                f"{s.objects} objects ({s.touching_border} touch the border) · volume fraction "
                f"{s.volume_fraction:.3%} · {s.density_per_um3:.3g} per µm³ · volume mean "
                f"{s.mean_volume_um3:.3g}, median {s.median_volume_um3:.3g} µm³")
        self._enable()

    def _set_busy(self, busy: bool, text: str | None = None) -> None:
        """While a worker measures or edits: the buttons are off (and a busy bar shows ``text``)."""
        self._busy = busy
        if busy and text:
            self.progress.setRange(0, 0)
            self.progress.setFormat(text)
        elif not busy and self.progress.maximum() == 0:
            self.progress.idle()
        self._enable()

    def _enable(self) -> None:
        has = self.instances_layer is not None and bool(self.rows)
        free = has and not self._busy
        n = len(self.table.selected_ids())
        self.run_button.setEnabled(not self._busy)
        self.table.setEnabled(has)
        self.alone.setEnabled(has)
        self.save_button.setEnabled(free)
        self.mesh_button.setEnabled(free)
        self.delete_button.setEnabled(free and n >= 1)
        self.merge_button.setEnabled(free and n >= 2)
        self.split_button.setEnabled(free and n == 1)

    def _fail(self, text: str, run: bool = False):
        """Show ``text``; ``run``: the measuring run failed (``measured`` fires with None)."""
        self.message.setText(text)
        show_error(text)
        if run:
            self.progress.idle("failed")
            self.measured.emit(None)
        return None

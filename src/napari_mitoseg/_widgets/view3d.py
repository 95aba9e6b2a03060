"""Dock widget "Mitochondria 3D & measurements": one object per mitochondrion at its true voxel
size in 3D, their morphology in a sortable table with a histogram, meshes, and object-level
proofreading (delete, merge, split), each one undo step of the labels layer."""

from __future__ import annotations

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

from ._common import layer_array
from ._controls import LayerChoice, message_label, scrollable
from ._measure_table import Histogram, ObjectTable, VoxelSizeBox
from ._view3d_edits import ObjectEdits

#: layer.metadata key the file reader fills with the voxel size (nm, Z Y X)
VOXEL_SIZE_KEY = "voxel_size_nm"


def instances_job(labels, min_size: int, voxel_size: tuple[float, float, float]):
    """Worker: ``(instances or None, rows)``. A binary mask is split into 3D-connected objects
    (int32, shaped like ``labels``); labels holding ids are measured as they are (None)."""
    from ..morphology import is_mask, measure
    from ..postprocess import instances

    lab = np.asarray(labels)
    lab3 = lab if lab.ndim == 3 else lab[None]
    inst = instances(lab3, min_size=min_size) if is_mask(lab3) else None
    rows = measure(inst if inst is not None else lab3, voxel_size)
    return (inst.reshape(lab.shape) if inst is not None else None), rows


def layer_voxel_size(layer) -> tuple[float, float, float] | None:
    """(Z, Y, X) nm of a layer: its ``metadata["voxel_size_nm"]``, else its scale when that is
    not all ones (taken as nm); None when unknown."""
    meta = layer.metadata.get(VOXEL_SIZE_KEY) if layer is not None else None
    if meta is not None and len(meta) >= 2:
        vals = tuple(float(v) for v in meta)
    elif layer is not None and not np.allclose(layer.scale, 1.0):
        vals = tuple(float(s) for s in layer.scale)
    else:
        return None
    vals = vals[-3:] if len(vals) >= 3 else (vals[0], *vals)
    return vals  # type: ignore[return-value]


def _is_source(layer) -> bool:
    return layer.name.endswith("mitochondria")


class View3DWidget(ObjectEdits, QWidget):
    """Split a mask into 3D-connected mitochondria (layer "<name> instances", one colour each),
    show them in 3D at the voxel size, list their morphology and let objects be corrected.

    A labels layer that already holds one id per object is measured and corrected in place.
    ``measured`` fires with the rows (``MitoMeasure``) after a run, or None on error;
    ``table_updated`` after the table follows an edit or an undo.
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
        self._selecting = False
        self._sync_timer = QTimer(self)
        self._sync_timer.setSingleShot(True)
        self._sync_timer.setInterval(250)
        self._sync_timer.timeout.connect(self.sync_table)

        layout = scrollable(self)
        self._build_measure(layout)
        self._build_table(layout)
        self._build_files(layout)
        self._enable()
        self._on_layer_changed(self.labels_choice.layer())
        self.viewer.layers.events.removed.connect(self._on_layer_removed)

    # ------------------------------------------------------------------ sections

    def _build_measure(self, layout) -> None:
        """The labels layer, its voxel size, the minimum object size and the run button."""
        self.labels_choice = LayerChoice(self.viewer, Labels, prefer=_is_source, parent=self)
        self.labels_choice.layer_changed.connect(self._on_layer_changed)
        self.voxel = VoxelSizeBox()
        self.min_size = QSpinBox()
        self.min_size.setRange(0, 10_000_000)
        self.min_size.setValue(64)
        self.min_size.setSuffix(" voxels")
        self.min_size.setToolTip("When splitting a mask: objects smaller than this are dropped as noise")
        self.run_button = QPushButton("Separate mitochondria && measure")
        self.run_button.clicked.connect(self.start)
        form = QFormLayout()
        form.addRow("Labels", self.labels_choice)
        form.addRow("Voxel size (Z, Y, X)", self.voxel)
        form.addRow("Minimum size", self.min_size)
        layout.addLayout(form)
        layout.addWidget(self.run_button)

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

    # ------------------------------------------------------------------ measuring

    def _on_layer_changed(self, layer) -> None:
        """Take the voxel size from the chosen layer, unless the user typed one."""
        vox = layer_voxel_size(layer)
        if vox is not None and not self.voxel.typed:
            self.voxel.set_value(vox, typed=False)

    def voxel_size(self) -> tuple[float, float, float]:
        """The voxel size in use (nm, Z Y X): typed, else from the layer."""
        return self.voxel.value()

    def start(self):
        """Split (if a mask) and measure the chosen labels layer in a worker."""
        from napari.qt.threading import create_worker

        layer = self.labels_choice.layer()
        if layer is None:
            return self._fail("Choose a labels layer (a segmentation) first.", run=True)
        if layer.ndim not in (2, 3):
            return self._fail(f"'{layer.name}' has {layer.ndim} dimensions; expected (Z, Y, X).", run=True)
        self._voxel = self.voxel_size()
        self._source = layer
        self.run_button.setEnabled(False)
        self.message.setText(f"Measuring the mitochondria of '{layer.name}'...")
        self.worker = create_worker(instances_job, np.array(layer_array(layer)), self.min_size.value(),
                                    self._voxel, _ignore_errors=True, _start_thread=False)
        self.worker.returned.connect(self._on_returned)
        self.worker.errored.connect(lambda exc: self._fail(f"Could not measure objects: {exc}", run=True))
        self.worker.finished.connect(lambda: self.run_button.setEnabled(True))
        self.worker.start()
        return self.worker

    def _on_returned(self, result) -> None:
        inst, rows = result
        src = self._source
        if inst is None:  # the layer holds ids already: it is the instances layer
            layer = src
        else:
            name = f"{src.name} instances"
            if name in self.viewer.layers and isinstance(self.viewer.layers[name], Labels):
                layer = self.viewer.layers[name]
                layer.data = inst
            else:
                layer = self.viewer.add_labels(inst, name=name)
            src.visible = False
        self._set_scale(src, layer)
        self._attach(layer)
        self._snapshot = np.array(layer.data, copy=True)
        self.viewer.dims.ndisplay = 3
        self.rows = rows
        self._show_rows()
        self.message.setText(f"{len(rows)} mitochondria in '{layer.name}'. Click a row (or an object "
                             "in the viewer) to select it.")
        self.measured.emit(rows)

    def _set_scale(self, src, layer) -> None:
        """Give the layers the voxel size in nm, so the 3D view has the stack's true proportions;
        other layers aligned with the source (same shape and scale) follow."""
        vox = self._voxel
        scale = vox if layer.ndim == 3 else vox[1:]
        old = tuple(src.scale)
        # by name: a plugin's viewer hands out a new proxy object for a layer at each access
        mine = {layer.name, src.name}
        for other in self.viewer.layers:
            if other.name in mine or (
                other.ndim == src.ndim and tuple(other.scale) == old
                and tuple(np.shape(layer_array(other))) == tuple(np.shape(layer_array(src)))
            ):
                other.scale = scale
        layer.translate = src.translate

    def _attach(self, layer) -> None:
        if self.instances_layer is layer:
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
        """The measured layer was deleted: forget it and its table."""
        if event.value is not self.instances_layer or event.value is None:
            return
        self._detach(event.value)
        self.instances_layer, self._snapshot, self.rows = None, None, []
        self.table.set_rows([])
        self.histogram.set_rows([])
        self.summary.setText("")
        self._enable()

    def _schedule_sync(self, event=None) -> None:
        self._sync_timer.start()

    def sync_table(self) -> bool:
        """Re-measure the objects that changed since the last measurement (an edit, painting,
        undo or redo); returns whether anything changed."""
        from ..morphology import measure

        layer = self.instances_layer
        if layer is None or self._snapshot is None or layer not in self.viewer.layers:
            return False
        data = np.asarray(layer.data)
        if data.shape != self._snapshot.shape:
            self._snapshot = None
            self.message.setText("The labels changed shape; measure again.")
            return False
        changed = self._snapshot != data
        if not changed.any():
            return False
        ids = (set(np.unique(self._snapshot[changed]).tolist()) | set(np.unique(data[changed]).tolist())) - {0}
        self._snapshot[changed] = data[changed]
        fresh = {r.id: r for r in measure(data, self._voxel, ids=ids)} if ids else {}
        self.rows = sorted([r for r in self.rows if r.id not in ids] + list(fresh.values()), key=lambda r: r.id)
        self._show_rows()
        self.table_updated.emit()
        return True

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

    def _enable(self) -> None:
        has = self.instances_layer is not None and bool(self.rows)
        n = len(self.table.selected_ids())
        self.save_button.setEnabled(has)
        self.mesh_button.setEnabled(has)
        self.delete_button.setEnabled(has and n >= 1)
        self.merge_button.setEnabled(has and n >= 2)
        self.split_button.setEnabled(has and n == 1)

    # ------------------------------------------------------------------ selection

    def _on_rows_selected(self, ids: list) -> None:
        self._enable()
        self.histogram.set_rows(self.rows, ids)
        layer = self.instances_layer
        if not ids or layer is None or self._selecting:
            return
        obj_id = ids[0]
        self._selecting = True
        try:
            layer.selected_label = obj_id
        finally:
            self._selecting = False
        row = next((r for r in self.rows if r.id == obj_id), None)
        if row is not None and layer.ndim == 3:
            axis = self.viewer.dims.ndim - layer.ndim
            z = row.centroid_z_um * 1000 / self._voxel[0]
            self.viewer.dims.set_point(axis, float(layer.translate[0] + round(z) * layer.scale[0]))

    def _on_label_picked(self, event=None) -> None:
        """The layer's selected label changed (picker, click, keyboard): select its row."""
        if self._selecting or self.instances_layer is None:
            return
        obj_id = int(self.instances_layer.selected_label)
        if any(r.id == obj_id for r in self.rows):
            self._selecting = True
            try:
                self.table.select_ids([obj_id])
                self._enable()
                self.histogram.set_rows(self.rows, [obj_id])
            finally:
                self._selecting = False

    def _on_click(self, layer, event):
        """In pan/zoom mode, a click (no drag) on an object selects it (2D or 3D)."""
        if layer.mode != "pan_zoom":
            return
        start = np.asarray(event.position)
        yield
        while event.type == "mouse_move":
            yield
        if np.linalg.norm(np.asarray(event.position) - start) > 1e-6 * max(1.0, np.abs(start).max()):
            return
        value = layer.get_value(event.position, view_direction=event.view_direction,
                                dims_displayed=event.dims_displayed, world=True)
        if value:
            layer.selected_label = int(value)

    def _on_alone(self, checked: bool) -> None:
        if self.instances_layer is not None:
            self.instances_layer.show_selected_label = checked

    def _fail(self, text: str, run: bool = False):
        """Show ``text``; ``run``: the measuring run failed (``measured`` fires with None)."""
        self.message.setText(text)
        show_error(text)
        if run:
            self.measured.emit(None)
        return None

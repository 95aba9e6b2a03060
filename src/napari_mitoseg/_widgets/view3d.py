"""Dock widget "Mitochondria 3D & measurements": one object per mitochondrion, a 3D view, a table."""

from __future__ import annotations

from pathlib import Path

import napari
import numpy as np
from napari.layers import Labels
from napari.utils.notifications import show_error
from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import (
    QAbstractItemView,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QPushButton,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ._common import LayerChoice, message_label

COLUMNS = ("id", "voxels", "volume", "centroid z", "centroid y", "centroid x", "slices")


def instances_job(labels, min_size: int, voxel_size: tuple[float, float, float]):
    """Worker: 3D instance labels (int32) of ``labels > 0`` and their measurements."""
    from ..postprocess import instances, measure

    lab = np.asarray(labels)
    inst = instances(lab if lab.ndim == 3 else lab[None], min_size=min_size)
    rows = measure(inst, voxel_size=voxel_size)
    return inst.reshape(lab.shape), rows


def _is_source(layer) -> bool:
    return layer.name.endswith("mitochondria")


class View3DWidget(QWidget):
    """Split a mask into 3D-connected mitochondria (layer "<name> instances", one colour each),
    show them in 3D and list their measurements (volume in the layer's scale units cubed).

    Click a row to go to that mitochondrion's centre slice. ``measured`` fires with the rows
    (a list of ``ObjectMeasure``), or None on error.
    """

    measured = Signal(object)

    def __init__(self, napari_viewer: napari.viewer.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.rows: list = []
        self.worker = None
        self.instances_layer = None
        self._source = None

        self.labels_choice = LayerChoice(self.viewer, Labels, prefer=_is_source, parent=self)
        self.min_size = QSpinBox()
        self.min_size.setRange(0, 10_000_000)
        self.min_size.setValue(64)
        self.min_size.setSuffix(" voxels")
        self.min_size.setToolTip("Objects smaller than this are dropped as noise")
        self.run_button = QPushButton("Separate mitochondria && show in 3D")
        self.run_button.clicked.connect(self.start)
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.verticalHeader().setVisible(False)
        self.table.itemSelectionChanged.connect(self._on_row_selected)
        self.save_button = QPushButton("Save CSV...")
        self.save_button.setEnabled(False)
        self.save_button.clicked.connect(self._ask_save_csv)
        self.message = message_label()

        form = QFormLayout()
        form.addRow("Mask", self.labels_choice)
        form.addRow("Minimum size", self.min_size)
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.save_button)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addWidget(self.table, 1)
        layout.addWidget(self.message)

    # ------------------------------------------------------------------ actions

    def start(self):
        """Compute instances and measurements of the chosen labels layer in a worker."""
        from napari.qt.threading import create_worker

        layer = self.labels_choice.layer()
        if layer is None:
            return self._fail("Choose a labels layer (a segmentation) first.")
        if layer.ndim not in (2, 3):
            return self._fail(f"'{layer.name}' has {layer.ndim} dimensions; expected (Z, Y, X).")
        scale = tuple(float(s) for s in layer.scale)
        voxel = scale if len(scale) == 3 else (1.0, *scale)
        self._source = layer
        self.run_button.setEnabled(False)
        self.message.setText(f"Separating the mitochondria of '{layer.name}'...")
        self.worker = create_worker(instances_job, layer.data, self.min_size.value(), voxel,
                                    _ignore_errors=True, _start_thread=False)
        self.worker.returned.connect(self._on_returned)
        self.worker.errored.connect(lambda exc: self._fail(f"Could not separate objects: {exc}"))
        self.worker.finished.connect(lambda: self.run_button.setEnabled(True))
        self.worker.start()
        return self.worker

    def save_csv(self, path) -> Path:
        """Write the measurements table to ``path`` (CSV)."""
        from ..postprocess import write_csv

        out = write_csv(self.rows, path)
        self.message.setText(f"Saved {len(self.rows)} rows to {out}")
        return out

    def _ask_save_csv(self) -> None:
        default = f"{self._source.name.replace(' ', '_')}_measurements.csv" if self.rows else ""
        path, _ = QFileDialog.getSaveFileName(self, "Save measurements", default, "CSV (*.csv)")
        if path:
            try:
                self.save_csv(path)
            except OSError as exc:
                self._fail(f"Could not save {path}: {exc}")

    # ------------------------------------------------------------------ handlers

    def _fail(self, text: str):
        self.message.setText(text)
        show_error(text)
        self.measured.emit(None)
        return None

    def _on_returned(self, result) -> None:
        inst, rows = result
        src = self._source
        name = f"{src.name} instances"
        if name in self.viewer.layers and isinstance(self.viewer.layers[name], Labels):
            layer = self.viewer.layers[name]
            layer.data = inst
        else:
            layer = self.viewer.add_labels(inst, name=name)
        layer.scale, layer.translate = src.scale, src.translate
        src.visible = False
        self.instances_layer = layer
        self.viewer.dims.ndisplay = 3
        self.rows = rows
        self._fill_table(rows)
        self.save_button.setEnabled(True)
        self.message.setText(f"{len(rows)} mitochondria in '{name}'. Click a row to go to it.")
        self.measured.emit(rows)

    def _fill_table(self, rows) -> None:
        self.table.setSortingEnabled(False)
        self.table.setRowCount(len(rows))
        for i, r in enumerate(rows):
            values = (r.id, r.voxels, round(r.volume, 3), round(r.centroid_z, 2), round(r.centroid_y, 2),
                      round(r.centroid_x, 2))
            for j, v in enumerate(values):
                item = QTableWidgetItem()
                item.setData(Qt.ItemDataRole.DisplayRole, v)
                self.table.setItem(i, j, item)
            span = QTableWidgetItem(f"{r.z_first}-{r.z_last} ({r.slices})")
            span.setData(Qt.ItemDataRole.UserRole, r.z_first)
            self.table.setItem(i, len(COLUMNS) - 1, span)
        self.table.setSortingEnabled(True)
        self.table.sortByColumn(0, Qt.SortOrder.AscendingOrder)
        self.table.resizeColumnsToContents()

    def _on_row_selected(self) -> None:
        items = self.table.selectedItems()
        if not items or self.instances_layer is None:
            return
        obj_id = int(self.table.item(items[0].row(), 0).data(Qt.ItemDataRole.DisplayRole))
        row = next((r for r in self.rows if r.id == obj_id), None)
        layer = self.instances_layer
        if row is None or layer.ndim < 3:
            return
        layer.selected_label = obj_id
        axis = self.viewer.dims.ndim - layer.ndim
        self.viewer.dims.set_point(axis, float(layer.translate[0] + row.centroid_z))

"""Qt pieces of the 3D widget: the voxel size boxes, the sortable table of objects and the
histogram of one of its columns. No numerics and no layers here."""

from __future__ import annotations

import math

import numpy as np
from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QDoubleSpinBox,
    QHBoxLayout,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ._controls import PlotCanvas

#: (field of MitoMeasure, column header), in table order
TABLE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("id", "id"),
    ("volume_um3", "volume µm³"),
    ("surface_um2", "surface µm²"),
    ("sphericity", "sphericity"),
    ("axis_major_um", "major µm"),
    ("axis_medium_um", "medium µm"),
    ("axis_minor_um", "minor µm"),
    ("elongation", "elongation"),
    ("flatness", "flatness"),
    ("z_extent_um", "z extent µm"),
    ("slices", "slices"),
    ("voxels", "voxels"),
    ("touches_border", "border"),
)
#: columns the histogram can show
NUMERIC = tuple((f, h) for f, h in TABLE_COLUMNS if f not in ("id", "touches_border"))


def _display(value):
    if isinstance(value, bool | np.bool_):
        return "yes" if value else ""
    if isinstance(value, int | np.integer):
        return int(value)
    v = float(value)
    return v if not math.isfinite(v) or v == 0 else float(f"{v:.4g}")


class VoxelSizeBox(QWidget):
    """Three spin boxes, Z, Y, X in nm, within ``VOXEL_RANGE_NM`` (0 reads "unknown").
    ``typed`` is True once the user changed a value; a value set from a layer
    (``set_value(..., typed=False)``) does not count as typed."""

    changed = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        from ._voxel_size import VOXEL_RANGE_NM

        super().__init__(parent)
        self.boxes = []
        self.typed = False
        lay = QHBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        for axis in "ZYX":
            box = QDoubleSpinBox()
            box.setRange(0.0, VOXEL_RANGE_NM[1])
            box.setSpecialValueText("unknown")
            box.setDecimals(2)
            box.setValue(0.0)
            box.setSuffix(" nm")
            box.setToolTip(f"Voxel size along {axis}, in nm ({VOXEL_RANGE_NM[0]:g} to {VOXEL_RANGE_NM[1]:g}; "
                           "read from the layer's file or scale; type to change)")
            box.valueChanged.connect(self._on_typed)
            self.boxes.append(box)
            lay.addWidget(box)

    def _on_typed(self) -> None:
        self.typed = True
        self.changed.emit()

    def value(self) -> tuple[float, float, float]:
        return tuple(b.value() for b in self.boxes)  # type: ignore[return-value]

    def known(self) -> bool:
        """Whether every axis has a size in range."""
        from ._voxel_size import VOXEL_RANGE_NM

        return all(VOXEL_RANGE_NM[0] <= v <= VOXEL_RANGE_NM[1] for v in self.value())

    def set_value(self, zyx, typed: bool = True) -> None:
        """Set the three sizes (None: unknown)."""
        for b, v in zip(self.boxes, zyx if zyx is not None else (0.0, 0.0, 0.0), strict=True):
            b.blockSignals(True)
            b.setValue(float(v))
            b.blockSignals(False)
        self.typed = typed
        self.changed.emit()


#: rows of the measurements table shown without scrolling it
TABLE_ROWS = 8


class ObjectTable(QTableWidget):
    """One row per object, sortable by any column; ``ids_selected(list[int])`` on selection."""

    ids_selected = Signal(list)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(0, len(TABLE_COLUMNS), parent)
        self.setHorizontalHeaderLabels([h for _, h in TABLE_COLUMNS])
        self.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.verticalHeader().setVisible(False)
        self.verticalHeader().setDefaultSectionSize(self.fontMetrics().height() + 6)
        # eight rows in view (more scroll), however little room the dock has
        self.setMinimumHeight(self.horizontalHeader().sizeHint().height()
                              + TABLE_ROWS * self.verticalHeader().defaultSectionSize() + 4)
        self.setSortingEnabled(True)
        self.sortByColumn(0, Qt.SortOrder.AscendingOrder)
        self.itemSelectionChanged.connect(lambda: self.ids_selected.emit(self.selected_ids()))

    def set_rows(self, rows) -> None:
        """Show ``rows`` (MitoMeasure), keeping the sort order and the selected ids."""
        keep = set(self.selected_ids())
        header = self.horizontalHeader()
        col, order = header.sortIndicatorSection(), header.sortIndicatorOrder()
        self.blockSignals(True)
        self.setSortingEnabled(False)
        self.clearContents()
        self.setRowCount(len(rows))
        for i, r in enumerate(rows):
            for j, (field, _) in enumerate(TABLE_COLUMNS):
                item = QTableWidgetItem()
                item.setData(Qt.ItemDataRole.DisplayRole, _display(getattr(r, field)))
                self.setItem(i, j, item)
        self.setSortingEnabled(True)
        self.sortByColumn(col, order)
        self.resizeColumnsToContents()
        self.blockSignals(False)
        self.select_ids(keep)

    def row_ids(self) -> list[int]:
        """Ids in display order."""
        return [int(self.item(i, 0).data(Qt.ItemDataRole.DisplayRole)) for i in range(self.rowCount())]

    def row_of(self, obj_id: int) -> int | None:
        return next((i for i, v in enumerate(self.row_ids()) if v == obj_id), None)

    def selected_ids(self) -> list[int]:
        rows = sorted({ix.row() for ix in self.selectedIndexes()})
        return [int(self.item(i, 0).data(Qt.ItemDataRole.DisplayRole)) for i in rows if self.item(i, 0)]

    def select_ids(self, ids) -> None:
        """Select the rows of ``ids`` (others deselected) without emitting ``ids_selected``."""
        ids = set(ids)
        self.blockSignals(True)
        self.clearSelection()
        mode = self.selectionMode()
        self.setSelectionMode(QAbstractItemView.SelectionMode.MultiSelection)
        for i, v in enumerate(self.row_ids()):
            if v in ids:
                self.selectRow(i)
        self.setSelectionMode(mode)
        self.blockSignals(False)
        first = next((self.row_of(i) for i in sorted(ids)), None)
        if first is not None:
            self.scrollToItem(self.item(first, 0))


class Histogram(QWidget):
    """A column chooser and a small histogram of that column (the selected object marked)."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.column = QComboBox()
        for field, header in NUMERIC:
            self.column.addItem(header, field)
        self.column.setToolTip("Column shown in the histogram")
        self.plot = PlotCanvas(height_px=130)
        self.plot.setMaximumHeight(170)
        self.column.currentIndexChanged.connect(lambda _: self.draw())
        self._rows: list = []
        self._marked: list[int] = []
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.column)
        lay.addWidget(self.plot)

    def field(self) -> str:
        return self.column.currentData()

    def set_rows(self, rows, marked=()) -> None:
        self._rows, self._marked = list(rows), list(marked)
        self.draw()

    def values(self) -> np.ndarray:
        v = np.array([float(getattr(r, self.field())) for r in self._rows], float)
        return v[np.isfinite(v)]

    def draw(self) -> None:
        ax = self.plot.axes
        ax.clear()
        values = self.values()
        if len(values):
            ax.hist(values, bins=min(30, max(5, len(values) // 3)), color="#4c9be8")
            for r in self._rows:
                if r.id in self._marked:
                    ax.axvline(float(getattr(r, self.field())), color="#e8704c", lw=1.5)
        ax.set_xlabel(self.column.currentText(), fontsize=8)
        ax.set_ylabel("objects", fontsize=8)
        ax.tick_params(labelsize=7)
        self.plot.draw()

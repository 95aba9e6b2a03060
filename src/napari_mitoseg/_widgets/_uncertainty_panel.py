"""The Segment widget's "Uncertainty" section: an ``"<image> uncertainty"`` image layer under the
result, a sortable table of slices by uncertainty (a click shows the slice), and "Suggest slices",
the slices to correct first.

The numbers come from :mod:`napari_mitoseg.uncertainty`; this module only maps them to Qt and layers.
"""

from __future__ import annotations

from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QHBoxLayout,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ._controls import message_label

#: the result layer's metadata key holding each slice's uncertainty (list of floats, slice order)
SLICE_UNCERTAINTY = "mitoseg_slice_uncertainty"
#: an image layer's metadata key marking the uncertainty map the Segment widget made
UNCERTAINTY_MAP = "mitoseg_uncertainty_map"


def slice_list(indices: list[int]) -> str:
    """``[12, 87]`` -> ``"slices 12 and 87"``; ``[3]`` -> ``"slice 3"``."""
    if len(indices) == 1:
        return f"slice {indices[0]}"
    return f"slices {', '.join(map(str, indices[:-1]))} and {indices[-1]}"


class UncertaintyPanel(QWidget):
    """The check box, the table of slices and "Suggest slices" (see the module's docstring)."""

    def __init__(self, viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = viewer
        self.values: list[float] = []
        self.suggested: list[int] = []
        self.enabled = QCheckBox("Uncertainty")
        self.enabled.setToolTip("Also show where the model is unsure (a heat map layer) and list the "
                                "slices by uncertainty, to correct the most doubtful ones first")
        self.suggest_button = QPushButton("Suggest slices")
        self.suggest_button.setToolTip("Select the two slices worth correcting first")
        self.suggest_button.setEnabled(False)
        self.suggest_button.clicked.connect(self.suggest)
        self.table = QTableWidget(0, 2, self)
        self.table.setHorizontalHeaderLabels(["slice", "uncertainty"])
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.MultiSelection)
        self.table.verticalHeader().setVisible(False)
        self.table.setMaximumHeight(160)
        self.table.setVisible(False)
        self.table.cellClicked.connect(self._on_cell)
        self.message = message_label()
        row = QHBoxLayout()
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.enabled)
        row.addWidget(self.suggest_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(row)
        layout.addWidget(self.table)
        layout.addWidget(self.message)

    def recorder(self, shape: tuple[int, ...]):
        """An :class:`~napari_mitoseg.uncertainty.UncertaintyRecorder` for a run on an image of
        ``shape`` when the box is ticked, else None."""
        from ..uncertainty import UncertaintyRecorder

        return UncertaintyRecorder(tuple(shape)) if self.enabled.isChecked() else None

    def show_result(self, image_layer, labels_layer, recorder) -> None:
        """Put ``recorder``'s map on ``"<image> uncertainty"`` (under ``labels_layer``), its
        values in the table and in ``labels_layer.metadata``."""
        self.values = list(recorder.values)
        self.suggested = []
        labels_layer.metadata[SLICE_UNCERTAINTY] = list(self.values)
        umap = recorder.map.reshape(image_layer.data.shape)
        self._put_layer(f"{image_layer.name} uncertainty", umap, image_layer, labels_layer)
        self._fill_table()
        self.suggest_button.setEnabled(bool(self.values))
        self.message.setText("")

    def _put_layer(self, name: str, data, image_layer, labels_layer) -> None:
        from napari.layers import Image

        # only a map this panel made is replaced; another layer with the name is left alone
        layer = next((ly for ly in self.viewer.layers if ly.name == name and isinstance(ly, Image)
                      and ly.metadata.get(UNCERTAINTY_MAP)), None)
        if layer is None:
            taken, k, free = {ly.name for ly in self.viewer.layers}, 2, name
            while free in taken:
                free, k = f"{name} ({k})", k + 1
            layer = self.viewer.add_image(data, name=free, colormap="inferno", contrast_limits=(0, 255),
                                          opacity=0.7, blending="additive", scale=image_layer.scale,
                                          translate=image_layer.translate, units=image_layer.units,
                                          metadata={UNCERTAINTY_MAP: True})
        else:
            layer.data = data
            layer.scale, layer.translate = image_layer.scale, image_layer.translate
        layers = self.viewer.layers
        if labels_layer in layers and layers.index(layer) > layers.index(labels_layer):
            layers.move(layers.index(layer), layers.index(labels_layer))

    def _fill_table(self) -> None:
        table = self.table
        table.setSortingEnabled(False)
        table.clearSelection()
        table.setRowCount(len(self.values))
        for row, value in enumerate(self.values):
            for col, v in enumerate((row, float(value))):
                item = QTableWidgetItem()
                item.setData(Qt.ItemDataRole.DisplayRole, v)
                table.setItem(row, col, item)
        table.setSortingEnabled(True)
        table.sortItems(1, Qt.SortOrder.DescendingOrder)
        table.setVisible(bool(self.values))

    def slice_at(self, row: int) -> int:
        """The slice index shown in the table's ``row`` (as sorted now)."""
        return int(self.table.item(row, 0).data(Qt.ItemDataRole.DisplayRole))

    def _on_cell(self, row: int, column: int = 0) -> None:
        self.show_slice(self.slice_at(row))

    def show_slice(self, z: int) -> None:
        """Move the viewer to slice ``z`` of the stack."""
        if self.viewer.dims.ndim >= 3:
            self.viewer.dims.set_current_step(self.viewer.dims.ndim - 3, z)

    def suggest(self) -> list[int]:
        """Select the slices to correct first in the table, show the first, say which."""
        from ..uncertainty import suggest_slices

        if not self.values:
            self.message.setText("Segment with Uncertainty ticked first.")
            return []
        self.suggested = suggest_slices(self.values, n=2)
        self.table.clearSelection()
        for row in range(self.table.rowCount()):
            if self.slice_at(row) in self.suggested:
                self.table.selectRow(row)
        self.show_slice(self.suggested[0])
        self.message.setText(f"Correct {slice_list(self.suggested)} first.")
        return self.suggested

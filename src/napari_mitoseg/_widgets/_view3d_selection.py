"""Selecting objects in the 3D widget: a row of the table selects the object in the layer (and
moves to its slice), a click on an object in the viewer (2D or 3D) or the layer's picker
selects its row; "show alone" draws the selected object only.

A mixin of :class:`view3d.View3DWidget`, which provides ``viewer``, ``instances_layer``,
``rows``, ``table``, ``histogram``, ``_voxel`` and ``_enable``.
"""

from __future__ import annotations

import numpy as np


class ObjectSelection:
    """The table's selection and the layer's selected label, kept in step."""

    _selecting = False

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

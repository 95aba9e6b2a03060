"""Object-level work of the 3D widget: delete, merge and split (each one undo step of the labels
layer), the CSV table and the meshes. A mixin of :class:`view3d.View3DWidget`, which provides
``instances_layer``, ``rows``, ``table``, ``message``, ``mesh_button``, ``_voxel``,
``sync_table``, ``_on_rows_selected``, ``_enable`` and ``_fail``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from qtpy.QtWidgets import QFileDialog


class ObjectEdits:
    """Delete / merge / split the objects selected in the table; save the table; export meshes."""

    def _apply(self, make_edit, what: str) -> bool:
        """Compute an edit of the instances layer and apply it as one undo step."""
        from ..morphology import MeasureError

        layer = self.instances_layer
        if layer is None:
            self._fail("Measure a labels layer first.")
            return False
        try:
            edit = make_edit(np.asarray(layer.data))
        except MeasureError as exc:
            self._fail(str(exc))
            return False
        with layer.block_history():  # one Ctrl+Z for the whole edit
            layer.data_setitem(edit.index, edit.values)
        self.sync_table()
        self.message.setText(f"{what} Undo: Ctrl+Z on the layer.")
        return True

    def delete_selected(self) -> bool:
        from .. import proofread

        ids = self.table.selected_ids()
        return self._apply(lambda lab: proofread.delete(lab, ids),
                           f"Deleted object{'s' if len(ids) > 1 else ''} {', '.join(map(str, ids))}.")

    def merge_selected(self) -> bool:
        from .. import proofread

        ids = self.table.selected_ids()
        ok = self._apply(lambda lab: proofread.merge(lab, ids), f"Merged {', '.join(map(str, ids))} "
                         f"into {min(ids) if ids else ''}.")
        if ok:
            self.table.select_ids([min(ids)])
            self._on_rows_selected([min(ids)])
        return ok

    def split_selected(self) -> bool:
        from .. import proofread

        ids = self.table.selected_ids()
        if len(ids) != 1:
            self._fail("Select one object to split.")
            return False
        new_id = int(max(np.asarray(self.instances_layer.data).max(), max(r.id for r in self.rows))) + 1
        return self._apply(lambda lab: proofread.split(lab, ids[0], self._voxel, new_id=new_id),
                           f"Split {ids[0]} into {ids[0]} and {new_id}.")

    def save_csv(self, path) -> Path:
        """Write the measurements table to ``path`` (CSV)."""
        from ..morphology import write_csv

        out = write_csv(self.rows, path)
        self.message.setText(f"Saved {len(self.rows)} rows to {out}")
        return out

    def export_meshes(self, folder):
        """Write one PLY per object (``mito_<id>.ply``, um, x y z) into ``folder`` in a worker."""
        from napari.qt.threading import create_worker

        from ..morphology import MeasureError, check_meshes_folder, write_meshes

        try:
            check_meshes_folder(folder)
        except MeasureError as exc:
            return self._fail(str(exc))
        self.mesh_button.setEnabled(False)
        self.message.setText(f"Writing meshes into {folder}...")
        worker = create_worker(write_meshes, np.array(self.instances_layer.data), self._voxel, folder,
                               _ignore_errors=True, _start_thread=False)
        worker.returned.connect(lambda paths: self.message.setText(f"Wrote {len(paths)} meshes (µm) "
                                                                   f"into {folder}"))
        worker.errored.connect(lambda exc: self._fail(f"Could not write meshes: {exc}"))
        worker.finished.connect(self._enable)
        worker.start()
        self._mesh_worker = worker
        return worker

    def _ask_save_csv(self) -> None:
        default = f"{self.instances_layer.name.replace(' ', '_')}_measurements.csv" if self.rows else ""
        path, _ = QFileDialog.getSaveFileName(self, "Save measurements", default, "CSV (*.csv)")
        if path:
            try:
                self.save_csv(path)
            except OSError as exc:
                self._fail(f"Could not save {path}: {exc}")

    def _ask_export_meshes(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Folder for the meshes (one PLY per object)")
        if folder:
            self.export_meshes(folder)

"""Object-level work of the 3D widget, off the main thread: delete, merge and split (each one
undo step of the labels layer), the table following the layer after an edit, painting, undo or
redo, the CSV table and the meshes.

A mixin of :class:`view3d.View3DWidget`, which provides ``viewer``, ``instances_layer``, ``rows``,
``table``, ``message``, ``progress``, ``mesh_button``, ``_voxel``, ``_snapshot``, ``_show_rows``,
``_on_rows_selected``, ``_enable``, ``_set_busy`` and ``_fail``. The edit is computed in a worker
(a whole-stack pass on a large stack takes seconds); only writing its voxels into the layer
happens on the main thread.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from qtpy.QtWidgets import QFileDialog

from ._common import same_layer


def edit_job(make_edit, data):
    """Worker: ``make_edit(labels)`` -> ``(Edit, message)``."""
    return make_edit(np.asarray(data))


def resync_job(snapshot: np.ndarray, data, voxel):
    """Worker: the objects that differ between ``snapshot`` and ``data`` (updating ``snapshot``)
    and their fresh rows; None when the shape changed."""
    from .. import morphology

    data = np.asarray(data)
    if data.shape != snapshot.shape:
        return None
    changed = snapshot != data
    if not changed.any():
        return set(), []
    ids = (set(np.unique(snapshot[changed]).tolist()) | set(np.unique(data[changed]).tolist())) - {0}
    snapshot[changed] = data[changed]
    return ids, (morphology.measure(data, voxel, ids=ids) if ids else [])


class ObjectEdits:
    """Delete / merge / split the objects selected in the table; keep the table in step with the
    layer; save the table; export meshes."""

    _edit_worker = None
    _sync_worker = None
    _sync_again = False
    _edit_note = ""

    def _apply(self, make_edit):
        """Compute an edit of the instances layer in a worker, then apply it as one undo step
        (``table_updated`` fires when the table has followed)."""
        from napari.qt.threading import create_worker

        layer = self.instances_layer
        if layer is None:
            return self._fail("Measure a labels layer first.")
        self._set_busy(True, "Editing...")
        worker = create_worker(edit_job, make_edit, layer.data, _ignore_errors=True, _start_thread=False)
        worker.returned.connect(lambda result: self._on_edit(layer, *result))
        worker.errored.connect(self._on_edit_failed)
        self._edit_worker = worker
        worker.start()
        return worker

    def _on_edit(self, layer, edit, text: str) -> None:
        if not same_layer(layer, self.instances_layer):  # the layer went meanwhile
            self._set_busy(False)
            return
        with layer.block_history():  # one Ctrl+Z for the whole edit
            layer.data_setitem(edit.index, edit.values)
        self._set_busy(False)  # the edit is on the layer; the table follows in the background
        self._edit_note = f"{text} Undo: Ctrl+Z on the layer."
        self.message.setText(self._edit_note)
        self._sync_timer.stop()
        self.sync_table()

    def _on_edit_failed(self, exc) -> None:
        from ..morphology import MeasureError

        self._set_busy(False)
        self._fail(str(exc) if isinstance(exc, MeasureError) else f"Could not edit the objects: {exc}")

    def delete_selected(self):
        from .. import proofread

        ids = self.table.selected_ids()
        text = f"Deleted object{'s' if len(ids) > 1 else ''} {', '.join(map(str, ids))}."
        return self._apply(lambda lab: (proofread.delete(lab, ids), text))

    def merge_selected(self):
        from .. import proofread

        ids = self.table.selected_ids()
        text = f"Merged {', '.join(map(str, ids))} into {min(ids) if ids else ''}."
        self._select_after = [min(ids)] if ids else []
        return self._apply(lambda lab: (proofread.merge(lab, ids), text))

    def split_selected(self):
        from .. import proofread

        ids = self.table.selected_ids()
        if len(ids) != 1:
            return self._fail("Select one object to split.")
        top = max(r.id for r in self.rows)
        voxel = self._voxel

        def split(lab):
            new_id = int(max(lab.max(), top)) + 1
            edit = proofread.split(lab, ids[0], voxel, new_id=new_id)
            return edit, f"Split {ids[0]} into {ids[0]} and {new_id}."

        return self._apply(split)

    # ------------------------------------------------------------------ the table follows

    def _schedule_sync(self, event=None) -> None:
        self._sync_timer.start()

    def sync_table(self):
        """Re-measure, in a worker, the objects that changed since the last measurement (an
        edit, painting, undo or redo); ``table_updated`` fires when something changed."""
        from napari.qt.threading import create_worker

        layer = self.instances_layer
        if layer is None or self._snapshot is None or not any(same_layer(layer, ly) for ly in self.viewer.layers):
            return None
        if self._sync_worker is not None:
            self._sync_again = True
            return self._sync_worker
        worker = create_worker(resync_job, self._snapshot, layer.data, self._voxel, _ignore_errors=True,
                               _start_thread=False)
        worker.returned.connect(self._on_synced)
        worker.errored.connect(lambda exc: self._fail(f"Could not measure the changed objects: {exc}"))
        worker.finished.connect(self._after_sync)
        self._sync_worker = worker
        worker.start()
        return worker

    def _on_synced(self, result) -> None:
        if result is None:
            self._snapshot = None
            self.message.setText("The labels changed shape; measure again.")
            return
        ids, fresh = result
        if not ids:
            return
        self.rows = sorted([r for r in self.rows if r.id not in ids] + list(fresh), key=lambda r: r.id)
        self._show_rows()
        after, self._select_after = getattr(self, "_select_after", []), []
        if after and all(any(r.id == i for r in self.rows) for i in after):
            self.table.select_ids(after)
            self._on_rows_selected(after)
        self.table_updated.emit()

    def _after_sync(self) -> None:
        self._sync_worker = None
        if self._sync_again:
            self._sync_again = False
            self.sync_table()

    # ------------------------------------------------------------------ files

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

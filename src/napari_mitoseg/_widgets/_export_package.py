"""The Fine-tune widget's "Export for bioimage.io…": the fine-tuned model as a bioimage.io model
package (:func:`napari_mitoseg.bioimageio_export.export_bioimageio`), written in a worker."""

from __future__ import annotations

from pathlib import Path

from napari.utils.notifications import show_error, show_info
from qtpy.QtWidgets import QFileDialog, QPushButton


def export_job(model: str, out_zip: str) -> Path:
    """Worker body: write the package (tens of seconds) and return its path."""
    from ..bioimageio_export import export_bioimageio

    return export_bioimageio(model, out_zip)


class ExportPackage:
    """Mixin for the Fine-tune widget (a QWidget with ``result``, ``message`` and an ``exported``
    signal, emitted with the package's path, or None when the export failed)."""

    def _build_export(self) -> QPushButton:
        """The button, hidden and disabled until a fine-tuned model exists (see :meth:`_export_ready`)."""
        self.export_worker = None
        self.export_button = QPushButton("Export for bioimage.io…")
        self.export_button.setToolTip("Save the fine-tuned model as a bioimage.io model package (.zip) "
                                      "that other tools (deepImageJ, ilastik, bioimage.io) can run")
        self.export_button.setEnabled(False)
        self.export_button.setVisible(False)  # until there is a model to export
        self.export_button.clicked.connect(lambda *a: self.export_package())
        return self.export_button

    def _export_ready(self) -> None:
        """Enable the button when there is a fine-tuned model and no export running."""
        self.export_button.setEnabled(self.result is not None and self.export_worker is None)
        self.export_button.setVisible(self.result is not None or self.export_worker is not None)

    def export_package(self, path: str | None = None):
        """Ask where (unless ``path``), then write the package in a worker (returns it, or None)."""
        from napari.qt.threading import create_worker

        if self.result is None:
            self.message.setText("Fine-tune a model first; then export it.")
            return None
        if path is None:
            suggested = str(Path.home() / f"{self.result.name}.zip")
            path, _ = QFileDialog.getSaveFileName(self, "Export for bioimage.io", suggested,
                                                  "bioimage.io model package (*.zip)")
        if not path:  # the dialog was cancelled
            return None
        if not path.lower().endswith(".zip"):
            path += ".zip"
        worker = create_worker(export_job, str(self.result.path), path, _ignore_errors=True,
                               _start_thread=False)
        worker.returned.connect(self._on_exported)
        worker.errored.connect(self._on_export_failed)
        self.export_worker = worker
        self.export_button.setEnabled(False)
        self.message.setText(f"Exporting {self.result.name} to {path}...")
        worker.start()
        return worker

    def _on_exported(self, path) -> None:
        self.export_worker = None
        self._export_ready()
        text = f"Exported the bioimage.io model package {path}."
        self.message.setText(text)
        show_info(text)
        self.exported.emit(path)

    def _on_export_failed(self, exc: BaseException) -> None:
        self.export_worker = None
        self._export_ready()
        text = f"Export failed: {exc}"
        self.message.setText(text)
        show_error(text)
        self.exported.emit(None)

"""Dock widget "Mitochondria: all steps": the four widgets as tabs of one dock (Segment,
Evaluate, Fine-tune, 3D), so that a small screen shows one step whole instead of four docks
of a few controls each."""

from __future__ import annotations

import napari
from qtpy.QtWidgets import QTabWidget, QWidget


class StepsWidget(QTabWidget):
    """The Segment, Evaluate, Fine-tune and 3D & measurements widgets, one per tab (as
    ``segment``, ``evaluate``, ``finetune`` and ``view3d``)."""

    def __init__(self, napari_viewer: napari.viewer.Viewer, parent: QWidget | None = None) -> None:
        from .evaluate import EvaluateWidget
        from .finetune import FinetuneWidget
        from .segment import SegmentWidget
        from .view3d import View3DWidget

        super().__init__(parent)
        self.viewer = napari_viewer
        self.segment = SegmentWidget(napari_viewer)
        self.evaluate = EvaluateWidget(napari_viewer)
        self.finetune = FinetuneWidget(napari_viewer)
        self.view3d = View3DWidget(napari_viewer)
        for widget, title, tip in (
            (self.segment, "Segment", "Segment mitochondria"),
            (self.evaluate, "Evaluate", "Evaluate segmentation against ground truth"),
            (self.finetune, "Fine-tune", "Fine-tune the model on your corrections"),
            (self.view3d, "3D", "Mitochondria 3D & measurements"),
        ):
            self.setTabToolTip(self.addTab(widget, title), tip)

""""Segment again with the new model": the Fine-tune widget's re-segmentation of the image into
the corrected labels layer, keeping the corrected and listed slices exactly.

A mixin of :class:`finetune.FinetuneWidget`, which provides ``viewer``, ``result``,
``image_choice``, ``labels_choice``, ``device_choice``, ``pixel_size``, ``progress``,
``message``, the buttons, ``slices``, ``_fail``, ``_idle``, ``_debounce``,
``_find_in_background`` and the ``resegmented`` signal.
"""

from __future__ import annotations

import dataclasses

from ._common import INSTANCES, OPTIONS
from ._segment_run import SegmentationRun
from ._training_slices import n_slices


def recorded_predict_options(labels):
    """The ``PredictOptions`` a result layer was segmented with (TTA, threshold, z-smoothing,
    hole filling); what is not recorded (None) falls to the new model's defaults, which
    ``iter_finetune`` copied from its base model. The pixel ratio and the inversion are part of
    the new model's spec, so it takes the stack as it is."""
    from ..inference import PredictOptions

    used = labels.metadata.get(OPTIONS) or {}
    known = {f.name for f in dataclasses.fields(PredictOptions)} - {"pixel_ratio", "invert"}
    return PredictOptions(**{k: v for k, v in used.items() if k in known})


class SegmentAgain:
    """Re-segment the image with the fine-tuned model."""

    segment_run: SegmentationRun | None = None

    def segment_again(self):
        """Re-segment the image with the new model; corrected and listed slices stay exactly."""
        image, labels = self.image_choice.layer(), self.labels_choice.layer()
        if self.result is None or image is None or labels is None:
            return self._fail("Fine-tune first, with the image and corrected labels chosen.",
                              self.resegmented)
        run = SegmentationRun(
            self.viewer, image, str(self.result.path), device=self.device_choice.device(),
            options=recorded_predict_options(labels), instances=bool(labels.metadata.get(INSTANCES, False)),
            target_name=labels.name, extra_keep=self.slices(), pixel_size_nm=self.pixel_size.pixel_size_nm(),
            parent=self,
        )
        run.progress.connect(self._on_slice)
        run.status.connect(self.message.setText)
        run.done.connect(self._on_resegmented)
        run.stopped.connect(self._on_resegment_stopped)
        try:
            run.start()
        except ValueError as exc:
            return self._fail(f"Cannot segment '{image.name}': {exc}", self.resegmented)
        self.segment_run = run
        self.progress.begin(n_slices(labels), "slice")
        self.run_button.setEnabled(False)
        self.segment_again_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        return run

    def _on_slice(self, done: int, total: int) -> None:
        self.progress.advance(done, total)

    def _on_resegmented(self, layer) -> None:
        self._idle()
        self.progress.finish()
        self.segment_again_button.setEnabled(True)
        self._debounce.stop()
        self._find_in_background()  # against the new model's output, at once
        kept = self.segment_run.kept if self.segment_run else []
        undo = self.segment_run.undo_note if self.segment_run is not None else ""
        self.message.setText(f"Segmented again with {self.result.name}; kept slices {kept} exactly.{undo}")
        self.resegmented.emit(layer)

    def _on_resegment_stopped(self, text: str) -> None:
        self._idle()
        self.progress.idle("cancelled" if text.startswith("Cancelled") else "failed")
        self.segment_again_button.setEnabled(True)
        self.message.setText(text)
        self.resegmented.emit(None)

""""Segment again with the new model": the Fine-tune widget's re-segmentation of the image into
the labels layer the model was trained on (never into another layer, whatever is chosen under
*Corrected labels* by then), keeping the corrected and listed slices exactly.

A mixin of :class:`finetune.FinetuneWidget`, which provides ``viewer``, ``result``,
``image_choice``, ``labels_choice``, ``device_choice``, ``pixel_size``, ``progress``,
``message``, the buttons, ``slices``, ``_fail``, ``_idle``, ``_debounce``,
``_find_in_background`` and the ``resegmented`` signal.
"""

from __future__ import annotations

import dataclasses

from ._common import INSTANCES, OPTIONS, same_layer
from ._segment_run import SegmentationRun
from ._training_slices import n_slices


def recorded_predict_options(labels):
    """The ``PredictOptions`` a result layer was segmented with (TTA, threshold, z-smoothing,
    hole filling); what is not recorded (None) falls to the new model's defaults, which
    ``iter_finetune`` copied from its base model. The pixel ratio and the inversion are part of
    the new model's spec, so it takes the stack as it is."""
    from ..inference import PredictOptions

    used = (labels.metadata.get(OPTIONS) or {}) if labels is not None else {}
    known = {f.name for f in dataclasses.fields(PredictOptions)} - {"pixel_ratio", "invert"}
    return PredictOptions(**{k: v for k, v in used.items() if k in known})


class SegmentAgain:
    """Re-segment the image with the fine-tuned model."""

    segment_run: SegmentationRun | None = None

    def segment_again(self):
        """Re-segment the image with the new model into the layer it was trained on (a new
        layer when that one is gone); its corrected and listed slices stay exactly."""
        image = self.image_choice.layer()
        if self.result is None or image is None:
            return self._fail("Fine-tune first, with the image and corrected labels chosen.",
                              self.resegmented)
        trained, slices = self._trained_on
        if trained is not None and not any(same_layer(trained, ly) for ly in self.viewer.layers):
            trained, slices = None, []  # deleted: segment into a new layer, never another one
        run = SegmentationRun(
            self.viewer, image, str(self.result.path), device=self.device_choice.device(),
            options=recorded_predict_options(trained),
            instances=bool(trained is not None and trained.metadata.get(INSTANCES, False)),
            target_name=trained.name if trained is not None else None, extra_keep=slices,
            pixel_size_nm=self.pixel_size.pixel_size_nm(), parent=self,
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
        self.progress.begin(n_slices(image), "slice")
        self.run_button.setEnabled(False)
        self.segment_again_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        return run

    def _on_slice(self, done: int, total: int) -> None:
        self.progress.advance(done, total)

    def _on_resegmented(self, layer) -> None:
        if self._trained_on[0] is None or not same_layer(self._trained_on[0], layer):
            self._trained_on = (layer, [])  # a new layer: the next "Segment again" goes there too
        self._idle()
        self.progress.finish()
        self.segment_again_button.setEnabled(True)
        self._debounce.stop()
        self._find_in_background()  # against the new model's output, at once
        kept = self.segment_run.kept if self.segment_run else []
        undo = self.segment_run.undo_note if self.segment_run is not None else ""
        self.message.setText(f"Segmented again with {self.result.name} into '{layer.name}'; kept slices "
                             f"{kept} exactly.{undo}")
        self.resegmented.emit(layer)

    def _on_resegment_stopped(self, text: str) -> None:
        self._idle()
        self.progress.idle("cancelled" if text.startswith("Cancelled") else "failed")
        self.segment_again_button.setEnabled(True)
        self.message.setText(text)
        self.resegmented.emit(None)

"""One segmentation run of an image layer into a result labels layer, shared by the Segment and
Fine-tune widgets ("Segment again").

The numerics run in a ``thread_worker`` over :func:`inference.iter_predict`; the main thread
only writes finished slices into the result layer (live preview) and, at the end, puts the final
labels and the model output on the layer.

Rules kept here, in one place:

- the result layer is ``"<image> mitochondria"`` (or a given name) with the image's scale and
  translate; its ``metadata[MODEL_OUTPUT]`` keeps the last model output;
- slices the user painted (:func:`_common.painted_slices` against that output), plus any slices the
  caller names, are kept exactly (:func:`api.merge_unpainted`); the rest are replaced;
- Cancel (``worker.quit()``) stops within one slice and leaves a pre-existing layer exactly as it
  was (same array, same metadata); a layer this run created is removed again;
- a finished run over a pre-existing layer is one undo step of that layer (Ctrl+Z brings back
  the previous result, Ctrl+Shift+Z the new one), up to :data:`UNDO_MAX_VOXELS` changed voxels.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from qtpy.QtCore import QObject, Signal

from ._common import (
    INSTANCES,
    MODEL_NAME,
    MODEL_OUTPUT,
    OPTIONS,
    PREVIOUS_OUTPUT,
    avoid_llvm_clash,
    layer_array,
    painted_slices,
)

#: a re-segmentation changing more voxels than this is not recorded for undo (the undo step
#: holds about 30 bytes per changed voxel: 750 MB at this limit)
UNDO_MAX_VOXELS = 25_000_000


@dataclass
class SegmentOutcome:
    """What a finished run puts on the layer (arrays shaped like the image)."""

    model_name: str
    output: np.ndarray  # what the model produced (mask uint8 0/1 or instance ids int32)
    labels: np.ndarray  # the layer's new data: ``output`` with the kept slices copied back
    kept: list[int]


def segment_job(
    source: str, device: str, image, options, instances: bool, min_size: int,
    old: np.ndarray | None, keep: Sequence[int],
) -> Iterator:
    """Generator run in the worker thread: yields status strings and ``SliceResult``s,
    returns a :class:`SegmentOutcome`."""
    from ..api import get_model, merge_unpainted
    from ..inference import iter_predict

    yield "Loading the model..."
    model = get_model(source, device)
    yield f"Segmenting with {model.name} on {model.device}..."
    shape3 = tuple(image.shape) if image.ndim == 3 else (1, *image.shape)
    mask = np.zeros(shape3, np.uint8)
    for r in iter_predict(model, image, options):
        mask[r.index] = r.mask
        yield r
    if instances:
        from ..postprocess import instances as to_instances

        yield "Separating mitochondria in 3D..."
        output = to_instances(mask, min_size=min_size)
    else:
        output = mask
    if keep and old is not None:
        old3 = old.reshape(shape3)
        dtype = np.result_type(output.dtype, old3.dtype)
        labels = merge_unpainted(output.astype(dtype, copy=False), old3, keep)
    else:
        labels = output.copy()
    return SegmentOutcome(model.name, output.reshape(image.shape), labels.reshape(image.shape),
                          list(keep))


class SegmentationRun(QObject):
    """Segment ``image_layer`` with the model at ``source`` into the result layer.

    Signals: ``progress(done, total)`` per slice, ``status(text)``, ``done(layer)`` when the
    result is on the layer, ``stopped(text)`` when cancelled or failed (layers restored).
    """

    progress = Signal(int, int)
    status = Signal(str)
    done = Signal(object)
    stopped = Signal(str)

    def __init__(
        self, viewer, image_layer, source: str, *, device: str = "auto", options=None,
        instances: bool = False, min_size: int = 64, target_name: str | None = None,
        extra_keep: Sequence[int] = (), parent: QObject | None = None,
    ) -> None:
        super().__init__(parent)
        self.viewer, self.image_layer, self.source = viewer, image_layer, source
        self.device, self.options, self.instances, self.min_size = device, options, instances, min_size
        self.target_name = target_name or f"{image_layer.name} mitochondria"
        self.extra_keep = sorted({int(z) for z in extra_keep})
        self.worker = None
        self.layer = None
        self.kept: list[int] = []
        self._created = False
        self._restore: tuple | None = None  # (layer, original data array, editable)
        self._buffer3: np.ndarray | None = None
        self._active = False
        #: whether the finished run can be undone on the layer (Ctrl+Z)
        self.undoable = False

    @property
    def undo_note(self) -> str:
        """A sentence for the user when the finished run can be undone on the layer, else ""."""
        return " Undo (Ctrl+Z on the layer) brings back the previous result." if self.undoable else ""

    # ------------------------------------------------------------------ main thread

    def start(self) -> None:
        """Prepare the result layer and start the worker (raises ValueError on bad input)."""
        from napari.layers import Labels
        from napari.qt.threading import create_worker

        from ..inference import check_stack

        avoid_llvm_clash()

        image = layer_array(self.image_layer)
        check_stack(image)
        shape = tuple(image.shape)
        dtype = np.dtype(np.int32 if self.instances else np.uint8)
        name = self.target_name
        # (LayerList has no .get; another kind of layer with the name is ignored, ours is suffixed)
        existing = next((ly for ly in self.viewer.layers if ly.name == name and isinstance(ly, Labels)), None)
        old = None
        keep: list[int] = []
        if existing is not None and tuple(existing.data.shape) == shape:
            old = np.asarray(existing.data)
            painted = painted_slices(existing) or []
            n_slices = shape[0] if len(shape) == 3 else 1
            keep = sorted(set(painted) | {z for z in self.extra_keep if 0 <= z < n_slices})
        self.kept = keep
        if existing is not None:
            # preview into a fresh buffer; the layer's own array is never written to
            self._restore = (existing, existing.data, existing.editable)
            buf = np.zeros(shape, np.result_type(dtype, old.dtype) if old is not None else dtype)
            if old is not None:
                buf[...] = old
            existing.data = buf
            self.layer = existing
        else:
            self.layer = self.viewer.add_labels(
                np.zeros(shape, dtype), name=name, scale=self.image_layer.scale,
                translate=self.image_layer.translate, opacity=0.6,
            )
            self._created = True
        self.layer.editable = False  # painting now would be lost when the result lands
        self._buffer3 = self.layer.data if len(shape) == 3 else self.layer.data[None]
        self.worker = create_worker(
            segment_job, self.source, self.device, image, self.options, self.instances,
            self.min_size, old, keep, _ignore_errors=True, _start_thread=False,
        )
        self.worker.yielded.connect(self._on_yielded)
        self.worker.returned.connect(self._on_returned)
        self.worker.errored.connect(self._on_errored)
        self.worker.aborted.connect(self._on_aborted)
        self.worker.finished.connect(self._on_finished)
        self._active = True
        self.worker.start()

    def cancel(self) -> None:
        """Ask the worker to stop; it does so before the next slice."""
        if self.worker is not None:
            self.worker.quit()

    @property
    def running(self) -> bool:
        return self._active

    def _on_yielded(self, item) -> None:
        if isinstance(item, str):
            self.status.emit(item)
            return
        if item.index not in self.kept:
            self._buffer3[item.index] = item.mask
            self.layer.refresh()
        self.progress.emit(item.index + 1, item.total)

    def _on_returned(self, out: SegmentOutcome) -> None:
        layer = self.layer
        if layer not in self.viewer.layers:  # the user deleted it meanwhile
            layer = self.viewer.add_labels(out.labels, name=self.target_name, opacity=0.6)
        elif self._restore is not None:
            self.undoable = self._replace_undoably(layer, self._restore[1], out.labels)
        else:
            layer.data = out.labels
        layer.scale = self.image_layer.scale
        layer.translate = self.image_layer.translate
        if self._restore is not None and MODEL_OUTPUT in layer.metadata:
            layer.metadata[PREVIOUS_OUTPUT] = layer.metadata[MODEL_OUTPUT]
        layer.metadata[MODEL_OUTPUT] = out.output
        layer.metadata[MODEL_NAME] = out.model_name
        layer.metadata[INSTANCES] = self.instances
        layer.metadata[OPTIONS] = dataclasses.asdict(self.options) if self.options else {}
        layer.editable = True if self._restore is None else self._restore[2]
        self.layer = layer
        self._finish()
        self.done.emit(layer)

    @staticmethod
    def _replace_undoably(layer, original, new: np.ndarray) -> bool:
        """Put ``new`` on ``layer`` as one undo step over ``original`` (the data it had).

        Returns False, replacing the data without an undo step, when the step cannot be
        recorded: the original is not an in-memory array of the same shape, or the change is
        larger than :data:`UNDO_MAX_VOXELS`.
        """
        if not isinstance(original, np.ndarray) or original.shape != new.shape:
            layer.data = new
            return False
        changed = original != new
        n_changed = int(np.count_nonzero(changed))
        if n_changed > UNDO_MAX_VOXELS:
            layer.data = new
            return False
        dtype = np.result_type(original.dtype, new.dtype)
        layer.data = original if original.dtype == dtype else original.astype(dtype)
        if n_changed:
            where = np.nonzero(changed)
            with layer.block_history():  # one Ctrl+Z for the whole run
                layer.data_setitem(where, new[where])
        return True

    def _restore_layers(self) -> None:
        if self._created:
            if self.layer in self.viewer.layers:
                self.viewer.layers.remove(self.layer)
        elif self._restore is not None:
            layer, data, editable = self._restore
            layer.data = data
            layer.editable = editable

    def _on_aborted(self) -> None:
        self._restore_layers()
        self._finish()
        self.stopped.emit("Cancelled; the layers are as they were before.")

    def _on_finished(self) -> None:
        # a Cancel that lands after the last slice suppresses both 'returned' and 'aborted'
        if self._active:
            self._on_aborted()

    def _on_errored(self, exc: BaseException) -> None:
        self._restore_layers()
        self._finish()
        self.stopped.emit(f"Segmentation failed: {exc}")

    def _finish(self) -> None:
        self._active = False
        self._created = False
        self._restore = None
        self._buffer3 = None

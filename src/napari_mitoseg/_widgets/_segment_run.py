"""One segmentation run of an image layer into a result labels layer, shared by the Segment and
Fine-tune widgets ("Segment again").

The numerics run in a ``thread_worker`` over :func:`inference.iter_predict`: the worker also
finds the painted slices, fills the preview buffer slice by slice and works out the voxels the
result changes. The main thread only swaps arrays onto the layer, redraws the preview at most
every :data:`PREVIEW_INTERVAL_S` (and only when a slice in view changed) and, at the end, puts
the final labels and the model output on the layer, so that no handler holds the event loop
for long.

Rules kept here, in one place:

- the result layer is ``"<image> mitochondria"`` (or a given name) with the image's scale and
  translate; its ``metadata[MODEL_OUTPUT]`` keeps the last model output;
- slices the user painted (:func:`_common.painted_slices` against that output), plus any slices the
  caller names, are kept exactly (:func:`api.merge_unpainted`); the rest are replaced;
- Cancel (``worker.quit()``) stops within one slice and leaves a pre-existing layer exactly as it
  was (same array, same metadata); a layer this run created is removed again;
- a finished run over a pre-existing layer is one undo step of that layer (Ctrl+Z brings back
  the previous result, Ctrl+Shift+Z the new one), up to :data:`UNDO_MAX_VOXELS` changed voxels,
  written :data:`LAND_CHUNK` voxels per turn of the event loop.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from qtpy.QtCore import QObject, QTimer, Signal

from ._common import (
    CORRECTED,
    INSTANCES,
    MODEL_NAME,
    MODEL_OUTPUT,
    OPTIONS,
    PIXEL_SIZE_NM,
    PREVIOUS_OUTPUT,
    avoid_llvm_clash,
    layer_array,
    model_output,
    painted_in,
)
from ._display import has_physical_size, show_in_nm

#: a re-segmentation changing more voxels than this is not recorded for undo (the undo step
#: holds about 30 bytes per changed voxel: 750 MB at this limit)
UNDO_MAX_VOXELS = 25_000_000
#: changed voxels written per turn of the event loop when a result lands as one undo step
LAND_CHUNK = 100_000
#: the live preview is redrawn at most this often (seconds); slices land in it in the worker
PREVIEW_INTERVAL_S = 0.5


@dataclass
class Preview:
    """The worker's first item: the buffer the preview is drawn from (shaped like the image,
    holding the old result) and the slices kept exactly."""

    buffer: np.ndarray
    kept: list[int]


@dataclass
class SegmentOutcome:
    """What a finished run puts on the layer (arrays shaped like the image)."""

    model_name: str
    output: np.ndarray  # what the model produced (mask uint8 0/1 or instance ids int32)
    labels: np.ndarray  # the layer's new data: ``output`` with the kept slices copied back
    kept: list[int]
    #: the voxels where ``labels`` differs from the old data (np.nonzero), for one undo step;
    #: None when there is no old data to undo to or the change is too large to record
    changed: tuple | None = None
    #: sentences for the user about how the stack was smoothed along z (and its contrast guessed)
    notes: list[str] = dataclasses.field(default_factory=list)
    #: the ``PredictOptions`` the run used (the contrast as guessed, the z step as estimated)
    options: object = None


def segment_job(
    source: str, device: str, image, options, instances: bool, min_size: int,
    old: np.ndarray | None, outputs: tuple, extra_keep: Sequence[int], dtype, recorder=None,
    guess_contrast: bool | None = None,
) -> Iterator:
    """Generator run in the worker thread: yields a :class:`Preview`, status strings and
    ``SliceResult``s (each already written into the preview buffer), returns a
    :class:`SegmentOutcome`.

    ``old`` is the result layer's data (None for a new layer), ``outputs`` its recorded
    (last, earlier) model outputs; the painted slices found against them, with ``extra_keep``,
    are kept exactly. ``recorder`` (a callable, e.g. an ``UncertaintyRecorder``) is called with
    each ``SliceResult`` in the worker. ``guess_contrast``: see
    :func:`~napari_mitoseg.stack_setup.settle_contrast` (None: the model's choice).
    """
    from ..api import get_model, merge_unpainted
    from ..inference import iter_predict
    from ..neighbours import breaks_note

    shape3 = tuple(image.shape) if image.ndim == 3 else (1, *image.shape)
    keep: list[int] = []
    if old is not None:
        painted = painted_in(old, *outputs) or []
        keep = sorted(set(painted) | {z for z in extra_keep if 0 <= z < shape3[0]})
        buffer = np.array(old, dtype=np.result_type(dtype, old.dtype), copy=True)
    else:
        buffer = np.zeros(image.shape, dtype)
    yield Preview(buffer, keep)
    buffer3 = buffer.reshape(shape3)
    yield "Loading the model..."
    model = get_model(source, device)
    yield f"Segmenting with {model.name} on {model.device}..."
    options, notes = _resolve_z_step(image, options)
    from ..stack_setup import settle_contrast, will_guess

    if will_guess(model, options.invert, guess_contrast):
        yield "Checking the stack's contrast..."
        invert, guessed = settle_contrast(model, image, options.pixel_ratio, False, guess_contrast)
        if invert:
            options = dataclasses.replace(options, invert=True)
            notes.append("The contrast looks reversed (bright membranes on dark): inverted for the model "
                         "(untick Guess reversed contrast to take it as it is).")
        elif guessed:
            notes.append("The contrast may be reversed (the model is nearly as sure of the stack inverted): "
                         "tick Inverted contrast if membranes and mitochondria are bright on dark.")
    mask = np.zeros(shape3, np.uint8)
    links: list[bool] = []
    for r in iter_predict(model, image, options):
        if r.index > 0 and r.linked is not None:
            links.append(r.linked)
        mask[r.index] = r.mask
        if r.index not in keep:
            buffer3[r.index] = r.mask
        if recorder is not None:
            recorder(r)
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
    labels = labels.reshape(image.shape)
    changed = None
    if isinstance(old, np.ndarray) and old.shape == labels.shape:
        diff = old != labels
        if np.count_nonzero(diff) <= UNDO_MAX_VOXELS:
            changed = np.nonzero(diff)
    cut = breaks_note(links)
    if cut:
        notes.append(cut[0].upper() + cut[1:] + ".")
    return SegmentOutcome(model.name, output.reshape(image.shape), labels, list(keep), changed, notes, options)


def _resolve_z_step(image, options):
    """(options with the stack's z step, estimated once here when not given; notes for the
    user): the run says when a near-isotropic stack was smoothed over several slices. The
    decision is :func:`~napari_mitoseg.neighbours.plan_smoothing`'s, as on the command line; the
    note names the widget's tick box instead of ``--ortho``."""
    from ..inference import PredictOptions
    from ..neighbours import plan_smoothing, reach

    options = options or PredictOptions()
    if not options.z_smooth or options.ortho or image.ndim != 3:
        return options, []
    wide, step, _ = plan_smoothing(image, options.z_step)
    options = dataclasses.replace(options, z_step=step)
    if not wide:
        return options, []
    return options, [f"Near-isotropic stack (z step about {step:.1f} pixels): each slice was "
                     f"smoothed with up to {reach(image.shape[1:])} on either side; Ortho planes may do "
                     "better (about 3x slower)."]


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
        extra_keep: Sequence[int] = (), pixel_size_nm: float | None = None, recorder=None,
        guess_contrast: bool | None = None, parent: QObject | None = None,
    ) -> None:
        super().__init__(parent)
        self.viewer, self.image_layer, self.source = viewer, image_layer, source
        self.device, self.options, self.instances, self.min_size = device, options, instances, min_size
        self.target_name = target_name or f"{image_layer.name} mitochondria"
        self.extra_keep = sorted({int(z) for z in extra_keep})
        self.pixel_size_nm = pixel_size_nm
        self.guess_contrast = guess_contrast
        #: called with each SliceResult in the worker (read it only once the run is done)
        self.recorder = recorder
        self.worker = None
        self.layer = None
        self.kept: list[int] = []
        self._created = False
        self._restore: tuple | None = None  # (layer, original data array, editable)
        self._buffer3: np.ndarray | None = None
        self._active = False
        self._landing = False  # the result came back and is being put on the layer
        self._drawn = 0.0  # when the preview was last redrawn (perf_counter)
        self._stale = False  # a slice in view changed since the preview was last redrawn
        #: how many times the preview was redrawn (layer.refresh) during the run
        self.redraws = 0
        #: whether the finished run can be undone on the layer (Ctrl+Z)
        self.undoable = False
        #: whether the finished run left the layer exactly as it was
        self.unchanged = False
        #: what the finished run says about its z-smoothing (sentences)
        self.notes: list[str] = []

    @property
    def undo_note(self) -> str:
        """A sentence for the user when the finished run can be undone on the layer (or changed
        nothing), else ""."""
        if self.unchanged:
            return " The result is the same as before."
        return " Undo (Ctrl+Z on the layer) brings back the previous result." if self.undoable else ""

    # ------------------------------------------------------------------ the result layer

    def _own_layer(self, name: str):
        """The labels layer called ``name`` when this plugin made it (it records the model that
        made it), else None: a layer the plugin did not make (a ground truth, a file) is never
        written into."""
        from napari.layers import Labels

        # (LayerList has no .get; a layer of another kind with the name is not ours either)
        return next((ly for ly in self.viewer.layers if ly.name == name and isinstance(ly, Labels)
                     and MODEL_NAME in ly.metadata), None)

    def _free_name(self, name: str) -> str:
        """``name``, or ``name (2)``, ``name (3)``... when a layer the plugin did not make has it."""
        taken = {ly.name for ly in self.viewer.layers}
        k, free = 2, name
        while free in taken:
            free, k = f"{name} ({k})", k + 1
        return free

    def _add_layer(self, data, name: str):
        """A new result layer at the image's scale, translate and units."""
        image = self.image_layer
        return self.viewer.add_labels(data, name=name, scale=image.scale, translate=image.translate,
                                      units=image.units, opacity=0.6)

    # ------------------------------------------------------------------ main thread

    def start(self) -> None:
        """Prepare the result layer and start the worker (raises ValueError on bad input)."""
        from napari.qt.threading import create_worker

        from ..inference import check_stack

        avoid_llvm_clash()

        image = layer_array(self.image_layer)
        check_stack(image)
        shape = tuple(image.shape)
        dtype = np.dtype(np.int32 if self.instances else np.uint8)
        name = self.target_name
        existing = self._own_layer(name)
        old, outputs = None, (None, None)
        if existing is not None and tuple(existing.data.shape) == shape:
            old = existing.data  # read (never written) by the worker: the slices painted, the undo step
            outputs = (model_output(existing), model_output(existing, PREVIOUS_OUTPUT))
        if existing is not None:
            # the preview goes into a fresh buffer the worker makes; the layer's array is kept
            self._restore = (existing, existing.data, existing.editable)
            self.layer = existing
        else:
            self.layer = self._add_layer(np.zeros(shape, dtype), self._free_name(name))
            self._created = True
        self.layer.editable = False  # painting now would be lost when the result lands
        self.worker = create_worker(
            segment_job, self.source, self.device, image, self.options, self.instances,
            self.min_size, old, outputs, self.extra_keep, dtype, self.recorder, self.guess_contrast,
            _ignore_errors=True,
            _start_thread=False,
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
        if isinstance(item, Preview):
            self.kept = item.kept
            self._buffer3 = item.buffer
            self.layer.data = item.buffer
            self.layer.editable = False  # (napari unlocks a layer whose data is set)
            self._drawn = time.perf_counter()
            if self.kept:
                self.status.emit(f"Keeping your painted slices {self.kept} exactly...")
            return
        # the worker wrote the slice into the buffer; redraw now and then, not per slice, and
        # only when a slice in view changed (napari reads the others from the buffer when shown)
        self._stale = self._stale or self._in_view(item.index)
        now = time.perf_counter()
        if self._stale and now - self._drawn >= PREVIEW_INTERVAL_S and self.layer in self.viewer.layers:
            self.layer.refresh()
            self.redraws += 1
            self._drawn = now
            self._stale = False
        self.progress.emit(item.index + 1, item.total)

    def _in_view(self, z: int) -> bool:
        """Whether slice ``z`` of the result is drawn now (any slice is, in 3D)."""
        layer = self.layer
        if layer is None or layer.ndim < 3 or self.viewer.dims.ndisplay == 3:
            return True
        axis = self.viewer.dims.ndim - layer.ndim
        shown = (self.viewer.dims.point[axis] - layer.translate[0]) / layer.scale[0]
        return int(round(shown)) == z

    def _on_returned(self, out: SegmentOutcome) -> None:
        self._landing = True
        self.notes = list(out.notes)
        if self.options is not None and out.options is not None and out.options.invert != self.options.invert:
            # the contrast as the run took it (guessed): the fine-tune and Segment again follow it
            self.options = dataclasses.replace(self.options, invert=out.options.invert)
        layer = self.layer
        if layer not in self.viewer.layers:  # the user deleted it meanwhile
            layer = self._add_layer(out.labels, self._free_name(self.target_name))
        elif self._restore is not None and self._can_undo(self._restore[1], out):
            self._land_in_steps(layer, self._restore[1], out)
            return
        else:
            layer.data = out.labels
        self._land(layer, out)

    @staticmethod
    def _can_undo(original, out: SegmentOutcome) -> bool:
        """Whether the result can land as one undo step over ``original`` (the data the layer
        had): an in-memory array of the same shape, and a change no larger than
        :data:`UNDO_MAX_VOXELS` (else the worker sent no ``changed``)."""
        return (out.changed is not None and isinstance(original, np.ndarray)
                and original.shape == out.labels.shape)

    def _land_in_steps(self, layer, original, out: SegmentOutcome) -> None:
        """Put the result on ``layer`` as one undo step over ``original`` (Ctrl+Z brings it
        back), writing :data:`LAND_CHUNK` changed voxels per turn of the event loop so that
        a large change does not freeze the viewer; then :meth:`_land`."""
        dtype = np.result_type(original.dtype, out.labels.dtype)
        layer.data = original if original.dtype == dtype else original.astype(dtype)
        layer.editable = False  # (setting data unlocks it) still ours until it has landed
        history = contextlib.ExitStack()
        history.enter_context(layer.block_history())  # one Ctrl+Z for the whole run
        n = out.changed[0].size

        def step(start: int = 0) -> None:
            if layer not in self.viewer.layers:  # deleted meanwhile: land as a new layer
                history.close()
                self._land(self._add_layer(out.labels, self._free_name(self.target_name)), out)
                return
            stop = min(n, start + LAND_CHUNK)
            where = tuple(a[start:stop] for a in out.changed)
            if stop > start:
                layer.data_setitem(where, out.labels[where], refresh=stop >= n)
            if stop < n:
                QTimer.singleShot(0, lambda: step(stop))
                return
            history.close()
            self.undoable = n > 0
            self.unchanged = n == 0
            self._land(layer, out)

        step()

    def _land(self, layer, out: SegmentOutcome) -> None:
        """The result is on ``layer``: record what made it, unlock it, report."""
        # (each set redraws the layer: only when they differ)
        if not np.array_equal(layer.scale, self.image_layer.scale):
            layer.scale = self.image_layer.scale
        if not np.array_equal(layer.translate, self.image_layer.translate):
            layer.translate = self.image_layer.translate
        if self._restore is not None and MODEL_OUTPUT in layer.metadata:
            layer.metadata[PREVIOUS_OUTPUT] = layer.metadata[MODEL_OUTPUT]
        layer.metadata[MODEL_OUTPUT] = out.output
        layer.metadata[MODEL_NAME] = out.model_name
        layer.metadata[INSTANCES] = self.instances
        layer.metadata[OPTIONS] = dataclasses.asdict(self.options) if self.options else {}
        layer.metadata[CORRECTED] = list(out.kept)
        layer.metadata[PIXEL_SIZE_NM] = self.pixel_size_nm
        layer.editable = True if self._restore is None else self._restore[2]
        if has_physical_size(self.image_layer):
            show_in_nm(self.viewer, [self.image_layer, layer])
        self.layer = layer
        self._finish()
        self.done.emit(layer)

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
        if self._active and not self._landing:
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

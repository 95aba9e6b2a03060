"""The "Checked regions" of the Fine-tune widget: rectangles and polygons on a Shapes layer mark
the part of each corrected slice you checked; only those pixels train, the rest of the slice is
unlabelled (:mod:`napari_mitoseg.training.regions`).

A shape drawn on slice z of a 3D view carries z in its first coordinate and marks that slice; a
2D Shapes layer's shapes mark every slice. A training slice with no shape on it trains whole.

:func:`snapshot` copies the shapes on the main thread (cheap: their vertices, in the image's
pixels); :func:`region_masks` and :func:`region_note` rasterise them in a worker with napari's
own :meth:`Shapes.to_masks`, one slice at a time. :class:`CheckedRegions` is the row of controls
and the note under it.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass

import numpy as np
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QHBoxLayout, QPushButton, QVBoxLayout, QWidget

from ._common import layer_array
from ._controls import LayerChoice, message_label

#: layer.metadata key marking a Shapes layer made by "New" for checked regions
REGIONS_KEY = "mitoseg_checked_regions"
#: name of the Shapes layer "New" adds
REGIONS_NAME = "checked regions"
#: the choice meaning no layer: every training slice trains whole
WHOLE = "(whole slices)"


class RegionError(ValueError):
    """The shapes cannot mark regions of the image (the message says why)."""


@dataclass(frozen=True)
class RegionSnapshot:
    """The shapes of a layer at one moment: each one's vertices in the image's data coordinates
    ((Z, Y, X) for a 3D layer, (Y, X) for a 2D one, floats) and its type ("rectangle", ...)."""

    data: tuple[np.ndarray, ...]
    types: tuple[str, ...]
    ndim: int

    def key(self, z: int, depth: int) -> tuple:
        """What the region of slice ``z`` depends on: its shapes' types and vertices."""
        idx = [*self.by_slice(depth).get(None, []), *self.by_slice(depth).get(z, [])]
        return tuple((self.types[i], self.data[i][:, -2:].tobytes()) for i in idx)

    def by_slice(self, depth: int) -> dict[int | None, list[int]]:
        """Shape indices by the slice they are drawn on (None: a 2D layer's, on every slice;
        slices outside 0..depth-1 are left out)."""
        out: dict[int | None, list[int]] = {}
        for i, d in enumerate(self.data):
            z = None if self.ndim == 2 else int(round(float(d[0, 0])))
            if z is None or 0 <= z < depth:
                out.setdefault(z, []).append(i)
        return out


def _is_regions_layer(layer) -> bool:
    return bool(layer.metadata.get(REGIONS_KEY)) or "checked" in layer.name.lower()


def snapshot(shapes, reference) -> RegionSnapshot:
    """The shapes of ``shapes`` (a Shapes layer) in the data coordinates of ``reference`` (the
    image layer): scale and translate of both are taken into account (not rotation or shear)."""
    nd = shapes.ndim
    if nd not in (2, 3) or nd > reference.ndim:
        raise RegionError(f"'{shapes.name}' is a {nd}D Shapes layer; regions of a {reference.ndim}D image "
                          "are drawn on a 2D or 3D Shapes layer (use 'New' beside the choice)")
    s_scale, s_shift = np.asarray(shapes.scale, float), np.asarray(shapes.translate, float)
    r_scale = np.asarray(reference.scale, float)[-nd:]
    r_shift = np.asarray(reference.translate, float)[-nd:]
    factor, offset = s_scale / r_scale, (s_shift - r_shift) / r_scale
    data = tuple(np.asarray(d, float) * factor + offset for d in shapes.data)
    return RegionSnapshot(data, tuple(shapes.shape_type), nd)


def region_masks(snap: RegionSnapshot, shape: Sequence[int], slices: Sequence[int],
                 zoom: float = 1.0) -> dict[int, np.ndarray]:
    """Each of ``slices`` with a shape on it -> its (Y, X) bool mask of the checked pixels, made
    by napari's :meth:`Shapes.to_masks` (``shape``: the image's (Z, Y, X) or (Y, X)). Slices
    without a shape (or whose shapes cover no pixel) are left out: they train whole. ``zoom``
    below 1 makes smaller masks (``zoom`` times each side), for a quick preview of the shares."""
    yx = tuple(int(np.ceil(int(n) * zoom)) for n in shape[-2:])
    depth = int(shape[0]) if len(shape) == 3 else 1
    groups = snap.by_slice(depth)
    everywhere = groups.get(None, [])
    out = {}
    for z in sorted({int(s) for s in slices}):
        idx = [*everywhere, *groups.get(z, [])]
        mask = np.zeros(yx, bool)
        for start in range(0, len(idx), SHAPES_AT_ONCE):
            _paint(mask, [snap.data[i][:, -2:] * zoom for i in idx[start : start + SHAPES_AT_ONCE]],
                   [snap.types[i] for i in idx[start : start + SHAPES_AT_ONCE]])
        if mask.any():
            out[z] = mask
    return out


#: shapes rasterised together: each gets a mask of the largest one's bounding box
SHAPES_AT_ONCE = 8


def _paint(mask: np.ndarray, data: list[np.ndarray], types: list[str]) -> None:
    """Set the pixels of ``mask`` inside the 2D shapes (vertices ``data``, pixel coordinates) with
    :meth:`Shapes.to_masks`, each shape rasterised in its own bounding box (moved to the origin
    by whole pixels), so many small regions on a big slice cost their own size, not the slice's."""
    from napari.layers import Shapes

    origins = [np.floor(d.min(axis=0)).astype(int) for d in data]
    local = [d - o for d, o in zip(data, origins, strict=True)]
    box = np.max([np.ceil(d.max(axis=0)).astype(int) + 2 for d in local], axis=0)
    masks = Shapes(local, shape_type=types).to_masks(mask_shape=box)
    for m, o in zip(masks, origins, strict=True):
        lo = np.maximum(o, 0)
        hi = np.minimum(o + box, mask.shape)
        if (hi > lo).all():
            mask[lo[0] : hi[0], lo[1] : hi[1]] |= m[lo[0] - o[0] : hi[0] - o[0], lo[1] - o[1] : hi[1] - o[1]]


#: the note's shares are measured on masks of at most this many pixels a side (a preview: a
#: region of a 4k x 4k slice rasterises 16x faster, its share within a percent)
PREVIEW_SIDE = 1024


def iter_region_note(snap: RegionSnapshot | None, shape: Sequence[int], slices: Sequence[int],
                     cache: dict | None = None) -> Generator[None, None, str]:
    """What will train: "slice 3: 48% checked; slice 7: whole slice", and the slices whose
    shapes lie on no training slice. Yields after each slice (a worker can stop between them);
    ``cache`` keeps each slice's share by its shapes, so an edit re-measures only its slice."""
    from ..training import describe_shares

    if snap is None:
        return ""
    if not snap.data:
        return "No region drawn yet: every training slice trains whole."
    if not slices:
        return "No training slice yet."
    cache = {} if cache is None else cache
    depth = int(shape[0]) if len(shape) == 3 else 1
    zoom = min(1.0, PREVIEW_SIDE / max(shape[-2:]))
    shares: dict[int, float | None] = {}
    for z in sorted(set(slices)):
        key = (snap.key(z, depth), tuple(shape[-2:]), zoom)
        if key not in cache:
            mask = region_masks(snap, shape, [z], zoom).get(z)
            cache[key] = None if mask is None else float(mask.mean())
        shares[z] = cache[key]
        yield
    idle = sorted(z for z in snap.by_slice(depth) if z is not None and z not in shares)
    elsewhere = f" Regions on slice(s) {idle} are on no training slice." if idle else ""
    return f"Trains {describe_shares(shares)}.{elsewhere}"


def region_note(snap: RegionSnapshot | None, shape: Sequence[int], slices: Sequence[int]) -> str:
    """:func:`iter_region_note` run to the end."""
    from .._generators import result_of

    return result_of(iter_region_note(snap, shape, slices))


class CheckedRegions(QWidget):
    """The Shapes layer of checked regions ("(whole slices)": none), a "New" button that adds one
    at the image's scale, and a note of what will train, updated shortly after the shapes or the
    training slices change (the masks are made in a worker).

    ``reference()`` gives the image layer (shape, scale); ``slices()`` the training slices.
    """

    def __init__(self, viewer, reference: Callable[[], object], slices: Callable[[], list[int]],
                 parent: QWidget | None = None) -> None:
        from napari.layers import Shapes

        super().__init__(parent)
        self._viewer, self._reference, self._slices = viewer, reference, slices
        self.choice = LayerChoice(viewer, Shapes, prefer=_is_regions_layer, none=WHOLE, parent=self)
        self.choice.setToolTip("A Shapes layer whose rectangles and polygons mark the part of each "
                               "corrected slice you checked: only that part trains. A slice without "
                               "a shape trains whole.")
        self.new_button = QPushButton("New")
        self.new_button.setToolTip(f"Add a Shapes layer '{REGIONS_NAME}' at the image's scale and start "
                                   "drawing rectangles on the corrected slices")
        self.new_button.clicked.connect(self.add_layer)
        self.note = message_label()
        self.note.setVisible(False)  # while empty: no space taken on a small screen
        row = QHBoxLayout()
        row.addWidget(self.choice, 1)
        row.addWidget(self.new_button)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.setSpacing(3)
        lay.addLayout(row)
        lay.addWidget(self.note)
        self._watched = None
        self._worker = None
        self._cache: dict = {}  # each slice's share by its shapes (see iter_region_note)
        self._debounce = QTimer(self)
        self._debounce.setSingleShot(True)
        self._debounce.setInterval(250)
        self._debounce.timeout.connect(self.refresh_note)
        self.choice.layer_changed.connect(self._watch)
        self._watch(self.choice.layer())

    def layer(self):
        """The chosen Shapes layer, or None (whole slices)."""
        return self.choice.layer()

    def add_layer(self):
        """Add an empty Shapes layer for regions at the image's scale, choose it and start
        drawing rectangles."""
        ref = self._reference()
        if ref is None:
            self.say("Choose the image first: the regions layer takes its scale.")
            return None
        layer = self._viewer.add_shapes(
            ndim=ref.ndim, scale=ref.scale, translate=ref.translate, units=ref.units, name=REGIONS_NAME,
            face_color="#3b8bd040", edge_color="#3b8bd0", edge_width=2, metadata={REGIONS_KEY: True})
        self.choice.set_layer(layer)
        layer.mode = "add_rectangle"
        self._viewer.layers.selection.active = layer
        return layer

    def snapshot(self) -> RegionSnapshot | None:
        """The chosen layer's shapes now, in the image's pixels; None for whole slices. Raises
        :class:`RegionError` when they cannot mark the image's regions."""
        layer, ref = self.layer(), self._reference()
        return None if layer is None or ref is None else snapshot(layer, ref)

    def say(self, text: str) -> None:
        """Show ``text`` under the choice (nothing, and no space taken, when empty)."""
        self.note.setText(text)
        self.note.setVisible(bool(text))

    def schedule(self, *args) -> None:
        """Update the note shortly (after drawing or editing the slice list stops)."""
        self._debounce.start()

    def _watch(self, layer) -> None:
        if self._watched is not None:
            self._watched.events.data.disconnect(self.schedule)
        self._watched = layer
        if layer is not None:
            layer.events.data.connect(self.schedule)
            layer.visible = True  # the canvas shows what trains
        self.refresh_note()

    def refresh_note(self) -> None:
        """Copy the shapes (cheap) and compute the note in a worker; a newer call wins."""
        from napari.qt.threading import create_worker

        if self._worker is not None:
            self._worker.quit()
            self._worker = None
        ref = self._reference()
        try:
            snap = self.snapshot()
        except RegionError as exc:
            self.say(str(exc))
            return
        if snap is None:
            self.say("")
            return
        if len(self._cache) > 512:
            self._cache.clear()
        worker = create_worker(iter_region_note, snap, tuple(layer_array(ref).shape), self._slices(),
                               self._cache, _start_thread=False)

        def show(text: str) -> None:
            if worker is self._worker:
                self.say(text)

        worker.returned.connect(show)
        self._worker = worker
        worker.start()

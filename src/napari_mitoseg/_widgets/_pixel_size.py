"""The pixel size controls of the Segment and Fine-tune widgets: the stack's pixel size in nm,
the model's, and the rescaling that follows (or, for a model that records no pixel size, the
plain "pixel size vs model" ratio)."""

from __future__ import annotations

from qtpy.QtCore import Signal
from qtpy.QtWidgets import QDoubleSpinBox, QFormLayout, QHBoxLayout, QLabel, QWidget

from ._common import VOXEL_SIZE_NM, unwrapped
from ._controls import message_label, pixel_ratio_box


def layer_pixel_size_nm(layer) -> tuple[float | None, str]:
    """(pixel size in nm in Y and X, where it came from) of an image layer: its
    ``metadata["voxel_size_nm"]`` (Z, Y, X) when present, else its scale when that is not 1;
    (None, "") when neither says."""
    if layer is None:
        return None, ""
    voxel = layer.metadata.get(VOXEL_SIZE_NM)
    try:
        nm = float(voxel[-1]) if voxel is not None else None
    except (TypeError, ValueError, IndexError):
        nm = None
    if nm is not None and nm > 0:
        return nm, "from the file"
    scale = float(layer.scale[-1])
    if scale != 1.0 and scale > 0:
        return scale, "from the layer's scale"
    return None, ""


def model_spec(source: str | None):
    """The ``ModelSpec`` of the model at ``source``, or None."""
    from ..model import ModelError, read_config, resolve_model_path

    if not source:
        return None
    try:
        return read_config(resolve_model_path(source))[0]
    except ModelError:
        return None


class PixelSizeControls(QWidget):
    """"Pixel size (nm)" of the stack beside the model's, and a line saying what rescaling
    that means. For a model that records no pixel size, the nm box is disabled and the
    "Pixel size vs model" ratio box (``self.ratio``) is shown instead.

    The nm box is filled from the image layer (:func:`layer_pixel_size_nm`) or from a
    segmentation's record (:meth:`set_default`); a value the user types for a layer wins over
    both. ``changed`` fires when the resulting pixel ratio may have changed.
    """

    changed = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._spec = None
        self._layer = None
        self._typed: dict[int, float] = {}  # id of the (unwrapped) layer -> value typed
        self._source = ""
        self._setting = False

        self.nm = QDoubleSpinBox(self)
        self.nm.setRange(0.0, 100_000.0)
        self.nm.setDecimals(2)
        self.nm.setSingleStep(0.5)
        self.nm.setSuffix(" nm")
        self.nm.setSpecialValueText("unknown")
        self.nm.setToolTip("The stack's pixel size in Y and X, in nanometres; filled from the file "
                           "or the layer's scale when they say, else type it")
        self.nm.setMinimumWidth(110)
        self.nm.valueChanged.connect(self._on_nm)
        self.model_label = QLabel("", self)
        self.model_label.setToolTip("The pixel size of the data the model takes as it is")
        nm_row = QHBoxLayout()
        nm_row.setContentsMargins(0, 0, 0, 0)
        nm_row.addWidget(self.nm, 1)
        nm_row.addWidget(self.model_label)
        self.ratio = pixel_ratio_box(self)
        self.ratio.valueChanged.connect(self._update)
        self.ratio_row = QWidget(self)
        ratio_form = QFormLayout(self.ratio_row)
        ratio_form.setContentsMargins(0, 0, 0, 0)
        ratio_form.addRow("Pixel size vs model", self.ratio)
        self.note = message_label()

        form = QFormLayout(self)
        form.setContentsMargins(0, 0, 0, 0)
        form.setVerticalSpacing(3)
        form.addRow("Pixel size", nm_row)
        form.addRow(self.ratio_row)
        form.addRow(self.note)
        self._update()

    # ------------------------------------------------------------------ inputs

    @property
    def model_nm(self) -> float | None:
        return None if self._spec is None else self._spec.pixel_size_nm

    def set_model(self, source: str | None) -> None:
        """The model the stack goes to (a registry name or folder)."""
        self._spec = model_spec(source)
        self._update()

    def set_layer(self, layer) -> None:
        """The image layer; fills the nm box from it unless a value was typed for it."""
        self._layer = layer
        key = id(unwrapped(layer)) if layer is not None else None
        if key in self._typed:
            self._set_nm(self._typed[key], "typed")
        else:
            nm, source = layer_pixel_size_nm(layer)
            self._set_nm(nm, source)

    def set_default(self, nm: float | None, source: str) -> None:
        """A pixel size known from elsewhere (a segmentation's record), unless one was typed."""
        key = id(unwrapped(self._layer)) if self._layer is not None else None
        if nm and key not in self._typed:
            self._set_nm(nm, source)

    def _set_nm(self, nm: float | None, source: str) -> None:
        self._setting = True
        try:
            self.nm.setValue(float(nm) if nm else 0.0)
        finally:
            self._setting = False
        self._source = source if nm else ""
        self._update()

    def _on_nm(self, value: float) -> None:
        if self._setting:
            return
        if self._layer is not None:
            self._typed[id(unwrapped(self._layer))] = value
        self._source = "typed" if value else ""
        self._update()

    # ------------------------------------------------------------------ outputs

    def pixel_size_nm(self) -> float | None:
        """The stack's pixel size in nm, or None when unknown."""
        return self.nm.value() or None

    def pixel_ratio(self) -> float:
        """The pixel ratio to run the model with (raises ``InputError`` with the reason when
        the pixel size does not fit the model)."""
        from ..inference import pixel_ratio_for

        if self.model_nm is None:
            return self.ratio.value()
        return pixel_ratio_for(self.pixel_size_nm(), self._spec)

    def _update(self, *args) -> None:
        from ..inference import InputError

        known = self.model_nm is not None
        self.nm.setEnabled(known)
        self.ratio_row.setVisible(not known)
        self.model_label.setText(f"model: {self.model_nm:g} nm" if known else "model: none")
        if self._spec is None:
            text = ""
        elif not known:
            text = "No pixel size in the model: give the ratio if your pixels differ."
        elif self.pixel_size_nm() is None:
            text = (f"Your pixel size is unknown: slices go to the model as they are (it takes "
                    f"{self.model_nm:g} nm pixels).")
        else:
            nm, where = self.pixel_size_nm(), f" ({self._source})" if self._source else ""
            try:
                ratio = self.pixel_ratio()
            except InputError as exc:
                text = f"Your {nm:g} nm{where}: {exc}."
            else:
                if abs(ratio - 1.0) < 1e-6:
                    text = f"Your {nm:g} nm{where} matches the model's: slices go to it as they are."
                else:
                    how = "enlarged" if ratio > 1 else "shrunk"
                    text = (f"Your {nm:g} nm{where} vs the model's {self.model_nm:g} nm: slices "
                            f"are resized by {ratio:.3g} ({how}) for the model.")
        self.note.setText(text)
        self.note.setVisible(bool(text))
        self.changed.emit()

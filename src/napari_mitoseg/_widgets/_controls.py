"""Qt controls shared by the dock widgets: layer, model and device choices, spin and check boxes,
a plot canvas, message lines and the scrolling, compact dock layout.

No numerics here; only mapping between napari layers / the model registry and Qt controls.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from qtpy.QtCore import QSize, Qt, QTimer, Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QFrame,
    QLabel,
    QScrollArea,
    QSizePolicy,
    QVBoxLayout,
    QWidget,
)


def pixel_ratio_box(parent: QWidget | None = None) -> QDoubleSpinBox:
    """Spin box for ``PredictOptions.pixel_ratio`` (your pixel size / the model's)."""
    from ..inference import PIXEL_RATIO_RANGE

    box = QDoubleSpinBox(parent)
    box.setRange(*PIXEL_RATIO_RANGE)
    box.setSingleStep(0.25)
    box.setDecimals(2)
    box.setValue(1.0)
    box.setToolTip(
        "Your pixel size divided by the pixel size of the model's training data. 2 = your pixels "
        "are twice as large (mitochondria half as many pixels across); slices are resized to "
        "match. Leave 1 for data like the training data."
    )
    return box


def invert_box(parent: QWidget | None = None) -> QCheckBox:
    """Check box for ``PredictOptions.invert``."""
    box = QCheckBox("Inverted contrast", parent)
    box.setToolTip("Bright membranes: check when membranes and mitochondria are bright on a dark background, the "
                   "reverse of the model's training data; slices are inverted for the model.")
    return box

def message_label() -> QLabel:
    """A word-wrapped, selectable label for status and error messages."""
    lab = QLabel("")
    lab.setWordWrap(True)
    lab.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
    lab.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Minimum)
    return lab

class LayerChoice(QComboBox):
    """A combo box of the viewer's layers of some type(s), kept in sync with the layer list.

    ``layer_changed`` fires (with the layer or None) whenever the chosen layer changes, whether
    by the user or because layers were added, removed or renamed. Until the user picks a layer,
    the choice follows ``prefer``: the last preferred layer, and a preferred layer added later
    replaces a choice that is not preferred. ``none`` (e.g. "(whole slices)") adds a first item
    meaning no layer, chosen while no preferred layer exists: other layers then wait for the user.
    """

    layer_changed = Signal(object)

    def __init__(
        self, viewer, types: type | tuple[type, ...], prefer: Callable[[object], bool] | None = None,
        parent: QWidget | None = None, avoid: Callable[[object], bool] | None = None,
        none: str | None = None,
    ) -> None:
        super().__init__(parent)
        self._viewer, self._types, self._prefer, self._avoid = viewer, types, prefer, avoid
        self._none = none
        self._last: str | None = None
        self._picked = False  # the user chose the current layer
        self.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.setMinimumContentsLength(10)
        events = viewer.layers.events
        for emitter in (events.inserted, events.removed, events.reordered, events.renamed):
            emitter.connect(self.refresh)
        self.currentTextChanged.connect(self._emit_if_changed)
        self.activated.connect(self._on_picked)
        self.refresh()

    def _on_picked(self, index: int = -1) -> None:
        self._picked = True

    def refresh(self, event=None) -> None:
        layers = [ly for ly in self._viewer.layers if isinstance(ly, self._types)]
        names = [ly.name for ly in layers]
        # ``avoid``: listed, but never chosen without the user
        auto = [ly for ly in layers if self._avoid is None or not self._avoid(ly)]
        auto_names = [ly.name for ly in auto]
        current = self.currentText()
        preferred = [ly.name for ly in auto if self._prefer is None or self._prefer(ly)]
        if self._none is not None:
            names, auto_names = [self._none, *names], [self._none, *auto_names]
        if current not in names:
            self._picked = False
        if current not in names or (not self._picked and (
                current not in auto_names or (preferred and current not in preferred))):
            fallback = self._none if self._none is not None else (auto_names[-1] if auto_names else "")
            current = preferred[-1] if preferred else fallback
        self.blockSignals(True)
        self.clear()
        self.addItems(names)
        if current:
            self.setCurrentText(current)
        else:
            self.setCurrentIndex(-1)
        self.blockSignals(False)
        self._emit_if_changed(self.currentText())

    def _emit_if_changed(self, text: str) -> None:
        if text != self._last:
            self._last = text
            self.layer_changed.emit(self.layer())

    def layer(self):
        """The chosen layer, or None."""
        name = self.currentText()
        if name and name != self._none and name in self._viewer.layers \
                and isinstance(self._viewer.layers[name], self._types):
            return self._viewer.layers[name]
        return None

    def set_layer(self, layer) -> None:
        """Choose ``layer`` (a layer or its name), as the user would."""
        self.setCurrentText(getattr(layer, "name", layer))
        self._picked = True


#: item data role holding a model's registry name (the text may add "(default)")
NAME_ROLE = Qt.ItemDataRole.UserRole + 1


class ModelChoice(QComboBox):
    """The registry's models (shipped first, then the user's), re-listed when the list opens.

    Each item's data is the model folder; its tooltip is the model card summary. The default
    model (``model.DEFAULT_MODEL``) reads "<name> (default)" and is chosen at first.
    ``availability_changed(bool)`` says whether any model exists.
    """

    availability_changed = Signal(bool)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._available: bool | None = None
        self.refresh()

    def showPopup(self) -> None:  # noqa: N802 - Qt override
        self.refresh()
        super().showPopup()

    def refresh(self) -> None:
        from ..model import DEFAULT_MODEL, list_models

        entries = list_models()
        current = self.name() or DEFAULT_MODEL
        before = self.currentText()
        self.blockSignals(True)
        self.clear()
        for i, e in enumerate(entries):
            self.addItem(f"{e.name} (default)" if e.name == DEFAULT_MODEL else e.name, str(e.path))
            self.setItemData(i, e.name, NAME_ROLE)
            origin = "shipped model" if e.shipped else f"your model ({e.path.parent})"
            tip = f"{e.summary}\n{origin}" if e.summary else origin
            self.setItemData(i, tip, Qt.ItemDataRole.ToolTipRole)
        if not entries:
            self.addItem("no model installed", None)
        i = self.findData(current, NAME_ROLE)
        if i >= 0:
            self.setCurrentIndex(i)
        self.blockSignals(False)
        if self.currentText() != before:
            self.currentIndexChanged.emit(self.currentIndex())
        self.setEnabled(bool(entries))
        self.setToolTip(self.itemData(self.currentIndex(), Qt.ItemDataRole.ToolTipRole) or "")
        if self._available is not bool(entries):
            self._available = bool(entries)
            self.availability_changed.emit(self._available)

    def source(self) -> str | None:
        """The chosen model folder, or None when there is no model."""
        return self.currentData()

    def name(self) -> str | None:
        """The chosen model's registry name, or None when there is no model."""
        return self.currentData(NAME_ROLE)

    def select(self, name: str) -> bool:
        """Choose the model called ``name`` (re-listing first); False if it is not there."""
        self.refresh()
        i = self.findData(name, NAME_ROLE)
        if i >= 0:
            self.setCurrentIndex(i)
        return i >= 0


def no_model_message() -> str:
    from ..model import DEFAULT_MODEL, SHIPPED_DIR, user_model_dir

    return (
        f"No model is installed yet. The shipped model '{DEFAULT_MODEL}' belongs in "
        f"{SHIPPED_DIR / DEFAULT_MODEL}; fine-tuned models are read from {user_model_dir()} "
        "(or $MITOSEG_MODEL_DIR). Put a model folder there and open the model list again."
    )

class DeviceChoice(QComboBox):
    """'auto' plus the devices torch can use here (CUDA, MPS, CPU).

    Asking torch which devices it has imports it (seconds); unless it is imported already, that
    happens in a worker thread while the choice offers 'auto' and 'cpu', and ``ready`` fires
    when the list is complete.
    """

    ready = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.addItems(["auto", "cpu"])
        self.setToolTip("auto: CUDA if present, else Apple MPS, else the CPU")
        self.is_ready = False
        self._worker = None
        if "torch" in sys.modules:
            from ..model import available_devices

            self._add(available_devices())
        else:
            self._look_up()

    def _look_up(self) -> None:
        from napari.qt.threading import create_worker

        from ._common import avoid_llvm_clash

        avoid_llvm_clash()  # before torch is imported, in any thread
        self._worker = create_worker(_devices, _ignore_errors=True, _start_thread=False)
        self._worker.returned.connect(self._add)
        self._worker.errored.connect(lambda exc: self._add(["cpu"]))
        self._worker.start()

    def _add(self, devices) -> None:
        for d in devices:
            if self.findText(d) < 0:
                self.insertItem(self.count() - 1 if d != "cpu" else self.count(), d)
        self.is_ready = True
        self.ready.emit()

    def device(self) -> str:
        return self.currentText()


def _devices() -> list[str]:
    """Worker: the devices torch can use (imports torch)."""
    from ..model import available_devices

    return available_devices()


class PlotCanvas(QWidget):
    """A small matplotlib figure (FigureCanvasQTAgg) with one axes, ``height_px`` tall."""

    def __init__(self, parent: QWidget | None = None, height_px: int = 120) -> None:
        super().__init__(parent)
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure
        from qtpy.QtWidgets import QVBoxLayout

        self.figure = Figure(figsize=(4.0, height_px / 90), dpi=90, layout="constrained")
        self.figure.get_layout_engine().set(h_pad=0.02, w_pad=0.02)
        self.axes = self.figure.add_subplot(111)
        self.axes.tick_params(labelsize="small")
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setFixedHeight(height_px)
        self.canvas.setMinimumWidth(160)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.canvas)

    def draw(self) -> None:
        self.canvas.draw_idle()


class _DockScroll(QScrollArea):
    """A vertical scroll area as wide as its content needs, asking for at most
    :data:`DOCK_HEIGHT_HINT` pixels of height and content to fit the dock's width."""

    def _extra(self) -> int:
        return self.verticalScrollBar().sizeHint().width() + 2 * self.frameWidth()

    def sizeHint(self) -> QSize:  # noqa: N802 - Qt override
        inner = self.widget().sizeHint()
        return QSize(inner.width() + self._extra(), min(inner.height(), DOCK_HEIGHT_HINT))

    def minimumSizeHint(self) -> QSize:  # noqa: N802 - Qt override
        return QSize(self.widget().minimumSizeHint().width() + self._extra(), 60)

    def showEvent(self, event) -> None:  # noqa: N802 - Qt override
        super().showEvent(event)
        if not getattr(self, "_shared", False):
            self._shared = True
            QTimer.singleShot(0, self._share_space)

    def _share_space(self) -> None:
        """Qt gives a dock added below others only its minimum height; when this one first
        shows, split the height of its dock area among the docks there by their size hints."""
        from qtpy.QtWidgets import QDockWidget, QMainWindow

        window = self.window()
        mine = next((p for p in _parents(self) if isinstance(p, QDockWidget)), None)
        if not isinstance(window, QMainWindow) or mine is None or mine.isFloating():
            return
        area = window.dockWidgetArea(mine)
        docks = [d for d in window.findChildren(QDockWidget)
                 if d.isVisible() and not d.isFloating() and window.dockWidgetArea(d) == area]
        if len(docks) > 1:
            window.resizeDocks(docks, [d.sizeHint().height() for d in docks], Qt.Orientation.Vertical)


def _parents(widget: QWidget):
    p = widget.parentWidget()
    while p is not None:
        yield p
        p = p.parentWidget()


#: the height (pixels) a dock widget asks for at most; more content scrolls
DOCK_HEIGHT_HINT = 320


def scrollable(widget: QWidget) -> QVBoxLayout:
    """Put a vertical scroll area in ``widget`` and return the (compact) layout inside it, so
    that several docked widgets share a small screen: each scrolls instead of growing the
    window."""
    inner = QWidget()
    layout = QVBoxLayout(inner)
    layout.setContentsMargins(4, 4, 4, 4)
    layout.setSpacing(4)
    area = _DockScroll(widget)
    area.setWidgetResizable(True)
    area.setFrameShape(QFrame.Shape.NoFrame)
    area.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAsNeeded)
    area.setWidget(inner)
    outer = QVBoxLayout(widget)
    outer.setContentsMargins(0, 0, 0, 0)
    outer.addWidget(area)
    widget.scroll_area = area
    return layout


def compact_form() -> QFormLayout:
    """A form layout with little spacing, for dock widgets."""
    form = QFormLayout()
    form.setVerticalSpacing(3)
    form.setHorizontalSpacing(6)
    form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
    return form

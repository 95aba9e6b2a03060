"""Dock widget "Evaluate segmentation": scores, a per-slice IoU plot and an error overlay; without
a ground truth, the per-slice uncertainty the segmentation recorded."""

from __future__ import annotations

from dataclasses import dataclass, field

import napari
import numpy as np
from napari.layers import Image, Labels
from napari.utils.notifications import show_error, show_warning
from qtpy.QtCore import Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QFormLayout,
    QLabel,
    QPushButton,
    QWidget,
)

from ._common import CORRECTED, is_mask_layer, layer_array, same_layer, written_by_plugin
from ._controls import LayerChoice, PlotCanvas, message_label, scrollable
from ._uncertainty_panel import SLICE_UNCERTAINTY

#: colours of the error overlay: 1 false positive, 2 false negative
ERROR_COLOURS = {1: "magenta", 2: "cyan"}
#: the colour key of the error layer, shown in the widget
ERROR_KEY = ('<span style="color:magenta">&#9632;</span> false positive (magenta: predicted, not '
             'mitochondrion) &nbsp;<span style="color:cyan">&#9632;</span> false negative (cyan: '
             'missed)')
#: how a ground truth is drawn once scored: its outline in one colour, over the filled prediction
TRUTH_COLOUR, TRUTH_CONTOUR = "yellow", 2


@dataclass
class Evaluation:
    """What :func:`evaluate_job` finds: the report, the error map, emptiness flags and, when
    some slices were corrected by the user, the scores of the other slices."""

    report: object  # metrics.Report
    errors: np.ndarray
    pred_empty: bool
    gt_empty: bool
    corrected: list[int] = field(default_factory=list)
    uncorrected: object | None = None  # metrics.Scores over the slices not corrected


def evaluate_job(pred, gt, corrected=()) -> Evaluation:
    """Worker: scores of binarised ``pred`` against ``gt``, the error map, emptiness flags and
    the scores of the slices not in ``corrected`` (when some are)."""
    from ..metrics import error_map, evaluate, score

    p = np.asarray(pred) > 0
    g = np.asarray(gt) > 0
    n = p.shape[0] if p.ndim == 3 else 1
    corrected = sorted({int(z) for z in corrected if 0 <= int(z) < n})
    others = [z for z in range(n) if z not in corrected]
    uncorrected = None
    if corrected and others and p.ndim == 3:
        uncorrected = score(p[others], g[others])
    return Evaluation(evaluate(p, g), error_map(p, g), not p.any(), not g.any(),
                      corrected if uncorrected is not None else [], uncorrected)


def _is_prediction(layer) -> bool:
    return layer.name.endswith("mitochondria")


def _not_a_prediction(layer) -> bool:
    """Layers the prediction choice does not take by itself: those the plugin did not make (a
    ground truth, a mask opened from a file); the user may still pick them."""
    return not written_by_plugin(layer)


def _is_ground_truth(layer) -> bool:
    name = layer.name.lower()
    by_name = "ground truth" in name or name.endswith((" gt", "_gt", "mask"))
    return by_name or (is_mask_layer(layer) and not written_by_plugin(layer))


class EvaluateWidget(QWidget):
    """Score a prediction (labels) against ground truth (labels or image, both binarised ``> 0``).

    Shows IoU, Dice, precision and recall over the stack, a per-slice IoU bar plot (click a bar
    to go to that slice) and adds an error layer "<prediction> errors": 1 = false positive
    (magenta), 2 = false negative (cyan). ``evaluated`` fires with the report (None on error).

    Without a ground truth (none chosen, the prediction itself, or an EM image rather than a
    mask), a prediction segmented with "Uncertainty" gets its per-slice uncertainty plotted
    instead; ``uncertainty_plotted`` fires with the values.
    """

    evaluated = Signal(object)
    uncertainty_plotted = Signal(list)

    def __init__(self, napari_viewer: napari.viewer.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.report = None
        self.uncertainty: list[float] | None = None  # the plotted per-slice uncertainty
        self.worker = None
        self._scored_layer = self._truth_layer = None

        self._build_choices()
        scores = self._build_scores()
        self.plot = PlotCanvas(self, height_px=140)
        self.plot.axes.set_axis_off()
        self.plot.canvas.mpl_connect("button_press_event", self._on_click)
        self.plot.canvas.setToolTip("IoU per slice: click a bar to go to that slice")
        self.message = message_label()

        form = QFormLayout()
        form.addRow("Prediction", self.pred_choice)
        form.addRow("Ground truth", self.gt_choice)
        form.addRow(self.show_errors)
        form.addRow(self.error_key)
        layout = scrollable(self)
        layout.addLayout(form)
        layout.addWidget(self.run_button)
        layout.addLayout(scores)
        layout.addWidget(self.plot)
        layout.addWidget(self.message)
        layout.addStretch(1)
        self.pred_choice.layer_changed.connect(self._on_choice)
        self._on_choice()

    def _build_choices(self) -> None:
        self.pred_choice = LayerChoice(self.viewer, Labels, prefer=_is_prediction, avoid=_not_a_prediction,
                                       parent=self)
        self.pred_choice.setToolTip("The segmentation to score (any label > 0 is mitochondrion)")
        self.gt_choice = LayerChoice(self.viewer, (Labels, Image), prefer=_is_ground_truth, parent=self)
        self.gt_choice.setToolTip("The ground truth: a labels or image layer, > 0 is mitochondrion")
        self.show_errors = QCheckBox("Add an error layer")
        self.show_errors.setToolTip("Layer '<prediction> errors': magenta = false positive (predicted, "
                                    "not mitochondrion), cyan = false negative (missed)")
        self.show_errors.setChecked(True)
        self.error_key = QLabel(ERROR_KEY)
        self.error_key.setWordWrap(True)
        self.show_errors.toggled.connect(self.error_key.setVisible)
        self.run_button = QPushButton("Evaluate")
        self.run_button.clicked.connect(self.start)

    def _build_scores(self) -> QFormLayout:
        self.values = {k: QLabel("-") for k in ("iou", "dice", "precision", "recall")}
        scores = QFormLayout()
        for key, title in (("iou", "IoU"), ("dice", "Dice"), ("precision", "Precision"),
                           ("recall", "Recall")):
            scores.addRow(title, self.values[key])
        self.uncorrected = QLabel("-")
        self.uncorrected.setWordWrap(True)
        self.uncorrected.setToolTip("IoU of the slices you did not correct (fine-tuning trains on the "
                                    "corrected ones, which then score 1.0); shown when the "
                                    "prediction records corrected slices")
        scores.addRow("Uncorrected", self.uncorrected)
        return scores

    def _on_choice(self, layer=None) -> None:
        """Say what to do when no segmentation is there to score."""
        if self.pred_choice.layer() is None and self.pred_choice.count():
            self.message.setText("No segmentation to score yet: segment the image with 'Segment "
                                 "mitochondria', or choose the prediction layer above.")
        elif self.message.text().startswith("No segmentation to score"):
            self.message.setText("")

    # ------------------------------------------------------------------ actions

    def start(self):
        """Check the chosen layers and score them in a worker thread."""
        from napari.qt.threading import create_worker

        pred, gt = self.pred_choice.layer(), self.gt_choice.layer()
        if pred is not None and _no_truth(pred, gt) and _recorded_uncertainty(pred):
            return self.plot_uncertainty(pred)
        if pred is None or gt is None:
            return self._fail("Choose a prediction (labels) layer and a ground-truth layer.")
        if same_layer(pred, gt):
            return self._fail("The prediction and the ground truth are the same layer; choose two.")
        p, g = layer_array(pred), layer_array(gt)
        for layer, arr in ((pred, p), (gt, g)):
            if 0 in arr.shape:
                return self._fail(f"Layer '{layer.name}' is empty (shape {tuple(arr.shape)}).")
        if tuple(p.shape) != tuple(g.shape):
            return self._fail(
                f"Shape mismatch: prediction '{pred.name}' is {tuple(p.shape)} but ground truth "
                f"'{gt.name}' is {tuple(g.shape)}; they must cover the same voxels."
            )
        self._scored_layer, self._truth_layer = pred, gt
        self.run_button.setEnabled(False)
        self.message.setText(f"Scoring '{pred.name}' against '{gt.name}'...")
        corrected = list(pred.metadata.get(CORRECTED) or [])
        self.worker = create_worker(evaluate_job, p, g, corrected, _ignore_errors=True,
                                    _start_thread=False)
        self.worker.returned.connect(self._on_returned)
        self.worker.errored.connect(lambda exc: self._fail(f"Evaluation failed: {exc}"))
        self.worker.finished.connect(lambda: self.run_button.setEnabled(True))
        self.worker.start()
        return self.worker

    def plot_uncertainty(self, pred) -> None:
        """Plot the per-slice uncertainty recorded on ``pred`` (no ground truth needed)."""
        values = _recorded_uncertainty(pred)
        self._scored_layer, self.report, self.uncertainty = pred, None, values
        for label in (*self.values.values(), self.uncorrected):
            label.setText("-")
        self._slice_bars(values, "#d08a3b", "uncertainty", max(1e-3, max(values)) * 1.05)
        self.plot.draw()
        self.message.setText(f"No ground truth: the uncertainty of each slice of '{pred.name}' (higher = "
                             "more likely wrong); click a bar to go to that slice. Choose a ground truth "
                             "to score it.")
        self.uncertainty_plotted.emit(list(values))

    def go_to_slice(self, z: int) -> None:
        """Move the viewer to slice ``z`` of the scored layer."""
        layer = self._scored_layer
        if layer is None or layer.ndim < 3:
            return
        axis = self.viewer.dims.ndim - layer.ndim
        self.viewer.dims.set_point(axis, float(layer.translate[0] + z * layer.scale[0]))

    # ------------------------------------------------------------------ handlers

    def _fail(self, text: str):
        self.message.setText(text)
        show_error(text)
        self.evaluated.emit(None)
        return None

    def _on_returned(self, result: Evaluation) -> None:
        report = result.report
        self.report, self.uncertainty = report, None
        for key, value in report.overall.as_dict().items():
            self.values[key].setText(f"{value:.3f}")
        if result.uncorrected is not None:
            self.uncorrected.setText(
                f"{result.uncorrected.iou:.3f} (IoU without the {len(result.corrected)} slice(s) "
                f"you corrected: {result.corrected})")
        else:
            self.uncorrected.setText("-")
        self._plot(report, result.corrected)
        pred, truth = self._scored_layer, self._truth_layer
        if self.show_errors.isChecked() and pred is not None:
            self._show_errors(pred, result.errors)
        notes = []
        if pred is not None and truth is not None:
            _draw_truth_over(pred, truth)
            self._put_above(truth, pred)
            if not np.allclose(pred.scale, truth.scale):
                notes.append(f"'{truth.name}' is drawn at scale {_fmt(truth.scale)} but '{pred.name}' at "
                             f"{_fmt(pred.scale)}, so they do not line up in the viewer (a file without "
                             "a pixel size?); the scores compare them voxel by voxel.")
        if result.gt_empty:
            notes.append("The ground truth is empty (no pixel > 0): the scores say only whether "
                         "the prediction is empty too.")
        if result.pred_empty:
            notes.append("The prediction is empty (no pixel > 0).")
        text = " ".join(notes) or (f"{len(report.per_slice)} slice(s) scored; click a bar to go "
                                   "to that slice.")
        self.message.setText(text)
        if notes:
            show_warning(" ".join(notes))
        self.evaluated.emit(report)

    def _put_above(self, layer, other) -> None:
        """Move ``layer`` just above ``other`` in the layer list (so its outline is not under the
        filled prediction)."""
        names = [ly.name for ly in self.viewer.layers]
        if layer.name in names and other.name in names and names.index(layer.name) < names.index(other.name):
            # (napari inserts before the destination index, counted before the move)
            self.viewer.layers.move(names.index(layer.name), names.index(other.name) + 1)

    def _slice_bars(self, values, colours, ylabel: str, top: float):
        """One clickable bar per slice on a fresh plot, the slice axis in whole slices; the axes."""
        from matplotlib.ticker import MaxNLocator

        ax = self.plot.axes
        ax.clear()
        ax.set_axis_on()
        ax.bar(range(len(values)), values, width=0.8, color=colours, picker=True)
        ax.set_xlim(-0.6, len(values) - 0.4)
        ax.set_ylim(0, top)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # slices are whole numbers
        ax.set_xlabel("slice", labelpad=1)
        ax.set_ylabel(ylabel)
        return ax

    def _plot(self, report, corrected=()) -> None:
        ious = [s.iou for s in report.per_slice]
        grey = set(corrected)
        colours = ["#9a9a9a" if z in grey else "#3b8bd0" for z in range(len(ious))]
        ax = self._slice_bars(ious, colours, "IoU", 1)
        ax.axhline(report.overall.iou, color="#d05a3b", lw=1, label=f"overall {report.overall.iou:.3f}")
        # above the axes, never over the bars
        ax.legend(loc="lower right", bbox_to_anchor=(1.0, 1.0), fontsize="small", frameon=False,
                  borderaxespad=0.1)
        self.plot.draw()

    def _on_click(self, event) -> None:
        n = len(self.report.per_slice) if self.report is not None else len(self.uncertainty or [])
        if n == 0 or event.inaxes is not self.plot.axes or event.xdata is None:
            return
        z = int(np.clip(round(event.xdata), 0, n - 1))
        self.go_to_slice(z)

    def _show_errors(self, pred, errors: np.ndarray) -> None:
        from napari.utils.colormaps import DirectLabelColormap

        name = f"{pred.name} errors"
        colours = {None: "transparent", 0: "transparent", **ERROR_COLOURS}
        if name in self.viewer.layers and isinstance(self.viewer.layers[name], Labels):
            layer = self.viewer.layers[name]
            layer.data = errors
        else:
            # (added with the prediction's units: a layer in pixels beside layers in nm would
            # turn off napari's physical units for all of them)
            layer = self.viewer.add_labels(
                errors, name=name, colormap=DirectLabelColormap(color_dict=colours), opacity=0.8,
                scale=pred.scale, translate=pred.translate, units=pred.units,
            )
        layer.scale, layer.translate, layer.units = pred.scale, pred.translate, pred.units


def _no_truth(pred, gt) -> bool:
    """Whether ``gt`` is no ground truth for ``pred``: none, the prediction itself, or an image
    that is not a mask (the EM stack, an uncertainty map)."""
    return gt is None or same_layer(pred, gt) or (isinstance(gt, Image) and not is_mask_layer(gt))


def _recorded_uncertainty(pred) -> list[float]:
    """The per-slice uncertainty the segmentation recorded on ``pred`` when it still fits the
    layer's slices, else []."""
    values = list(pred.metadata.get(SLICE_UNCERTAINTY) or [])
    n = pred.data.shape[0] if pred.ndim == 3 else 1
    return values if len(values) == n else []


def _fmt(scale) -> str:
    return "(" + ", ".join(f"{float(v):g}" for v in scale) + ")"


def _draw_truth_over(pred, truth) -> None:
    """The prediction filled, the ground truth (a labels layer) as a yellow outline above it, so
    the two read apart where they overlap."""
    from napari.utils.colormaps import DirectLabelColormap

    pred.contour = 0
    if isinstance(truth, Labels):
        truth.colormap = DirectLabelColormap(color_dict={None: TRUTH_COLOUR, 0: "transparent"})
        truth.contour = TRUTH_CONTOUR
        truth.opacity = 1.0

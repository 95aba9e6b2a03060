"""A stack's contrast, when nobody says: reversed or not, by how sure the model is of each.

The shipped model learned EM with dark membranes on a light background. A stack with the
reverse contrast (bright membranes on dark, as some detectors and inverted exports give) is
segmented as nothing at all unless the model is told (``invert``). :func:`guess_contrast` runs
the model over the centre of a few slices as they are and inverted, and takes the one under
which the model is clearly surer of its answer, by the per-slice measure that best tracks its
errors (:func:`~napari_mitoseg.uncertainty.slice_uncertainty`: pixels near the threshold over
those called mitochondria). On the validation blocks of both training stacks, resampled from
0.5x to 2x and contrast-reversed, it decides right every time, with the reversed contrast at
least 1.5x less sure than the right one (docs/benchmarks.md, *Reversed contrast, guessed*).

The guess reads at most :data:`SLICES` slices (the centre :data:`SIDE` x :data:`SIDE` pixels of
each), so it takes about a second on a CPU whatever the stack's size, and it depends on the
stack alone: every path (command line, API, widget, cluster) that guesses decides alike.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from .inference import NOTE, as_stack, check_stack, for_stack, predict_slice
from .model import LoadedModel

logger = logging.getLogger(__name__)

#: slices read, spread evenly over the stack
SLICES = 4
#: side of the centre crop of each slice read, in the stack's pixels
SIDE = 1024
#: the stack is inverted only when the model's uncertainty on it inverted is below this share of
#: its uncertainty on it as it is (a clear win, not a coin toss)
MARGIN = 0.75


@dataclass(frozen=True)
class ContrastGuess:
    """Whether to ``invert`` the stack, and the model's mean slice uncertainty on it as it is
    (``plain``) and inverted (``inverted``): lower is surer."""

    invert: bool
    plain: float
    inverted: float

    def note(self) -> str | None:
        """One line for the user when the stack is inverted, or when the model is surer of it
        inverted but not clearly (it stays as it is); None otherwise."""
        if not self.invert:
            if self.inverted < self.plain:
                return (f"the contrast may be reversed (the model is nearly as sure of the stack inverted, "
                        f"uncertainty {self.inverted:.2f} against {self.plain:.2f}): taken as it is; if "
                        "membranes and mitochondria are bright on dark, give --invert")
            return None
        return (f"the contrast looks reversed (bright membranes on dark; the model is surer of it inverted, "
                f"uncertainty {self.inverted:.2f} against {self.plain:.2f}): inverted for the model "
                "(--invert says so; --no-guess-contrast takes the stack as it is)")


def _sample(image) -> list[np.ndarray]:
    """The centre ``SIDE`` x ``SIDE`` pixels of up to ``SLICES`` slices spread over the stack."""
    z, y, x = image.shape
    idx = sorted({int(round(v)) for v in np.linspace(0, z - 1, min(SLICES, z))})
    y0, x0 = max(0, (y - SIDE) // 2), max(0, (x - SIDE) // 2)
    return [np.asarray(image[i, y0:y0 + SIDE, x0:x0 + SIDE]) for i in idx]


def _has_contrast(slice_: np.ndarray) -> bool:
    finite = slice_[np.isfinite(slice_)] if slice_.dtype.kind == "f" else slice_
    return finite.size > 0 and finite.min() != finite.max()


def guess_contrast(model: LoadedModel, image, pixel_ratio: float = 1.0) -> ContrastGuess:
    """Whether ``model`` (at ``pixel_ratio``) is clearly surer of ``image`` (a (Z, Y, X) or
    (Y, X) array, numpy, dask or zarr) inverted than as it is (:data:`MARGIN`). Slices without
    contrast (blank, or no finite pixel) are left out; a stack of only those is taken as it is."""
    from .uncertainty import slice_uncertainty

    image = as_stack(image)
    check_stack(image)
    if image.ndim == 2:
        image = image[None]
    slices = [s for s in _sample(image) if _has_contrast(s)]
    if not slices:  # nothing to tell the contrasts apart by: the stack as it is
        return ContrastGuess(False, 0.0, 0.0)
    u = []
    for inv in (False, True):
        m = for_stack(model, pixel_ratio, inv)
        u.append(float(np.mean([slice_uncertainty(predict_slice(m, s), m.spec.threshold) for s in slices])))
    return ContrastGuess(u[1] < MARGIN * u[0], u[0], u[1])


def will_guess(model: LoadedModel, invert: bool, guess: bool | None = None) -> bool:
    """Whether :func:`settle_contrast` guesses: not when the caller says ``invert``; else
    ``guess``, or (None) the model's own ``default_guess_contrast``, set for the shipped model on
    validation (a fine-tuned model is set up for its stack and does not guess)."""
    if invert:
        return False
    return bool(model.info.get("default_guess_contrast", False)) if guess is None else bool(guess)


def settle_contrast(model: LoadedModel, image, pixel_ratio: float, invert: bool,
                    guess: bool | None = None) -> tuple[bool, str | None]:
    """(invert, note): ``invert`` as the caller says, or what :func:`guess_contrast` finds when
    :func:`will_guess`. The note (also logged as a note for the user, on every path) says when
    the stack was inverted on a guess, or might be reversed though it was not inverted."""
    if not will_guess(model, invert, guess):
        return bool(invert), None
    g = guess_contrast(model, image, pixel_ratio)
    note = g.note()
    if note:
        logger.info(note, extra=NOTE)
    return g.invert, note

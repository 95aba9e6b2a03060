"""The model spec: what rebuilds a network and feeds it correctly, checked field by field.

A spec travels in every model folder's ``config.json``; :class:`ModelSpec` refuses a field of
the wrong type, sign or size with one line naming the field and what it takes, so a hand-edited
or damaged config is refused before anything compares or computes with it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

NORMALISATIONS = ("percentile", "none")


class ModelError(RuntimeError):
    """A model could not be found, built or loaded; the message says why."""


class ModelSourceTypeError(ModelError, TypeError):
    """A model was given as something that is neither a name, a path nor a loaded model."""


def threshold_problem(value) -> str | None:
    """Why ``value`` is not a usable probability threshold (a number strictly between 0 and 1),
    or None when it is. The one check behind the model spec, :class:`PredictOptions` and the
    command line."""
    import numbers

    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return f"threshold must be a number in (0, 1), got {value!r}"
    if not 0.0 < float(value) < 1.0:  # also False for NaN
        return f"threshold must lie in (0, 1), got {value}"
    return None


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a network and to feed it correctly.

    Attributes
    ----------
    arch, encoder : smp architecture and encoder names (``smp.create_model``).
    encoder_depth : number of encoder stages; inputs are padded to ``2 ** encoder_depth``.
    decoder_channels : decoder widths, one per encoder stage.
    in_channels : 1 for grey-scale EM.
    normalisation : ``"percentile"`` (per slice, 1st-99th percentile to zero mean, unit-ish
        spread) or ``"none"`` (uint8 scaled to [0, 1]).
    threshold : probability above which a pixel is foreground.
    pixel_size_nm : pixel size (nm, in Y and X) of the stacks this model takes as they are, at
        pixel ratio 1: the training data's native pixel size (before ``input_scale``). None if
        unknown; then a stack's pixel size in nm cannot be turned into a pixel ratio.
    tile_size, tile_overlap : slices larger than ``tile_size`` run as overlapping tiles
        (sizes in the network's pixels, after ``input_scale``).
    input_scale : slices are resized by this factor before the network sees them and the
        probabilities resized back (0.5: the network works at half resolution, seeing twice
        the context for a quarter of the compute). Training crops use the same factor.
    invert : slices are contrast-inverted after normalisation, before the network sees them
        (and so are training crops): a model set up for stacks whose contrast is the reverse of
        its training data's, bright membranes on a dark background.
    """

    arch: str = "Unet"
    encoder: str = "resnet18"
    encoder_depth: int = 5
    decoder_channels: tuple[int, ...] = (128, 64, 32, 16, 16)
    in_channels: int = 1
    normalisation: str = "percentile"
    threshold: float = 0.5
    pixel_size_nm: float | None = None
    tile_size: int = 1024
    tile_overlap: int = 64
    input_scale: float = 1.0
    invert: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.decoder_channels, list):
            object.__setattr__(self, "decoder_channels", tuple(self.decoder_channels))
        _check_spec_types(self)
        from .networks import maintained_encoder

        if maintained_encoder(self.encoder) != self.encoder:  # smp's deprecated timm- names
            object.__setattr__(self, "encoder", maintained_encoder(self.encoder))
        if self.normalisation not in NORMALISATIONS:
            raise ModelError(
                f"unknown normalisation {self.normalisation!r}; choose one of {NORMALISATIONS}"
            )
        if len(self.decoder_channels) != self.encoder_depth:
            raise ModelError(
                f"decoder_channels has {len(self.decoder_channels)} entries but encoder_depth "
                f"is {self.encoder_depth}; give one width per stage"
            )
        problem = threshold_problem(self.threshold)
        if problem:
            raise ModelError(problem)
        if not 0.125 <= self.input_scale <= 4.0:
            raise ModelError(f"input_scale must lie in [0.125, 4], got {self.input_scale}")
        if self.tile_size % self.stride or self.tile_overlap >= self.tile_size // 2:
            raise ModelError(
                f"tile_size ({self.tile_size}) must be a multiple of {self.stride} and "
                f"exceed twice tile_overlap ({self.tile_overlap})"
            )

    @property
    def stride(self) -> int:
        """Inputs' height and width must be multiples of this."""
        return 2**self.encoder_depth

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["decoder_channels"] = list(self.decoder_channels)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelSpec:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ModelError(f"unknown model spec keys {sorted(unknown)}; known: {sorted(known)}")
        d = dict(d)
        if isinstance(d.get("decoder_channels"), list):
            d["decoder_channels"] = tuple(d["decoder_channels"])
        return cls(**d)


def _is_int(v) -> bool:
    import numbers

    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _check_spec_types(spec: ModelSpec) -> None:
    """One-line :class:`ModelError` for a spec field of the wrong type or sign (what a hand-edited
    config.json holds), before any check that would compare it."""
    import math
    import numbers

    for name in ("arch", "encoder", "normalisation"):
        if not isinstance(getattr(spec, name), str):
            raise ModelError(f"{name} must be a name (a string), got {getattr(spec, name)!r}")
    for name, low in (("encoder_depth", 1), ("in_channels", 1), ("tile_size", 1), ("tile_overlap", 0)):
        if not _is_int(getattr(spec, name)) or getattr(spec, name) < low:
            raise ModelError(f"{name} must be a whole number >= {low}, got {getattr(spec, name)!r}")
    dc = spec.decoder_channels
    if not isinstance(dc, tuple) or not dc or not all(_is_int(c) and c > 0 for c in dc):
        raise ModelError(f"decoder_channels must be a list of positive whole numbers, got {dc!r}")
    for name, allow_none in (("pixel_size_nm", True), ("input_scale", False)):
        v = getattr(spec, name)
        if v is None and allow_none:
            continue
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v) or v <= 0:
            extra = " or null (unknown)" if allow_none else ""
            raise ModelError(f"{name} must be a positive number{extra}, got {v!r}")
    if not isinstance(spec.invert, bool):
        raise ModelError(f"invert must be true or false, got {spec.invert!r}")

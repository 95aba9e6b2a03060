"""Model specs, building, self-describing checkpoints, the model registry and device choice.

A saved model is a folder holding ``config.json`` (the :class:`ModelSpec` plus provenance),
``model.safetensors`` (the weights) and ``README.md`` (the model card). Shipped models live in
the package (``napari_mitoseg/models/<name>``); fine-tuned ones in the user's model folder
(``platformdirs`` user data dir, or ``$MITOSEG_MODEL_DIR``). Both go through the same
:func:`save_model` / :func:`load_model`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "README.md"
SHIPPED_DIR = Path(__file__).parent / "models"
DEFAULT_MODEL = "mito-em-v2"
DEVICES = ("auto", "cpu", "cuda", "mps")
NORMALISATIONS = ("percentile", "none")


class ModelError(RuntimeError):
    """A model could not be found, built or loaded; the message says why."""


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
        if self.normalisation not in NORMALISATIONS:
            raise ModelError(
                f"unknown normalisation {self.normalisation!r}; choose one of {NORMALISATIONS}"
            )
        if len(self.decoder_channels) != self.encoder_depth:
            raise ModelError(
                f"decoder_channels has {len(self.decoder_channels)} entries but encoder_depth "
                f"is {self.encoder_depth}; give one width per stage"
            )
        if not 0.0 < self.threshold < 1.0:
            raise ModelError(f"threshold must lie in (0, 1), got {self.threshold}")
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
        if "decoder_channels" in d:
            d["decoder_channels"] = tuple(int(c) for c in d["decoder_channels"])
        return cls(**d)


def build_model(spec: ModelSpec):
    """Build the torch network for ``spec`` with random weights (no download, ever)."""
    import segmentation_models_pytorch as smp

    try:
        return smp.create_model(
            spec.arch,
            encoder_name=spec.encoder,
            encoder_weights=None,
            encoder_depth=spec.encoder_depth,
            decoder_channels=list(spec.decoder_channels),
            in_channels=spec.in_channels,
            classes=1,
        )
    except (KeyError, ValueError, TypeError) as exc:
        raise ModelError(f"cannot build {spec.arch} with encoder {spec.encoder!r}: {exc}") from exc


# --------------------------------------------------------------------------- devices


def resolve_device(device: str = "auto"):
    """Return a ``torch.device``; ``auto`` prefers CUDA, then MPS, then CPU.

    Asking for a device that is absent is an error, never a silent fallback.
    """
    import torch

    if device not in DEVICES:
        raise ModelError(f"unknown device {device!r}; choose one of {DEVICES}")
    has_mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if has_mps else torch.device("cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelError("device 'cuda' was asked for but no CUDA GPU is available; use 'cpu'")
    if device == "mps" and not has_mps:
        raise ModelError("device 'mps' was asked for but Apple MPS is not available; use 'cpu'")
    return torch.device(device)


def spare_cpu_threads(own: int = 0, cores: int | None = None, load: float | None = None) -> int | None:
    """CPU threads torch can use now: the cores less the other work running (the 1-minute load
    average less ``own``, the threads this process already runs), at least 1.

    Torch's threads meet at a barrier in every layer, so on a busy machine each step waits for
    the thread that was descheduled: two threads on two cores at load 8 ran a fine-tuning step
    many times slower than one. None when the user fixed the number (``OMP_NUM_THREADS`` or
    ``MITOSEG_THREADS``): leave torch as it is.
    """
    if os.environ.get("MITOSEG_THREADS"):
        return max(1, int(os.environ["MITOSEG_THREADS"]))
    if os.environ.get("OMP_NUM_THREADS"):
        return None
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if load is None:
        try:
            load = os.getloadavg()[0]
        except OSError:  # not on this platform
            return None
    return max(1, min(cores, int(cores - max(0.0, load - own) + 0.5)))


def available_devices() -> list[str]:
    """Devices usable on this machine, best first (for the widget's choice)."""
    import torch

    found = []
    if torch.cuda.is_available():
        found.append("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        found.append("mps")
    return [*found, "cpu"]


# --------------------------------------------------------------------------- checkpoints


@dataclass
class LoadedModel:
    """A network ready for inference, with its spec and provenance."""

    net: Any
    spec: ModelSpec
    name: str
    path: Path | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def device(self):
        return next(self.net.parameters()).device


def save_model(
    net,
    spec: ModelSpec,
    path: str | os.PathLike,
    *,
    info: dict[str, Any] | None = None,
    card: str | None = None,
    half: bool = True,
) -> Path:
    """Save weights (safetensors), ``config.json`` and a model card to folder ``path``, atomically.

    ``half`` stores floating weights as float16 (half the size; loading casts back to float32).
    """
    from safetensors.torch import save_file

    state = {}
    for k, v in net.state_dict().items():
        v = v.detach().to("cpu")
        if half and v.is_floating_point():
            v = v.half()
        state[k] = v.contiguous()
    config = {"spec": spec.to_dict(), "info": info or {}, "format": 1}

    def write(tmp: Path) -> None:
        save_file(state, str(tmp / WEIGHTS_NAME))
        (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
        (tmp / CARD_NAME).write_text(card or _default_card(Path(path).name, spec, info or {}))

    from .io import atomic_dir

    return atomic_dir(Path(path), write)


def _default_card(name: str, spec: ModelSpec, info: dict[str, Any]) -> str:
    lines = [f"# {name}", "", f"Architecture: {spec.arch} / {spec.encoder}", ""]
    for k, v in info.items():
        lines.append(f"- {k}: {v}")
    return "\n".join(lines) + "\n"


def read_config(path: str | os.PathLike) -> tuple[ModelSpec, dict[str, Any]]:
    """Read ``config.json`` of a model folder: (spec, info)."""
    cfg_path = Path(path) / CONFIG_NAME
    try:
        cfg = json.loads(cfg_path.read_text())
        return ModelSpec.from_dict(cfg["spec"]), dict(cfg.get("info", {}))
    except FileNotFoundError as exc:
        raise ModelError(f"{path} is not a model folder: {CONFIG_NAME} is missing") from exc
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ModelError(f"{cfg_path} is corrupt: {exc}") from exc


def load_model(source: str | os.PathLike = DEFAULT_MODEL, device: str = "auto") -> LoadedModel:
    """Load a model by registry name or folder path, in eval mode on ``device``."""
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = resolve_model_path(source)
    spec, info = read_config(path)
    net = build_model(spec)
    try:
        state = load_file(str(path / WEIGHTS_NAME))
    except FileNotFoundError as exc:
        raise ModelError(f"{path} has no {WEIGHTS_NAME}") from exc
    except (SafetensorError, OSError, RuntimeError) as exc:
        raise ModelError(f"weights in {path} are corrupt: {exc}") from exc
    ref = net.state_dict()
    state = {k: v.to(ref[k].dtype) if k in ref else v for k, v in state.items()}
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelError(f"weights in {path} do not fit their config: {exc}") from exc
    dev = resolve_device(device)
    net = net.to(dev).eval()
    if dev.type == "cpu":
        net = net.to(memory_format=torch.channels_last)
    return LoadedModel(net=net, spec=spec, name=path.name, path=path, info=info)


# --------------------------------------------------------------------------- registry


def user_model_dir() -> Path:
    """The user's model folder (``$MITOSEG_MODEL_DIR`` or the platformdirs data dir)."""
    env = os.environ.get("MITOSEG_MODEL_DIR")
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_data_dir("napari-mitoseg", appauthor=False)) / "models"


@dataclass(frozen=True)
class ModelEntry:
    name: str
    path: Path
    shipped: bool
    summary: str


def _entries(root: Path, shipped: bool) -> list[ModelEntry]:
    if not root.is_dir():
        return []
    out = []
    for p in sorted(root.iterdir()):
        if p.name.startswith(".") or not (p / CONFIG_NAME).is_file():
            continue
        try:
            _, info = read_config(p)
        except ModelError:
            continue
        out.append(ModelEntry(p.name, p, shipped, str(info.get("summary", ""))))
    return out


def list_models() -> list[ModelEntry]:
    """Shipped models first, then the user's (fine-tuned) ones."""
    return _entries(SHIPPED_DIR, True) + _entries(user_model_dir(), False)


def resolve_model_path(source: str | os.PathLike) -> Path:
    """A model folder for a registry name or a path; unknown names list the valid ones."""
    p = Path(source)
    if p.is_dir():
        return p
    for entry in list_models():
        if entry.name == str(source):
            return entry.path
    names = [e.name for e in list_models()]
    raise ModelError(f"unknown model {str(source)!r}; available: {names or 'none'}")


def next_version_name(base: str, root: Path | None = None) -> str:
    """``<base>-ft1``, ``-ft2`` ...: one past the highest version in the user's folder.

    A fine-tuned base (``x-ft2``) counts on from its stem (``x-ft3``). Taking the highest, not
    the first gap, keeps versions in order and never hands out a name that still exists.
    """
    root = root or user_model_dir()
    stem = re.sub(r"-ft\d+$", "", base)
    pattern = re.compile(rf"{re.escape(stem)}-ft(\d+)")
    found = [pattern.fullmatch(p.name) for p in root.iterdir()] if root.is_dir() else []
    return f"{stem}-ft{max((int(m.group(1)) for m in found if m), default=0) + 1}"

"""Building, self-describing checkpoints, the model registry and device choice.

A saved model is a folder holding ``config.json`` (the :class:`ModelSpec` of
:mod:`~napari_mitoseg.model_spec` plus provenance),
``model.safetensors`` (the weights) and ``README.md`` (the model card). Shipped models live in
the package (``napari_mitoseg/models/<name>``); fine-tuned ones in the user's model folder
(``platformdirs`` user data dir, or ``$MITOSEG_MODEL_DIR``). Both go through the same
:func:`save_model` / :func:`load_model`.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .model_spec import (  # noqa: F401 - the spec's names are the model's too
    NORMALISATIONS,
    ModelError,
    ModelSourceTypeError,
    ModelSpec,
    threshold_problem,
)

logger = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "README.md"
SHIPPED_DIR = Path(__file__).parent / "models"
DEFAULT_MODEL = "mito-em-v3"
DEVICES = ("auto", "cpu", "cuda", "mps")


def build_for_weights(spec: ModelSpec):
    """The network that saved weights of ``spec`` load into (random weights until they do): for a
    U-Net with a RegNet encoder the plain-torch :class:`~napari_mitoseg.regnet_unet.RegNetUnet`
    (the same keys and outputs as smp's, without importing smp, timm or torchvision), else
    :func:`build_model`."""
    from .networks import plain_torch_encoder

    regnet = plain_torch_encoder(spec)
    if regnet is None:
        return build_model(spec)
    from .regnet_unet import RegNetUnet

    return RegNetUnet(regnet, spec.encoder_depth, spec.decoder_channels, spec.in_channels, 1)


def build_model(spec: ModelSpec):
    """Build the smp network for ``spec`` with random weights (no download, ever); training from
    scratch starts here (smp's initialisation)."""
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
    from .precision import cpu_bf16

    cpu_bf16()  # a bad MITOSEG_PRECISION is said before any model loads
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
    except FileNotFoundError as exc:
        raise ModelError(f"{path} is not a model folder: {CONFIG_NAME} is missing") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelError(f"{cfg_path} is corrupt (not JSON): {exc}") from exc
    if not isinstance(cfg, dict) or not isinstance(cfg.get("spec"), dict):
        raise ModelError(f"{cfg_path} is corrupt: it has no 'spec' key (the model's architecture)")
    try:
        return ModelSpec.from_dict(cfg["spec"]), dict(cfg.get("info", {}))
    except (TypeError, ValueError) as exc:
        raise ModelError(f"{cfg_path} is corrupt: {exc}") from exc
    except ModelError as exc:
        raise ModelError(f"{cfg_path}: {exc}") from exc


def load_model(source: str | os.PathLike = DEFAULT_MODEL, device: str = "auto") -> LoadedModel:
    """Load a model by registry name or folder path, in eval mode on ``device``."""
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from .networks import convert_legacy_keys

    path = resolve_model_path(source)
    spec, info = read_config(path)
    net = build_for_weights(spec)
    try:
        state = load_file(str(path / WEIGHTS_NAME))
    except FileNotFoundError as exc:
        raise ModelError(f"{path} has no {WEIGHTS_NAME}") from exc
    except (SafetensorError, OSError, RuntimeError) as exc:
        raise ModelError(f"weights in {path} are corrupt: {exc}") from exc
    state = convert_legacy_keys(state, spec.encoder)
    _check_weights_fit(state, net.state_dict(), spec, path)
    _check_finite(state, path)
    net.load_state_dict(state, strict=True)  # casts float16 weights to the network's float32
    dev = resolve_device(device)
    net = net.to(dev).eval()
    if dev.type == "cpu":
        net = net.to(memory_format=torch.channels_last)
    return LoadedModel(net=net, spec=spec, name=path.name, path=path, info=info)


def _check_finite(state: dict, path: Path) -> None:
    """One-line :class:`ModelError` when a saved weight is NaN or infinite (a training run that
    diverged): such a model segments nothing, silently."""
    import numpy as np
    import torch

    def finite(v) -> bool:
        if v.dtype == torch.bfloat16:  # numpy has no bfloat16
            return bool(torch.isfinite(v).all())
        return bool(np.isfinite(v.numpy()).all())

    bad = [k for k, v in state.items() if v.is_floating_point() and not finite(v)]
    if bad:
        raise ModelError(f"weights in {path} are not finite (NaN or infinite in {len(bad)} tensors, "
                         f"e.g. {bad[0]}): the model is broken; retrain or fine-tune it again")


def _check_weights_fit(state: dict, ref: dict, spec: ModelSpec, path: Path) -> None:
    """One-line :class:`ModelError` when saved weights do not fit the network their config builds."""
    missing = set(ref) - set(state)
    extra = set(state) - set(ref)
    shapes = [k for k in set(ref) & set(state) if tuple(ref[k].shape) != tuple(state[k].shape)]
    if missing or extra or shapes:
        raise ModelError(
            f"weights in {path} do not fit their config ({spec.arch} / {spec.encoder}, depth "
            f"{spec.encoder_depth}): {len(missing)} missing, {len(extra)} unexpected and "
            f"{len(shapes)} misshapen tensors; config.json names another architecture than the weights"
        )


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
    #: why the model cannot be loaded (a corrupt config.json; weights missing, truncated or
    #: not finite), None when it can
    broken: str | None = None


def weights_problem(path: str | os.PathLike) -> str | None:
    """Why the weights of model folder ``path`` cannot be used (missing, unreadable, truncated,
    not finite), or None when they can. Reads the file once per (size, modification time)."""
    w = Path(path) / WEIGHTS_NAME
    try:
        st = w.stat()
    except OSError:
        return f"it has no {WEIGHTS_NAME} (the weights)"
    return _weights_problem(str(w), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _weights_problem(weights: str, size: int, mtime_ns: int) -> str | None:
    import numpy as np
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        state = load_file(weights)
    except (SafetensorError, OSError, ValueError, TypeError) as exc:
        return f"its {WEIGHTS_NAME} is corrupt or truncated ({exc})"
    if not state:
        return f"its {WEIGHTS_NAME} holds no tensors"
    bad = [k for k, v in state.items() if v.dtype.kind == "f" and not np.isfinite(v).all()]
    return f"its weights are not finite (NaN or infinite in {len(bad)} tensors)" if bad else None


def _entries(root: Path, shipped: bool, check_weights: bool = True) -> list[ModelEntry]:
    if not root.is_dir():
        return []
    out = []
    for p in sorted(root.iterdir()):
        if p.name.startswith(".") or not (p / CONFIG_NAME).is_file():
            continue
        try:
            _, info = read_config(p)
        except ModelError as exc:
            out.append(ModelEntry(p.name, p, shipped, "", broken=str(exc)))
            continue
        problem = weights_problem(p) if check_weights else None
        out.append(ModelEntry(p.name, p, shipped, str(info.get("summary", "")), broken=problem))
    return out


def list_models(include_broken: bool = False, check_weights: bool = True) -> list[ModelEntry]:
    """Shipped models first, then the user's (fine-tuned) ones; with ``include_broken`` also
    the folders whose config or weights cannot be used (``broken`` says why). Without
    ``check_weights`` the weights are not read (a model with unusable weights looks usable)."""
    found = _entries(SHIPPED_DIR, True, check_weights) + _entries(user_model_dir(), False, check_weights)
    return found if include_broken else [e for e in found if e.broken is None]


#: a model name that means the shipped default model
DEFAULT_ALIAS = "default"
#: the best and last models inside a training run folder (``mitoseg train --out``)
RUN_MODELS = ("best", "last")


def resolve_model_path(source: str | os.PathLike) -> Path:
    """A model folder for a registry name or a path; unknown names list the valid ones.

    ``"default"`` is the shipped default model; a training run folder (``train --out``) stands
    for its ``best`` model (a note says so).
    """
    if not isinstance(source, (str, os.PathLike)):
        raise ModelSourceTypeError(
            f"a model is given by its name or the path of its folder or package (a string or a "
            f"path), got {type(source).__name__} {source!r}")
    if not str(os.fspath(source)).strip():
        raise ModelError(f"the model name is empty; give a name ({', '.join(_usable_names())}), a model "
                         f"folder or a package .zip, or leave the model out for {DEFAULT_MODEL!r}")
    p = Path(os.fsdecode(source))
    if p.is_dir():
        return _model_in_folder(p)
    if p.is_file() and p.suffix.lower() == ".zip":
        return _unpack(p)
    if p.is_file():
        hint = (f"it is a training checkpoint; use its run folder {p.parent} (its best model) "
                f"or {p.parent / 'best'}") if p.suffix == ".pt" else "a model is a folder holding config.json"
        raise ModelError(f"{p} is a file, not a model: {hint}")
    entries = list_models(include_broken=True, check_weights=False)  # loading checks the weights
    name = DEFAULT_MODEL if str(source) == DEFAULT_ALIAS and DEFAULT_ALIAS not in [e.name for e in entries] \
        else str(source)
    for entry in entries:
        if entry.name == name:
            if name != str(source):
                logger.info("model %r: the shipped default model %s", str(source), name,
                            extra={"note": True})
            return entry.path
    names = [e.name for e in entries]
    raise ModelError(f"unknown model {str(source)!r}; available: {names or 'none'} "
                     f"(the shipped default is {DEFAULT_MODEL!r})")


def _usable_names() -> list[str]:
    return [e.name for e in list_models()] or ["none"]


def _unpack(p: Path) -> Path:
    """The model folder unpacked from bioimage.io package ``p`` (exported by this plugin)."""
    from .bioimageio_import import PackageError, unpack_package

    try:
        return unpack_package(p, user_model_dir() / ".packages", CONFIG_NAME, WEIGHTS_NAME, CARD_NAME)
    except PackageError as exc:
        raise ModelError(str(exc)) from exc


def _model_in_folder(p: Path) -> Path:
    """``p`` itself when it is a model folder; its ``best`` (else ``last``) model when it is a
    training run folder."""
    if (p / CONFIG_NAME).exists() or not any((p / r / CONFIG_NAME).exists() for r in RUN_MODELS):
        return p
    chosen = next(p / r for r in RUN_MODELS if (p / r / CONFIG_NAME).exists())
    logger.info("%s is a training run: using its %s model %s", p, chosen.name, chosen,
                extra={"note": True})
    return chosen


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

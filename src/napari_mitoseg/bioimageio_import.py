"""Read back a bioimage.io model package that :mod:`napari_mitoseg.bioimageio_export` wrote.

Such a package carries the model's ``config.json`` content in its ``config`` (under
``napari-mitoseg``), its card as the documentation and its weights as a PyTorch state dict.
:func:`unpack_package` turns it into an ordinary model folder (``config.json``,
``model.safetensors``, ``README.md``) under a hidden folder of the user's model folder, once per
package content, so every loader and widget takes a ``.zip`` as it takes a folder.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import zipfile
from pathlib import Path

logger = logging.getLogger(__name__)

#: the key of the package's ``config`` under which the export keeps the model's config.json
CONFIG_KEY = "napari-mitoseg"
RDF_NAMES = ("rdf.yaml", "bioimageio.yaml")


class PackageError(ValueError):
    """A file that is not a model package this plugin exported; the message says why."""


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def read_rdf(zf: zipfile.ZipFile, path: Path) -> dict:
    """The package description (``rdf.yaml``) of an open package zip."""
    import yaml

    names = [n for n in zf.namelist() if n in RDF_NAMES or n.endswith(".bioimageio.yaml")]
    if not names:
        raise PackageError(f"{path} is not a bioimage.io model package: it holds no rdf.yaml")
    try:
        rdf = yaml.safe_load(zf.read(names[0]))
    except yaml.YAMLError as exc:
        raise PackageError(f"{path}: {names[0]} is corrupt: {exc}") from exc
    if not isinstance(rdf, dict):
        raise PackageError(f"{path}: {names[0]} is not a package description")
    return rdf


def _member(zf: zipfile.ZipFile, source, path: Path, what: str) -> bytes:
    name = str(source or "")
    if name not in zf.namelist():
        raise PackageError(f"{path} lacks its {what} ({name or 'not named'})")
    return zf.read(name)


def unpack_package(path: Path, root: Path, config_name: str, weights_name: str, card_name: str) -> Path:
    """A model folder (under ``root``) holding package ``path``'s model; made once per content.

    Raises :class:`PackageError` for a zip that is not a package this plugin exported.
    """
    from .io import atomic_dir

    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise PackageError(f"{path} is not a readable zip file: {exc}") from exc
    with zf:
        rdf = read_rdf(zf, path)
        ours = (rdf.get("config") or {}).get(CONFIG_KEY) if isinstance(rdf.get("config"), dict) else None
        if not isinstance(ours, dict) or "spec" not in ours:
            raise PackageError(
                f"{path} is a bioimage.io package that napari-mitoseg did not export (its config has "
                f"no {CONFIG_KEY!r} entry); use it with bioimage.io tools, or export a model with "
                f"'mitoseg export'")
        dest = root / _digest(path) / path.stem
        if (dest / weights_name).is_file() and (dest / config_name).is_file():
            return dest
        weights = (rdf.get("weights") or {}).get("pytorch_state_dict") or {}
        raw = _member(zf, weights.get("source"), path, "PyTorch state dict weights")
        doc = rdf.get("documentation")
        card = zf.read(doc).decode("utf-8", "replace") if doc in zf.namelist() else f"# {path.stem}\n"

    import torch
    from safetensors.torch import save_file

    try:
        state = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many kinds for a corrupt file
        raise PackageError(f"{path}: its state dict weights cannot be read: {exc}") from exc
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise PackageError(f"{path}: its weights are not a state dict of tensors")

    def write(tmp: Path) -> None:
        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp / weights_name))
        (tmp / config_name).write_text(json.dumps(ours, indent=2) + "\n")
        (tmp / card_name).write_text(card)

    dest.parent.mkdir(parents=True, exist_ok=True)
    logger.info("%s: unpacked the model package into %s", path, dest)
    return atomic_dir(dest, write)

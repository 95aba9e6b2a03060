"""Encoder names and weight layouts across smp versions, and which networks build without smp.

- :func:`plain_torch_encoder`: for a U-Net with a RegNet encoder, the weights load into
  :class:`~napari_mitoseg.regnet_unet.RegNetUnet` (torch alone, the same outputs; importing smp,
  timm and torchvision costs seconds per process).
- :func:`maintained_encoder` and :func:`convert_legacy_keys` carry models saved with smp's
  deprecated ``timm-`` encoders over to the maintained ``tu-`` ones (timm's own models behind
  smp's universal encoder): the same network, the weights under ``encoder.model.``.
"""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)

#: smp's ``timm-`` encoders that are timm models behind the universal ``tu-`` encoder
_UNIVERSAL_PREFIXES = ("timm-regnet", "timm-res2", "timm-resnest", "timm-mobilenetv3", "timm-gernet")


def maintained_encoder(name: str) -> str:
    """The maintained smp name of encoder ``name``: ``timm-regnety_004`` -> ``tu-regnety_004``
    (``timm-mobilenetv3_*`` -> ``tu-tf_mobilenetv3_*``); any other name unchanged."""
    if not isinstance(name, str) or not name.startswith(_UNIVERSAL_PREFIXES):
        return name
    new = "tu-" + name.removeprefix("timm-")
    return new.replace("tu-mobilenetv3", "tu-tf_mobilenetv3")


def convert_legacy_keys(state: dict, encoder: str) -> dict:
    """``state`` with weights saved under a deprecated ``timm-`` encoder (keys ``encoder.stem...``)
    renamed for its ``tu-`` equivalent (``encoder.model.stem...``); other states unchanged."""
    if not encoder.startswith("tu-") or any(k.startswith("encoder.model.") for k in state):
        return state
    out = {}
    for key, value in state.items():
        if key.startswith("encoder."):
            key = "encoder.model." + key.removeprefix("encoder.")
            if "gernet" in encoder:
                key = key.replace(".stages.", ".stages_")
        out[key] = value
    logger.debug("renamed %d encoder weights for %s", sum(k.startswith("encoder.") for k in out), encoder)
    return out


def plain_torch_encoder(spec) -> str | None:
    """The RegNet name :class:`RegNetUnet` builds for ``spec``, or None when only smp can."""
    from .regnet_unet import REGNETS  # torch: only where a network is built

    name = spec.encoder.removeprefix("tu-")
    return name if spec.arch == "Unet" and spec.encoder.startswith("tu-") and name in REGNETS else None

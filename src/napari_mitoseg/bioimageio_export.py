"""Export a model as a bioimage.io model package (model spec 0.5), to share it beyond this plugin.

:func:`export_bioimageio` writes one ``.zip`` that bioimage.io tools (``bioimageio.core``,
deepImageJ, ilastik, the zoo's napari plugins) run as it is, and that ``--model FILE.zip`` (or
any model choice of this plugin) reads back as the original model:

- weights as a PyTorch state dict with its architecture (:mod:`napari_mitoseg.regnet_unet`, a
  file that needs torch alone), and as TorchScript;
- pre-processing in the spec's terms: each slice's 0.5th-99.5th percentile range to [0, 1],
  clipped, then to [-1, 1] (contrast-inverted for a model that inverts); the network resizes by
  the model's input scale itself, so the package takes slices at the model's pixel size, stated
  as the axes' scale in nm;
- two outputs: the foreground probability, and the mask (the model's threshold as a
  ``binarize`` post-processing step);
- test input and outputs made from the synthetic sample, a cover image, the model card as the
  documentation, authors, licence and the training data's citations;
- the model's own ``config.json`` under ``config["napari-mitoseg"]``, for reading it back.

Only U-Nets with a RegNet encoder (the shipped models and their fine-tunes) can be exported:
their architecture file needs no library beyond torch.
"""

from __future__ import annotations

import logging
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np

from .bioimageio_import import CONFIG_KEY
from .inference import predict_slice
from .model import CARD_NAME, LoadedModel, ModelError, load_model
from .networks import plain_torch_encoder
from .precision import precision

logger = logging.getLogger(__name__)

#: training data named in a model's licence notice -> (citation, DOI or URL)
DATA_CITATIONS = {
    "Lucchi": [
        ("Lucchi, Becker, Marquez Neila, Fua: Exploiting enclosing membranes and contextual cues for "
         "mitochondria segmentation, MICCAI 2014 (EPFL hippocampus FIB-SEM data)",
         "https://www.epfl.ch/labs/cvlab/data/data-em/"),
        ("Casser, Kang, Pfister, Haehn: Fast Mitochondria Detection for Connectomics, MIDL 2020 "
         "(the corrected Lucchi++ labels)", "https://arxiv.org/abs/1812.06024"),
    ],
    "CDeep3M": [
        ("Haberl et al.: CDeep3M - Plug-and-Play cloud-based deep learning for image segmentation, "
         "Nature Methods 15, 677-680 (2018) (the SBEM mitochondria sample)", "10.1038/s41592-018-0106-z"),
    ],
}
SMP_URL = "https://github.com/qubvel-org/segmentation_models.pytorch"
TEST_SIZE = 256


class ExportError(ValueError):
    """A model that cannot be exported as a package; the message says why."""


def export_bioimageio(
    model: LoadedModel | str | os.PathLike, out_zip: str | os.PathLike, *,
    authors: list[str] | None = None, licence: str = "BSD-3-Clause", torchscript: bool = True,
) -> Path:
    """Write ``model`` (loaded, or a name, folder or run folder) as a bioimage.io model package
    ``out_zip``, atomically (an existing file is replaced only when the new one is complete).

    ``authors`` default to the model's recorded authors, else the project; ``licence`` is an SPDX
    id for the weights. Returns the package's path.
    """
    m = model if isinstance(model, LoadedModel) else load_model(model, device="cpu")
    out = Path(out_zip)
    if out.suffix.lower() != ".zip":
        raise ExportError(f"a model package is a .zip file; got {out}")
    if plain_torch_encoder(m.spec) is None:
        raise ExportError(f"model {m.name!r} ({m.spec.arch} / {m.spec.encoder}) cannot be exported: packages "
                          "hold U-Nets with a RegNet encoder (the shipped models and their fine-tunes)")
    from bioimageio.spec import save_bioimageio_package

    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".export-", dir=out.parent) as tmp:
        descr = describe(m, Path(tmp), authors=authors, licence=licence, torchscript=torchscript)
        part = Path(tmp) / "package.zip"
        save_bioimageio_package(descr, output_path=part)
        os.replace(part, out)
    logger.info("wrote the bioimage.io model package %s", out)
    return out


def packaged_network(m: LoadedModel):
    """``m``'s weights in :class:`~napari_mitoseg.regnet_unet.PackagedRegNetUnet` (CPU, eval,
    float32), with the keyword arguments that rebuild it."""
    from .regnet_unet import PackagedRegNetUnet

    kwargs = {"encoder": plain_torch_encoder(m.spec), "encoder_depth": m.spec.encoder_depth,
              "decoder_channels": list(m.spec.decoder_channels), "in_channels": m.spec.in_channels,
              "classes": 1, "input_scale": m.spec.input_scale}
    net = PackagedRegNetUnet(**kwargs)
    net.load_state_dict({k: v.float().cpu() for k, v in m.net.state_dict().items()})
    return net.eval(), kwargs


def test_tensors(m: LoadedModel, size: int = TEST_SIZE) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(input, probability, mask) as (1, 1, size, size) arrays: a synthetic EM slice (float32
    grey values), this plugin's probabilities for it (float32) and its mask (uint8 0/1)."""
    from .synthetic import make_sample

    raw = make_sample((1, size, size), seed=0)[0][0]
    with precision("float32"):  # the reference any bioimage.io runner reproduces
        prob = predict_slice(m, raw).astype(np.float32)
    mask = (prob > m.spec.threshold).astype(np.uint8)
    return raw.astype(np.float32)[None, None], prob[None, None], mask[None, None]


def _cover(raw: np.ndarray, mask: np.ndarray, path: Path) -> Path:
    """A 2:1 PNG: the test slice, and the slice with its mask in magenta."""
    from PIL import Image

    grey = np.clip(raw[0, 0], 0, 255).astype(np.uint8)
    rgb = np.stack([grey] * 3, axis=-1)
    over = rgb.copy()
    m = mask[0, 0] > 0
    over[m] = (0.5 * over[m] + 0.5 * np.array([255, 0, 255])).astype(np.uint8)
    Image.fromarray(np.concatenate([rgb, over], axis=1)).save(path)
    return path


def _citations(info: dict) -> list:
    from bioimageio.spec.model.v0_5 import CiteEntry, Doi, HttpUrl

    notice = str(info.get("licence_notice", ""))
    out = []
    for key, entries in DATA_CITATIONS.items():
        if key in notice:
            out += [CiteEntry(text=text, doi=Doi(ref)) if ref.startswith("10.") else
                    CiteEntry(text=text, url=HttpUrl(ref)) for text, ref in entries]
    out.append(CiteEntry(text="Iakubovskii: Segmentation Models Pytorch (the U-Net design)", url=HttpUrl(SMP_URL)))
    return out


def _save_tensors(tmp: Path, arrays: dict[str, np.ndarray]) -> dict[str, Path]:
    paths = {}
    for name, arr in arrays.items():
        paths[name] = tmp / f"test_{name}.npy"
        np.save(paths[name], arr)
    return paths


def _preprocessing(m: LoadedModel) -> list:
    from bioimageio.spec.model.v0_5 import (
        AxisId,
        ClipDescr,
        ClipKwargs,
        ScaleLinearDescr,
        ScaleLinearKwargs,
        ScaleRangeDescr,
        ScaleRangeKwargs,
    )

    sign = -1.0 if m.spec.invert else 1.0
    if m.spec.normalisation == "none":  # 8-bit grey values to [0, 1]
        steps = [ClipDescr(kwargs=ClipKwargs(min=0.0, max=255.0)),
                 ScaleLinearDescr(kwargs=ScaleLinearKwargs(gain=1 / 255, offset=0.0))]
    else:
        steps = [ScaleRangeDescr(kwargs=ScaleRangeKwargs(axes=[AxisId("y"), AxisId("x")], min_percentile=0.5,
                                                         max_percentile=99.5)),
                 ClipDescr(kwargs=ClipKwargs(min=0.0, max=1.0))]
    return [*steps, ScaleLinearDescr(kwargs=ScaleLinearKwargs(gain=2.0 * sign, offset=-1.0 * sign))]


def _axes(m: LoadedModel, output: bool) -> list:
    from bioimageio.spec.model.v0_5 import (
        AxisId,
        BatchAxis,
        ChannelAxis,
        Identifier,
        ParameterizedSize,
        SizeReference,
        SpaceInputAxis,
        SpaceOutputAxis,
        TensorId,
    )

    nm = m.spec.pixel_size_nm
    unit = {"scale": float(nm), "unit": "nanometer"} if nm else {}
    if output:
        space = [SpaceOutputAxis(id=AxisId(a), size=SizeReference(tensor_id=TensorId("raw"), axis_id=AxisId(a)),
                                 **unit) for a in "yx"]
        return [BatchAxis(), ChannelAxis(channel_names=[Identifier("mitochondrion")]), *space]
    step = max(1, int(round(m.spec.stride / m.spec.input_scale)))
    space = [SpaceInputAxis(id=AxisId(a), size=ParameterizedSize(min=step, step=step), **unit) for a in "yx"]
    return [BatchAxis(), ChannelAxis(channel_names=[Identifier("em")]), *space]


def _weights(m: LoadedModel, tmp: Path, torchscript: bool):
    import torch
    from bioimageio.spec.model.v0_5 import (
        ArchitectureFromFileDescr,
        PytorchStateDictWeightsDescr,
        TorchscriptWeightsDescr,
        Version,
        WeightsDescr,
    )

    from . import regnet_unet

    net, kwargs = packaged_network(m)
    arch_file = tmp / "regnet_unet.py"
    arch_file.write_text(Path(regnet_unet.__file__).read_text())
    torch.save(net.state_dict(), tmp / "weights.pt")
    version = Version(torch.__version__.split("+")[0])
    state_dict = PytorchStateDictWeightsDescr(
        source=tmp / "weights.pt", pytorch_version=version,
        architecture=ArchitectureFromFileDescr(source=arch_file, callable="PackagedRegNetUnet", kwargs=kwargs))
    scripted = None
    if torchscript:
        try:
            with warnings.catch_warnings():  # torch.jit is deprecated, but the zoo's tools run it
                warnings.simplefilter("ignore", FutureWarning)
                torch.jit.script(net).save(str(tmp / "weights_torchscript.pt"))
            scripted = TorchscriptWeightsDescr(source=tmp / "weights_torchscript.pt", pytorch_version=version,
                                               parent="pytorch_state_dict")
        except Exception as exc:  # noqa: BLE001 - TorchScript fails in many ways; the state dict suffices
            logger.warning("no TorchScript weights in the package: %s", exc)
    return WeightsDescr(pytorch_state_dict=state_dict, torchscript=scripted)


def describe(m: LoadedModel, tmp: Path, *, authors: list[str] | None = None, licence: str = "BSD-3-Clause",
             torchscript: bool = True):
    """The package's ``ModelDescr`` for ``m``, its files written to folder ``tmp``."""
    from bioimageio.spec.model.v0_5 import (
        Author,
        BinarizeDescr,
        BinarizeKwargs,
        BioimageioConfig,
        Config,
        EnsureDtypeDescr,
        EnsureDtypeKwargs,
        FileDescr,
        InputTensorDescr,
        IntervalOrRatioDataDescr,
        LicenseId,
        ModelDescr,
        NominalOrOrdinalDataDescr,
        OutputTensorDescr,
        TensorId,
    )

    raw, prob, mask = test_tensors(m)
    files = _save_tensors(tmp, {"raw": raw, "probability": prob, "mask": mask})
    card = tmp / CARD_NAME
    card.write_text((m.path / CARD_NAME).read_text() if m.path and (m.path / CARD_NAME).is_file()
                    else f"# {m.name}\n\n{m.info.get('summary', '')}\n")
    inputs = [InputTensorDescr(
        id=TensorId("raw"), axes=_axes(m, output=False), test_tensor=FileDescr(source=files["raw"]),
        data=IntervalOrRatioDataDescr(type="float32"), preprocessing=_preprocessing(m),
        description="EM slices, grey values, at the model's pixel size (the axes' scale)")]
    outputs = [
        OutputTensorDescr(id=TensorId("probability"), axes=_axes(m, output=True),
                          test_tensor=FileDescr(source=files["probability"]),
                          data=IntervalOrRatioDataDescr(type="float32", range=(0.0, 1.0)),
                          description="foreground (mitochondrion) probability"),
        OutputTensorDescr(id=TensorId("mask"), axes=_axes(m, output=True),
                          test_tensor=FileDescr(source=files["mask"]),
                          data=NominalOrOrdinalDataDescr(type="uint8", values=[0, 1]),
                          postprocessing=[BinarizeDescr(kwargs=BinarizeKwargs(threshold=m.spec.threshold)),
                                          EnsureDtypeDescr(kwargs=EnsureDtypeKwargs(dtype="uint8"))],
                          description=f"mitochondria mask: probability above {m.spec.threshold:g}"),
    ]
    names = authors or m.info.get("authors") or ["napari-mitoseg"]
    return ModelDescr(
        name=m.name, description=str(m.info.get("summary") or f"mitochondria in EM: {m.name}"),
        authors=[Author(name=str(n)) for n in names], cite=_citations(m.info), license=LicenseId(licence),
        documentation=FileDescr(source=card), covers=[FileDescr(source=_cover(raw, mask, tmp / "cover.png"))],
        tags=["electron-microscopy", "mitochondria", "semantic-segmentation", "2d", "unet", "pytorch", "napari"],
        inputs=inputs, outputs=outputs, weights=_weights(m, tmp, torchscript),
        config=Config(bioimageio=BioimageioConfig(
            architecture_type="2D U-Net", modality="electron microscopy", target_structure=["mitochondria"],
            task="semantic segmentation"), **{CONFIG_KEY: _own_config(m)}),
    )


def _own_config(m: LoadedModel) -> dict:
    return {"spec": m.spec.to_dict(), "info": m.info, "format": 1}


__all__ = ["ExportError", "ModelError", "export_bioimageio"]

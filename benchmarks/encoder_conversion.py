"""The shipped models under smp's maintained encoder name against the deprecated one they were
trained with, on the whole testing stacks, through the public API with default options.

- "new": ``api.get_model(name)``, i.e. the ``tu-regnety_004`` config as shipped, loaded into the
  plain-torch network (:mod:`napari_mitoseg.regnet_unet`);
- "old": the same weights in the network smp builds for the deprecated ``timm-regnety_004``
  name (the path every earlier release took).

Both run through ``inference.iter_predict`` with default options; reported per model and stack:
the largest probability difference over all voxels, and each one's IoU against the ground truth.

    python benchmarks/encoder_conversion.py [--models mito-em-v3 mito-em-v2] [--volumes sbem lucchipp]
                                            [--pixel-size]  # also at the volume's pixel size
"""

from __future__ import annotations

import argparse
import json
import time
import warnings

import numpy as np
import tifffile

from napari_mitoseg import api
from napari_mitoseg.inference import PredictOptions, iter_predict
from napari_mitoseg.metrics import evaluate
from napari_mitoseg.model import WEIGHTS_NAME, LoadedModel

PIXEL_NM = {"sbem": 9.3, "lucchipp": 5.0}


def old_network(new: LoadedModel) -> LoadedModel:
    """``new``'s weights in smp's network for the deprecated ``timm-`` encoder name."""
    import segmentation_models_pytorch as smp
    import torch
    from safetensors.torch import load_file

    spec = new.spec
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        net = smp.create_model(spec.arch, encoder_name=spec.encoder.replace("tu-", "timm-"),
                               encoder_weights=None, encoder_depth=spec.encoder_depth,
                               decoder_channels=list(spec.decoder_channels), in_channels=1, classes=1)
    state = load_file(str(new.path / WEIGHTS_NAME))
    net.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    net = net.eval().to(memory_format=torch.channels_last)
    return LoadedModel(net=net, spec=spec, name=new.name + " (timm-)", path=new.path, info=new.info)


def run(model: LoadedModel, image, gt, options: PredictOptions):
    t0 = time.perf_counter()
    probs = np.zeros(image.shape, np.float32)
    mask = np.zeros(image.shape, bool)
    for r in iter_predict(model, image, options):
        probs[r.index], mask[r.index] = r.prob, r.mask
    return probs, mask, evaluate(mask, gt), time.perf_counter() - t0


def compare(name: str, volume: str, pixel_size: bool) -> dict:
    data = api.data_dir(volume)
    image = tifffile.imread(data / "test_image.tif")
    gt = tifffile.imread(data / "test_mask.tif") > 0
    new = api.get_model(name, "cpu")
    old = old_network(new)
    options = PredictOptions()
    if pixel_size:
        from napari_mitoseg.inference import choose_pixel_ratio

        ratio, _ = choose_pixel_ratio(new.spec, None, PIXEL_NM[volume])
        options = PredictOptions(pixel_ratio=ratio)
    p_new, m_new, r_new, s_new = run(new, image, gt, options)
    p_old, m_old, r_old, s_old = run(old, image, gt, options)
    return {
        "model": name, "volume": volume,
        "settings": f"pixel_size_{PIXEL_NM[volume]}nm" if pixel_size else "default",
        "encoder": new.spec.encoder, "max_prob_diff": float(np.abs(p_new - p_old).max()),
        "voxels_differing": int((m_new != m_old).sum()),
        "iou_new": round(r_new.overall.iou, 4), "iou_old": round(r_old.overall.iou, 4),
        "dice_new": round(r_new.overall.dice, 4), "precision_new": round(r_new.overall.precision, 4),
        "recall_new": round(r_new.overall.recall, 4),
        "seconds_new": round(s_new, 1), "seconds_old": round(s_old, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["mito-em-v3", "mito-em-v2"])
    ap.add_argument("--volumes", nargs="+", default=["sbem", "lucchipp"])
    ap.add_argument("--pixel-size", action="store_true", help="also run at each volume's pixel size")
    args = ap.parse_args()
    for name in args.models:
        for volume in args.volumes:
            if api.data_dir(volume) is None:
                print(f"{volume}: data absent, skipped")
                continue
            for px in (False, True) if args.pixel_size else (False,):
                model_nm = api.get_model(name, "cpu").spec.pixel_size_nm
                if px and model_nm in (None, PIXEL_NM[volume]):  # unknown, or the default run again
                    continue
                print(json.dumps(compare(name, volume, px)), flush=True)


if __name__ == "__main__":
    main()

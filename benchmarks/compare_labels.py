"""Are the labels the same as before? Segment the SBEM and Lucchi++ testing stacks with the
default settings and save the labels, or check them voxel for voxel against a saved set.

    PYTHONPATH=src .venv/bin/python benchmarks/compare_labels.py --save DIR    # reference set
    PYTHONPATH=src .venv/bin/python benchmarks/compare_labels.py --check DIR   # compare with it
    ... --volume sbem                                                           # one stack only

Each stack goes through the public API as ``mitoseg segment STACK -o OUT`` does:
:func:`napari_mitoseg.api.segment_file` with every option at its default (the shipped default
model, the pixel size the file records, the model's threshold) on the CPU. ``--save`` writes
``DIR/<volume>.tif`` (zlib TIFF, written with tifffile, not with the code under test) and
``DIR/<volume>.json`` (model, shape, IoU). ``--check`` prints, per stack, the number of voxels
that differ from the saved labels and both IoUs against the testing mask, and exits 1 unless
every stack is bit-identical (same shape, dtype and values). Stacks whose data are absent
(``api.data_dir``) are skipped with a note; with none present the exit code is 2.

Make the reference set with the code before a change, the check with the code after it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import tifffile

VOLUMES = ("sbem", "lucchipp")


def segment_volume(volume: str) -> tuple[np.ndarray, np.ndarray, dict] | None:
    """(labels, testing mask, facts) of one volume's testing stack, or None when it is absent."""
    from napari_mitoseg import api

    folder = api.data_dir(volume)
    if folder is None:
        return None
    t0 = time.perf_counter()
    result = api.segment_file(folder / "test_image.tif", device="cpu")
    seconds = time.perf_counter() - t0
    labels = np.asarray(result.labels)
    truth = tifffile.imread(str(folder / "test_mask.tif")) > 0
    facts = {"model": result.model_name, "shape": list(labels.shape), "dtype": str(labels.dtype),
             "pixel_ratio": result.pixel_ratio, "iou": iou(labels, truth), "seconds": round(seconds, 1)}
    return labels, truth, facts


def iou(labels: np.ndarray, truth: np.ndarray) -> float:
    a = labels > 0
    union = int(np.count_nonzero(a | truth))
    return float(np.count_nonzero(a & truth) / union) if union else 1.0


def save(folder: Path, volumes=VOLUMES) -> int:
    folder.mkdir(parents=True, exist_ok=True)
    done = 0
    for volume in volumes:
        got = segment_volume(volume)
        if got is None:
            print(f"{volume}: testing stack absent, skipped")
            continue
        labels, _, facts = got
        tifffile.imwrite(str(folder / f"{volume}.tif"), labels, compression="zlib",
                         photometric="minisblack")
        (folder / f"{volume}.json").write_text(json.dumps(facts, indent=1) + "\n")
        print(f"{volume}: saved {labels.shape} {labels.dtype}, IoU {facts['iou']:.4f}, "
              f"{facts['seconds']} s")
        done += 1
    return 0 if done else 2


def check(folder: Path, volumes=VOLUMES) -> int:
    checked, same = 0, 0
    for volume in volumes:
        ref_path = folder / f"{volume}.tif"
        if not ref_path.exists():
            print(f"{volume}: no saved labels in {folder}, skipped")
            continue
        got = segment_volume(volume)
        if got is None:
            print(f"{volume}: testing stack absent, skipped")
            continue
        labels, truth, facts = got
        ref = tifffile.imread(str(ref_path))
        checked += 1
        if ref.shape != labels.shape:
            print(f"{volume}: DIFFERENT shape {labels.shape}, saved {ref.shape}")
            continue
        differ = int(np.count_nonzero(ref != labels))
        identical = differ == 0 and ref.dtype == labels.dtype
        same += identical
        dtype = "" if ref.dtype == labels.dtype else f", dtype {labels.dtype} vs saved {ref.dtype}"
        print(f"{volume}: {differ} of {labels.size} voxels differ "
              f"({'bit-identical' if identical else 'DIFFERENT'}{dtype}); "
              f"IoU against the testing mask {facts['iou']:.4f} (saved labels {iou(ref, truth):.4f}); "
              f"{facts['seconds']} s")
    if not checked:
        return 2
    return 0 if same == checked else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--save", type=Path, metavar="DIR", help="segment and save the labels here")
    g.add_argument("--check", type=Path, metavar="DIR", help="segment and compare with the labels saved here")
    p.add_argument("--volume", action="append", choices=VOLUMES,
                   help="only this testing stack (repeatable; default: all)")
    args = p.parse_args(argv)
    volumes = tuple(args.volume or VOLUMES)
    return save(args.save, volumes) if args.save else check(args.check, volumes)


if __name__ == "__main__":
    sys.exit(main())

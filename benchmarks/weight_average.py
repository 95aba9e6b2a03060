"""Average the weights of several models of one architecture (a "model soup", or stochastic
weight averaging over checkpoints of one run) into a new model folder, to score with
``select_settings.py``. Each source is a model folder (``model.safetensors``) or a training
run's ``checkpoint.pt``; every floating tensor (batch-norm statistics too) is averaged with equal
weights, the rest taken from the first; ``config.json`` comes from the first model folder.

    python benchmarks/weight_average.py OUT src/napari_mitoseg/models/mito-em-v3 runs/x/ck_0500.pt ...
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path


def load_state(path: Path) -> dict:
    import torch
    from safetensors.torch import load_file

    if path.suffix == ".pt":
        return torch.load(path, map_location="cpu", weights_only=False)["model"]
    return load_file(path / "model.safetensors")


def main(argv=None) -> int:
    from safetensors.torch import save_file

    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("sources", nargs="+", type=Path)
    args = ap.parse_args(argv)
    folders = [p for p in args.sources if p.is_dir()]
    if not folders:
        ap.error("name at least one model folder (its config.json is the new model's)")
    states = [load_state(p) for p in args.sources]
    avg = {}
    for k, v in states[0].items():
        if v.is_floating_point():
            avg[k] = (sum(s[k].double() for s in states) / len(states)).half().contiguous()
        else:
            avg[k] = v.clone().contiguous()
    args.out.mkdir(parents=True, exist_ok=True)
    shutil.copy(folders[0] / "config.json", args.out / "config.json")
    save_file(avg, str(args.out / "model.safetensors"))
    print(f"{args.out}: the mean of {len(states)} models")
    return 0


if __name__ == "__main__":
    sys.exit(main())

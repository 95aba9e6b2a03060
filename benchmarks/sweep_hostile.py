"""Feed the command line and the Python API hostile input, and classify what each case does.

Each case runs in its own process in a temporary folder, with a time limit, and ends in one of:

- **good**: refused with exit code != 0 and exactly one ``mitoseg: error: ...`` line, or a
  correct result (exit 0, the outputs checked);
- **data loss**: a file the user had (an input, an earlier output) was changed or removed;
- **silent wrong**: exit 0 where a refusal was due, or a result that fails its check;
- **traceback**: a Python traceback on stderr (an API case: an exception that is not one of the
  package's own error types);
- **hang**: the time limit ran out;
- **unclear**: refused, but not with one clear line (or a note that is due is missing).

    python benchmarks/sweep_hostile.py              # all cases, prints one line per case and the counts
    python benchmarks/sweep_hostile.py -k measure   # the cases whose name holds "measure"
    python benchmarks/sweep_hostile.py --json       # the counts and each outcome as JSON

The shipped model segments the small synthetic stacks (64-96 pixels, a few slices), so the
whole sweep takes minutes on a laptop's CPU.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

CLASSES = ("good", "data loss", "silent wrong", "traceback", "hang", "unclear")
#: errors of the package's own (a clear message); anything else from the API is a traceback
API_ERRORS = """
from napari_mitoseg.inference import InputError
from napari_mitoseg.io import ReadError, WriteError
from napari_mitoseg.metrics import NotAMaskError, ShapeMismatchError
from napari_mitoseg.model import ModelError
from napari_mitoseg.morphology import MeasureError
from napari_mitoseg import api
CLEAR = (InputError, ReadError, WriteError, NotAMaskError, ShapeMismatchError, ModelError, MeasureError,
         FileNotFoundError, FileExistsError, PermissionError, getattr(api, "ProgressCallbackError", InputError))
try:
    from napari_mitoseg.training import TrainingError
    CLEAR += (TrainingError,)
except ImportError:
    pass
"""


@dataclass
class Case:
    name: str
    argv: list[str] | None = None  # mitoseg's arguments, or
    code: str | None = None  # Python run with numpy as np, api, and the folder as D
    expect: str = "refuse"  # or "ok"
    check: Callable[[Path, str, str], str | None] | None = None  # (folder, out, err) -> problem
    keep: tuple[str, ...] = ()  # files that must be left as they were
    env: dict = field(default_factory=dict)
    interrupt: bool = False  # send SIGINT once the first progress line shows


@dataclass
class Outcome:
    name: str
    kind: str
    detail: str
    seconds: float


# --------------------------------------------------------------------------- inputs


def make_inputs(d: Path) -> None:
    """Every file the cases read, in ``d`` (synthetic, made in code)."""
    import skimage.io
    import tifffile
    import zarr

    from napari_mitoseg.synthetic import make_sample

    im, gt = make_sample((3, 96, 96), seed=1)
    tif = lambda name, a: tifffile.imwrite(d / name, a, photometric="minisblack")  # noqa: E731
    tif("im.tif", im)
    tif("gt.tif", gt)
    tif("prob.tif", (gt * 0.7 + 0.1).astype(np.float32))
    tif("nan.tif", np.full(gt.shape, np.nan, np.float32))
    tif("f64.tif", im.astype(np.float64))
    tif("huge.tif", im.astype(np.float64) * 1e300)
    tif("tiny_values.tif", im.astype(np.float64) * 1e-300)
    tif("rgb.tif", np.zeros((40, 50, 3), np.uint8))
    tif("small_image.tif", np.zeros((1, 4, 4), np.uint8))
    neg = gt.astype(np.int16)
    neg[0, :5, :5] = -3
    tif("neg.tif", neg)
    one = np.zeros((4, 32, 32), np.uint8)
    one[1:3, 4:6, 4:6] = 1
    tif("one_small.tif", one)
    big_ids = np.zeros((4, 32, 32), np.int64)
    big_ids[1:3, 4:10, 4:10], big_ids[1:3, 14:20, 14:20] = 2**40, 2**40 + 7
    tif("big_ids.tif", big_ids)
    tif("only255.tif", np.full(gt.shape, 255, np.uint8))
    tif("long.tif", np.tile(im[:1], (40, 1, 1)))
    la = np.zeros((32, 32, 2), np.uint8)
    la[..., 0], la[..., 1] = im[0, :32, :32], 255
    skimage.io.imsave(d / "grey_alpha.png", la, check_contrast=False)
    (d / "empty.tif").write_bytes(b"")
    with tifffile.TiffWriter(d / "pages.tif") as w:
        for s in im:
            w.write(s, contiguous=False, metadata=None)
    with tifffile.TiffFile(d / "pages.tif") as t:
        cut = t.pages[2].offset
    (d / "cut.tif").write_bytes((d / "pages.tif").read_bytes()[:cut])
    zarr.open_group(str(d / "img.zarr"), mode="w").create_array("0", shape=im.shape, dtype=im.dtype)[:] = im
    for name in ("missing_chunk.zarr", "bad_chunk.zarr"):
        z = zarr.open(str(d / name), mode="w", shape=im.shape, dtype=im.dtype, chunks=(1, 96, 96))
        z[:] = im
    chunks = lambda name: sorted(p for p in (d / name).rglob("*") if p.is_file() and p.name != "zarr.json")  # noqa: E731
    chunks("missing_chunk.zarr")[1].unlink()
    chunks("bad_chunk.zarr")[1].write_bytes(b"not a chunk" * 9)
    grp = zarr.open_group(str(d / "analysis.zarr"), mode="w")
    grp.create_array("raw", shape=(2, 8, 8), dtype="uint8")[:] = 7
    (d / "out_file.zarr").write_bytes(b"the user's file")
    (d / "earlier.tif").write_bytes(b"the user's earlier result")
    os.mkfifo(d / "fifo.tif")
    make_models(d)


def make_models(d: Path) -> None:
    """Broken model folders beside a copy of the shipped one (for ``models`` and ``--model``)."""
    import shutil

    from safetensors.numpy import load_file, save_file

    from napari_mitoseg.model import resolve_model_path

    shipped = resolve_model_path("mito-em-v3")
    models = d / "models"
    for name in ("nan-weights", "no-weights", "pixel0", "pixel-str"):
        shutil.copytree(shipped, models / name)
    w = load_file(models / "nan-weights" / "model.safetensors")
    save_file({k: np.full_like(v, np.nan) if v.dtype.kind == "f" else v for k, v in w.items()},
              models / "nan-weights" / "model.safetensors")
    (models / "no-weights" / "model.safetensors").unlink()
    for name, value in (("pixel0", 0), ("pixel-str", "five")):
        cfg = json.loads((models / name / "config.json").read_text())
        cfg["spec"]["pixel_size_nm"] = value
        (models / name / "config.json").write_text(json.dumps(cfg))


# --------------------------------------------------------------------------- checks


def _labels(d: Path, name: str) -> np.ndarray:
    from napari_mitoseg.io import read_stack

    return np.asarray(read_stack(d / name))


def same_as(name: str, ref: str) -> Callable[[Path, str, str], str | None]:
    def check(d: Path, out: str, err: str) -> str | None:
        if not (d / name).exists():
            return f"{name} was not written"
        a, b = _labels(d, name), _labels(d, ref)
        if not b.any():
            return f"the reference {ref} is empty"
        return None if np.array_equal(a, b) else f"{name} differs from {ref} ({(a != b).mean():.1%} of voxels)"
    return check


def in_err(text: str) -> Callable[[Path, str, str], str | None]:
    return lambda d, out, err: None if text in err else f"no '{text}' on stderr"


def in_out(text: str) -> Callable[[Path, str, str], str | None]:
    return lambda d, out, err: None if text in out else f"no '{text}' on stdout"


def csv_ids(name: str, ids: list[int]) -> Callable[[Path, str, str], str | None]:
    def check(d: Path, out: str, err: str) -> str | None:
        import csv

        with open(d / name) as f:
            got = [int(r["id"]) for r in csv.DictReader(f)]
        return None if got == ids else f"ids {got}, expected {ids}"
    return check


def json_iou(d: Path, out: str, err: str) -> str | None:
    rep = json.loads(out.strip().splitlines()[-1])
    return None if 0.0 <= rep["iou"] <= 1.0 and len(rep["slices"]) == 3 else f"odd report {rep}"


# --------------------------------------------------------------------------- cases

SEG = ["segment", "im.tif"]
TRAIN = ["train", "--image", "im.tif", "--mask", "gt.tif", "--steps", "2", "--batch-size", "1"]
MEASURE = ["--voxel-size", "30", "8", "8", "-o", "m.csv"]


def segment_cases() -> list[Case]:
    return [
        Case("segment: reference labels", [*SEG, "-o", "ref.tif"], expect="ok",
             check=lambda d, o, e: None if _labels(d, "ref.tif").any() else "empty segmentation"),
        Case("segment: float64 reference", ["segment", "f64.tif", "-o", "ref64.tif"], expect="ok"),
        Case("segment: float64 near 1e302", ["segment", "huge.tif", "-o", "huge_out.tif"], expect="ok",
             check=same_as("huge_out.tif", "ref64.tif")),
        Case("segment: float64 near 1e-298", ["segment", "tiny_values.tif", "-o", "tiny_out.tif"],
             expect="ok", check=same_as("tiny_out.tif", "ref64.tif")),
        Case("segment --gt: the grey stack", [*SEG, "--gt", "im.tif", "--json"]),
        Case("segment --gt: a probability map", [*SEG, "--gt", "prob.tif", "--json"]),
        Case("segment --gt: a NaN image", [*SEG, "--gt", "nan.tif", "--json"]),
        Case("segment --gt: a mask", [*SEG, "--gt", "gt.tif", "--json"], expect="ok", check=json_iou),
        Case("segment: zarr with a missing chunk", ["segment", "missing_chunk.zarr", "-o", "o.tif"],
             expect="ok", check=in_err("chunks are not stored")),  # a warning: it may be intended
        Case("segment: undecodable chunk to .tif", ["segment", "bad_chunk.zarr", "-o", "o.tif"]),
        Case("segment: undecodable chunk to .zarr", ["segment", "bad_chunk.zarr", "-o", "o.zarr"]),
        Case("segment: TIFF cut between pages", ["segment", "cut.tif", "-o", "o.tif"]),
        Case("segment: a named pipe x.tif", ["segment", "fifo.tif", "-o", "o.tif"]),
        Case("segment: no -o", SEG),
        Case("segment: -o is the input", [*SEG, "-o", "im.tif"], keep=("im.tif",)),
        Case("segment: -o the zarr holding the input", ["segment", "img.zarr/0", "-o", "img.zarr"],
             keep=("img.zarr",)),
        Case("segment: -o a zarr group of other arrays", [*SEG, "-o", "analysis.zarr"],
             keep=("analysis.zarr",)),
        Case("segment: -o out.zarr, a regular file", [*SEG, "-o", "out_file.zarr"], keep=("out_file.zarr",)),
        Case("segment: RGB image", ["segment", "rgb.tif", "-o", "earlier.tif"], keep=("earlier.tif",)),
        Case("segment: 0-byte file", ["segment", "empty.tif", "-o", "o.tif"]),
        Case("segment: 4x4 image", ["segment", "small_image.tif", "-o", "o.tif"]),
        Case("segment: all-NaN image", ["segment", "nan.tif", "-o", "o.tif"]),
        Case("segment: missing file", ["segment", "nope.tif", "-o", "o.tif"]),
        Case("segment: --pixel-size 0", [*SEG, "--pixel-size", "0", "-o", "o.tif"]),
        Case("segment: --pixel-ratio 9", [*SEG, "--pixel-ratio", "9", "-o", "o.tif"]),
        Case("segment: --threshold 1.5", [*SEG, "--threshold", "1.5", "-o", "o.tif"]),
        Case("segment: --model ''", [*SEG, "--model", "", "-o", "o.tif"]),
        Case("segment: unknown --model", [*SEG, "--model", "no-such-model", "-o", "o.tif"]),
        Case("segment: model with NaN weights", [*SEG, "--model", "models/nan-weights", "-o", "o.tif"]),
        Case("segment: model config pixel size 0", [*SEG, "--model", "models/pixel0", "-o", "o.tif"]),
        Case("segment: model config pixel size 'five'", [*SEG, "--model", "models/pixel-str", "-o", "o.tif"]),
        Case("segment: Ctrl+C during --tta", ["segment", "long.tif", "--tta", "-o", "interrupted.tif"],
             interrupt=True),
    ]


def other_cli_cases() -> list[Case]:
    return [
        Case("evaluate: negative label ids", ["evaluate", "neg.tif", "gt.tif"]),
        Case("evaluate: grey image as prediction", ["evaluate", "im.tif", "gt.tif"]),
        Case("evaluate: a mask against itself", ["evaluate", "gt.tif", "gt.tif"], expect="ok",
             check=in_out("iou=1.0000")),
        Case("measure: negative ids", ["measure", "neg.tif", *MEASURE]),
        Case("measure: a grey image", ["measure", "im.tif", *MEASURE]),
        Case("measure: a grey+alpha PNG", ["measure", "grey_alpha.png", *MEASURE]),
        Case("measure: one small object", ["measure", "one_small.tif", *MEASURE], expect="ok",
             check=in_err("dropped")),
        Case("measure: ids near 2**40", ["measure", "big_ids.tif", *MEASURE], expect="ok",
             check=csv_ids("m.csv", [2**40, 2**40 + 7])),
        Case("measure: -o is the input", ["measure", "gt.tif", "--voxel-size", "30", "8", "8", "-o", "gt.tif"],
             keep=("gt.tif",)),
        Case("measure: negative voxel size",
             ["measure", "gt.tif", "--voxel-size", "30", "-8", "8", "-o", "m.csv"]),
        Case("measure: a named pipe", ["measure", "fifo.tif", *MEASURE]),
        Case("train: a mask of only 255", ["train", "--image", "im.tif", "--mask", "only255.tif", "--steps", "2",
                                           "--out", "run1"]),
        Case("train: the mask as the image", ["train", "--image", "gt.tif", "--mask", "gt.tif", "--steps", "2",
                                              "--out", "run2"]),
        Case("train: --lr nan", [*TRAIN, "--lr", "nan", "--out", "run3"]),
        Case("train: --lr -1", [*TRAIN, "--lr", "-1", "--out", "run4"]),
        Case("train: --seed -1", [*TRAIN, "--seed", "-1", "--out", "run5"]),
        Case("train: --config tile 0", [*TRAIN, "--config", '{"tile": 0}', "--out", "run6"]),
        Case("train: --val-fraction nan", [*TRAIN, "--val-fraction", "nan", "--out", "run7"]),
        Case("train: MITOSEG_THREADS=abc", [*TRAIN, "--out", "run8"], env={"MITOSEG_THREADS": "abc"}),
        Case("train: --out is the image", [*TRAIN, "--out", "im.tif"], keep=("im.tif",)),
        Case("models: broken folders marked", ["models"], expect="ok",
             env={"MITOSEG_MODEL_DIR": "models"},
             check=lambda d, o, e: None if all(
                 "broken" in ln for ln in o.splitlines() if ln.split("\t")[0] in ("nan-weights", "no-weights"))
             else "a model without usable weights is listed as usable"),
        Case("info", ["info"], expect="ok"),
    ]


def api_cases() -> list[Case]:
    img = "img = np.asarray(read_stack(D / 'im.tif'))\n"
    return [
        Case("api.segment(img, None)", code=img + "assert api.segment(img, None).shape == img.shape", expect="ok"),
        Case("api.segment(img, 'mito-em-v3')", code=img + "assert api.segment(img, 'mito-em-v3').any()",
             expect="ok"),
        Case("api.segment options as a dict", code=img + "api.segment(img, api.get_model(), {'threshold': 0.4})",
             expect="ok"),
        Case("api.segment options with a typo", code=img + "api.segment(img, api.get_model(), {'thresh': 0.4})"),
        Case("api.segment float64 near 1e302", code=img + (
            "a = api.segment(img.astype(float) * 1e300, None); b = api.segment(img.astype(float), None)\n"
            "assert b.any() and (a == b).all(), 'differs'"), expect="ok"),
        Case("api.get_model(123)", code="api.get_model(123)"),
        Case("api.merge_unpainted keep_slices=[99]",
             code="api.merge_unpainted(np.zeros((3, 8, 8)), np.ones((3, 8, 8)), keep_slices=[99])"),
        Case("api: a progress callback that raises",
             code=img + "api.segment(img, None, progress=lambda d, t: 1 / 0)"),
        Case("morphology.measure negative ids",
             code="from napari_mitoseg.morphology import measure\nmeasure(-np.ones((2, 8, 8), int), (30, 8, 8))"),
        Case("morphology.measure ids near 2**40", code=(
            "from napari_mitoseg.morphology import measure\nlab = np.zeros((4, 16, 16), np.int64)\n"
            "lab[1:3, 2:6, 2:6] = 2**40\nassert [m.id for m in measure(lab, (30, 8, 8))] == [2**40]"),
            expect="ok"),
        Case("api.iter_finetune name='/abs/path'", code=img + (
            "gt = np.asarray(read_stack(D / 'gt.tif'))\n"
            "from napari_mitoseg.training import FINETUNE\nimport dataclasses\n"
            "g = api.iter_finetune(img, gt, [0], name=str(D / 'abs-model'), "
            "config=dataclasses.replace(FINETUNE, steps=1))\nfor _ in g: pass\n"
            "assert not (D / 'abs-model').exists(), 'written outside the model folder'"), expect="refuse"),
    ]


def all_cases() -> list[Case]:
    return [*segment_cases(), *other_cli_cases(), *api_cases()]


# --------------------------------------------------------------------------- running


def snapshot(path: Path) -> str | None:
    """A digest of a file or folder tree (names and contents), None when it is gone."""
    if not path.exists() and not path.is_symlink():
        return None
    h = hashlib.sha256()
    items = sorted(path.rglob("*")) if path.is_dir() else [path]
    for p in items:
        h.update(str(p.relative_to(path.parent)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


def command(case: Case) -> list[str]:
    if case.argv is not None:
        return [sys.executable, "-m", "napari_mitoseg", *case.argv]
    code = "\n".join([
        "import sys", "from pathlib import Path", "import numpy as np", API_ERRORS,
        "from napari_mitoseg.io import read_stack", "D = Path('.').resolve()", "try:",
        *("    " + ln for ln in case.code.splitlines()),
        "except AssertionError as exc:", "    print(f'check failed: {exc}', file=sys.stderr); sys.exit(3)",
        "except CLEAR as exc:", "    print(f'mitoseg: error: {exc}', file=sys.stderr); sys.exit(2)",
    ])
    return [sys.executable, "-c", code]


def execute(case: Case, d: Path, timeout: float) -> tuple[int | None, str, str]:
    """(exit code or None on a time-out, stdout, stderr)."""
    import napari_mitoseg  # the sources under test, wherever they come from (PYTHONPATH or installed)

    src = str(Path(napari_mitoseg.__file__).resolve().parents[1])
    path = os.pathsep.join([src, *filter(None, [os.environ.get("PYTHONPATH")])])
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": path, **case.env}
    proc = subprocess.Popen(command(case), cwd=d, env=env, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        if case.interrupt:  # wait for the work to start, then Ctrl+C
            first = proc.stderr.readline()
            if first.startswith("segment:"):
                proc.send_signal(signal.SIGINT)
                out, err = proc.communicate(timeout=min(timeout, 60))
                return proc.returncode, out, first + err
            out, err = proc.communicate(timeout=timeout)
            return proc.returncode, out, first + err
        out, err = proc.communicate(timeout=timeout)
        return proc.returncode, out, err
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return None, "", ""


def classify(case: Case, d: Path, rc: int | None, out: str, err: str, before: dict) -> tuple[str, str]:
    changed = [k for k, v in before.items() if snapshot(d / k) != v]
    if rc is None:
        return "hang", "time limit"
    if changed:
        return "data loss", f"changed: {', '.join(changed)}"
    if "Traceback" in err:
        return "traceback", err.strip().splitlines()[-1] if err.strip() else ""
    if rc == 3 and "check failed" in err:
        return "silent wrong", err.strip().splitlines()[-1]
    errors = [ln for ln in err.splitlines() if ln.startswith("mitoseg: error: ")]
    if case.interrupt:
        ok = rc == 130 and "interrupted" in err and not (d / "interrupted.tif").exists()
        return ("good", "stopped") if ok else ("unclear", f"exit {rc}: {err.strip()[-120:]}")
    if case.expect == "refuse":
        if rc == 0:
            return "silent wrong", "exit 0 where a refusal was due"
        return ("good", errors[0][16:]) if len(errors) == 1 else ("unclear", f"exit {rc}: {err.strip()[-120:]}")
    if rc != 0:
        return "unclear", f"exit {rc}: {(errors or [err.strip()[-120:]])[0]}"
    problem = case.check(d, out, err) if case.check else None
    return ("silent wrong", problem) if problem else ("good", "correct result")


def run_case(case: Case, d: Path, timeout: float) -> Outcome:
    before = {k: snapshot(d / k) for k in case.keep}
    t0 = time.perf_counter()
    rc, out, err = execute(case, d, timeout)
    kind, detail = classify(case, d, rc, out, err, before)
    return Outcome(case.name, kind, detail, time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-k", default="", help="only the cases whose name holds this text")
    p.add_argument("--timeout", type=float, default=180, help="seconds per case (default 180)")
    p.add_argument("--json", action="store_true", help="print the counts and outcomes as JSON")
    args = p.parse_args(argv)
    cases = [c for c in all_cases() if args.k in c.name]
    outcomes = []
    with tempfile.TemporaryDirectory(prefix="mitoseg-sweep-") as tmp:
        d = Path(tmp)
        make_inputs(d)
        for case in cases:
            o = run_case(case, d, args.timeout)
            outcomes.append(o)
            if not args.json:
                print(f"{o.kind:>12}  {o.seconds:6.1f}s  {o.name}: {o.detail}", flush=True)
    counts = Counter(o.kind for o in outcomes)
    if args.json:
        print(json.dumps({"counts": {k: counts.get(k, 0) for k in CLASSES},
                          "outcomes": [o.__dict__ for o in outcomes]}, indent=1))
    else:
        print(f"{len(outcomes)} cases: " + ", ".join(f"{counts.get(k, 0)} {k}" for k in CLASSES))
    return 0 if counts.get("good", 0) == len(outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())

"""Progress of long command-line runs: a bar on a terminal, plain lines elsewhere."""

from __future__ import annotations

import io as stdio
import json

import numpy as np
import tifffile

from napari_mitoseg._progress import Progress
from napari_mitoseg.cli import main


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_plain_lines_every_tenth_with_rate_and_time_left():
    out, clock = stdio.StringIO(), Clock()
    p = Progress("slices", "segment", stream=out, bar=False, clock=clock)
    for done in range(1, 101):
        clock.t += 0.5  # 2 slices per second
        p(done, 100)
    lines = out.getvalue().splitlines()
    assert len(lines) == 10  # 10 %, 20 %, ... 100 %
    assert lines[0] == "segment: 10/100 slices (10 %), 2 slices/s, about 0:45 left"
    assert lines[-1] == "segment: 100/100 slices (100 %), 2 slices/s"


def test_plain_lines_also_every_few_seconds_on_long_steps():
    out, clock = stdio.StringIO(), Clock()
    p = Progress("steps", "train", stream=out, bar=False, every_s=10.0, clock=clock)
    for done in range(1, 31):
        clock.t += 4.0
        p(done, 1000)
    lines = out.getvalue().splitlines()
    # 120 s of steps, none reaching 10 %: a line every 12 s (the first call after 10 s)
    assert [x.split("/")[0] for x in lines] == [f"train: {n}" for n in range(3, 31, 3)]
    assert lines[-1] == "train: 30/1000 steps (3 %), 0.25 steps/s, about 1:04:40 left"


def test_a_resumed_run_counts_its_rate_from_where_it_started():
    out, clock = stdio.StringIO(), Clock()
    p = Progress("steps", "train", stream=out, bar=False, clock=clock)
    clock.t = 1.0
    p(501, 1000)  # the first step of a run resumed at 500
    clock.t = 2.0
    assert p.line(502, 1000) == "train: 502/1000 steps (50 %), 1 steps/s, about 8:18 left"


def test_a_terminal_gets_a_tqdm_bar():
    out = stdio.StringIO()
    p = Progress("slices", "segment", stream=out, bar=True)
    for done in range(1, 4):
        p(done, 3)
    p.close()
    text = out.getvalue()
    assert "segment" in text and "3/3" in text and "slice/s" in text


def test_segment_off_a_terminal_prints_plain_progress_lines(tmp_path, sample, tiny_model_dir, capsys):
    tifffile.imwrite(tmp_path / "im.tif", sample[0], photometric="minisblack")
    assert main(["segment", str(tmp_path / "im.tif"), "--model", str(tiny_model_dir), "--device", "cpu",
                 "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["shape"] == [3, 100, 124]  # stdout stays one JSON object
    lines = [x for x in captured.err.splitlines() if x.startswith("segment: ")]
    assert [x.split(" (")[0] for x in lines] == ["segment: 1/3 slices", "segment: 2/3 slices",
                                                 "segment: 3/3 slices"]


def test_train_off_a_terminal_prints_plain_progress_lines(tmp_path, sample, capsys):
    image, mask = sample
    tifffile.imwrite(tmp_path / "im.tif", image, photometric="minisblack")
    tifffile.imwrite(tmp_path / "m.tif", mask, photometric="minisblack")
    assert main(["train", "--image", str(tmp_path / "im.tif"), "--mask", str(tmp_path / "m.tif"), "--spec",
                 json.dumps({"encoder": "mobilenet_v2", "encoder_depth": 3, "decoder_channels": [16, 8, 8],
                             "tile_size": 128, "tile_overlap": 16}),
                 "--steps", "2", "--batch-size", "1", "--device", "cpu", "--out", str(tmp_path / "run")]) == 0
    captured = capsys.readouterr()
    assert "train: 2/2 steps (100 %)" in captured.err
    assert "step 2/2 loss=" in captured.out
    assert np.isfinite(float(captured.out.split("loss=")[1].split()[0]))

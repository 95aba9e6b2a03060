"""The Segment widget against the command line on one stack: wall time, and the viewer's longest
main-thread gap while the widget segments.

Each repeat runs ``mitoseg segment --no-ortho`` as a new process (start-up, model load and
writing the result included) and then clicks *Segment* in a napari viewer that is already open
(ortho planes off too; the model loaded on the click, the slices shown as they come, the undo
record and the labels layer made).
A 5 ms Qt timer on the main thread records the gaps between its ticks during each GUI run.

    xvfb-run -a python benchmarks/bench_gui_segment.py [--volume lucchipp] [--slices 0:25] [--repeats 3]

Without the data (``../shared/data``) it uses the synthetic sample. Run it on an idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "docs"))
from make_screenshots import wait_for  # noqa: E402  (run Qt's loop until a signal fires)

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def stack(volume: str, slices: str) -> tuple[np.ndarray, float | None, str]:
    """(Z, Y, X) uint8 stack, its pixel size in nm (None: unknown) and what it is."""
    a, b = (int(v) for v in slices.split(":"))
    try:
        import em_data  # beside this script

        image, _ = em_data.load("test", volume)
        what = f"{volume} testing slices {a}:{b}"
        return np.ascontiguousarray(image[a:b]), em_data.VOLUMES[volume].pixel_nm, what
    except (SystemExit, FileNotFoundError, OSError):
        from napari_mitoseg.synthetic import make_sample

        image = make_sample((b - a, 512, 512))[0]
        return image, None, f"the synthetic sample {image.shape}"


def run_cli(path: Path, out: Path, pixel_nm: float | None) -> tuple[float, float]:
    """(the process's wall time, the segmentation's own seconds as ``--json`` reports them)."""
    cmd = [sys.executable, "-m", "napari_mitoseg", "segment", str(path), "-o", str(out), "--no-ortho", "--json"]
    if pixel_nm:
        cmd += ["--pixel-size", str(pixel_nm)]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return time.perf_counter() - t0, json.loads(done.stdout.strip().splitlines()[-1])["seconds"]


class GapMeter:
    """Ticks every 5 ms on the main thread; the longest gap between ticks since :meth:`start`."""

    def __init__(self) -> None:
        from qtpy.QtCore import QTimer

        self.timer = QTimer()
        self.timer.setInterval(5)
        self.timer.timeout.connect(self._tick)
        self.gaps: list[float] = []
        self._last = 0.0

    def _tick(self) -> None:
        now = time.perf_counter()
        self.gaps.append(now - self._last)
        self._last = now

    def start(self) -> None:
        self.gaps, self._last = [], time.perf_counter()
        self.timer.start()

    def stop(self) -> tuple[float, int]:
        """(longest gap in ms, how many gaps over 100 ms)."""
        self.timer.stop()
        return 1000 * max(self.gaps, default=0.0), sum(g > 0.1 for g in self.gaps)


def open_viewer(image: np.ndarray, pixel_nm: float | None):
    import napari

    viewer = napari.Viewer(show=True)
    meta = ({"scale": (pixel_nm,) * 3, "units": ("nm",) * 3, "metadata": {"voxel_size_nm": (pixel_nm,) * 3}}
            if pixel_nm else {})
    viewer.add_image(image, name="stack", **meta)
    _, seg = viewer.window.add_plugin_dock_widget("napari-mitoseg", "Segment mitochondria")
    if not seg.ready:
        wait_for(seg.device_choice.ready, 120)
    seg.ortho.setChecked(False)  # the same work as the command line's --no-ortho
    return viewer, seg


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--volume", default="lucchipp", choices=["sbem", "lucchipp"])
    p.add_argument("--slices", default="0:25", help="the slices segmented, A:B")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    import tifffile

    image, pixel_nm, what = stack(args.volume, args.slices)
    tmp = Path(tempfile.mkdtemp(prefix="mitoseg-gui-bench-"))
    path = tmp / "stack.tif"
    tifffile.imwrite(path, image)
    viewer, seg = open_viewer(image, pixel_nm)
    meter = GapMeter()
    cli, cli_own, gui, gaps, long_gaps = [], [], [], [], []
    for r in range(args.repeats):
        wall, own = run_cli(path, tmp / f"out{r}.tif", pixel_nm)
        cli.append(wall)
        cli_own.append(own)
        meter.start()
        t0 = time.perf_counter()
        seg.run_button.click()
        wait_for(seg.run_finished)
        gui.append(time.perf_counter() - t0)
        gap, n_long = meter.stop()
        gaps.append(gap)
        long_gaps.append(n_long)
        print(f"repeat {r + 1}: command line {cli[-1]:.1f} s, widget {gui[-1]:.1f} s, longest main-thread "
              f"gap {gap:.0f} ms ({n_long} over 100 ms)", file=sys.stderr)
    viewer.close()
    print(f"{what}, {image.shape[0]} slices of {image.shape[1]} x {image.shape[2]}, "
          f"{os.cpu_count()} cores, {args.repeats} repeats (median; min-max)\n")
    print("| path | wall time (s) | longest main-thread gap (ms) | gaps > 100 ms |")
    print("|---|---:|---:|---:|")
    def spread(v: list[float], fmt: str) -> str:
        return f"{statistics.median(v):{fmt}} ({min(v):{fmt}}-{max(v):{fmt}})"

    print(f"| `mitoseg segment` (a new process) | {spread(cli, '.1f')} | - | - |")
    print(f"| `mitoseg segment`, its own `seconds` (no start-up) | {spread(cli_own, '.1f')} | - | - |")
    print(f"| Segment widget (click to result) | {spread(gui, '.1f')} | {spread(gaps, '.0f')} "
          f"| {statistics.median(long_gaps):.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Estimate the SBEM volume's pixel size from Lucchi++'s, whose 5 nm is published.

The CDeep3M sample carries no pixel size. Mitochondria of mouse brain neurites have much the
same width whatever the microscope, so the ratio of the median mitochondrion width (the minor
axis of each cross-section, objects touching the border left out) in the two labelled training
stacks gives the ratio of pixel sizes. Also printed: the same from the equivalent diameter, as
a check. Reads the training masks only.

    python benchmarks/estimate_pixel_size.py
"""

from __future__ import annotations

import json
import sys

import em_data  # beside this script
import numpy as np
from skimage.measure import label, regionprops


def widths(mask: np.ndarray, every: int) -> tuple[np.ndarray, np.ndarray]:
    minor, diam = [], []
    for s in mask[::every]:
        for r in regionprops(label(s)):
            y0, x0, y1, x1 = r.bbox
            if r.area < 50 or y0 == 0 or x0 == 0 or y1 == s.shape[0] or x1 == s.shape[1]:
                continue
            minor.append(r.axis_minor_length)
            diam.append(r.equivalent_diameter_area)
    return np.array(minor), np.array(diam)


def main() -> int:
    _, sbem = em_data.load("train", "sbem")
    _, lucchi = em_data.load("train", "lucchipp")
    s_minor, s_diam = widths(sbem, 1)
    l_minor, l_diam = widths(lucchi, 5)
    l_nm = em_data.VOLUMES["lucchipp"].pixel_nm
    out = {
        "sbem_objects": len(s_minor), "lucchipp_objects": len(l_minor),
        "median_width_px": {"sbem": round(float(np.median(s_minor)), 1),
                            "lucchipp": round(float(np.median(l_minor)), 1)},
        "median_width_nm_lucchipp": round(float(np.median(l_minor)) * l_nm, 0),
        "sbem_pixel_nm_from_width": round(l_nm * float(np.median(l_minor) / np.median(s_minor)), 2),
        "sbem_pixel_nm_from_diameter": round(l_nm * float(np.median(l_diam) / np.median(s_diam)), 2),
    }
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())

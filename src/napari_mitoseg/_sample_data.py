"""npe2 sample data: the seeded synthetic EM volume and its ground truth."""

from __future__ import annotations


def make_em_sample() -> list[tuple]:
    """(16, 512, 512) EM-like image layer "EM sample" and its labels "EM sample ground truth"."""
    from .synthetic import make_sample

    image, mask = make_sample()
    return [
        (image, {"name": "EM sample"}, "image"),
        (mask, {"name": "EM sample ground truth", "opacity": 0.5}, "labels"),
    ]

"""From a binary mask to one object per mitochondrion, and their measurements: the objects
(:func:`instances`, :func:`remove_small`) and the measurements (:func:`measure`,
:func:`summarize`, :func:`write_csv`) live in :mod:`napari_mitoseg.morphology`; this module keeps
them importable under the names the pipeline's last step has always had."""

from __future__ import annotations

from .morphology import MitoMeasure, instances, measure, remove_small, summarize, write_csv

__all__ = ["MitoMeasure", "instances", "measure", "remove_small", "summarize", "write_csv"]

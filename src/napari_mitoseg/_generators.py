"""Long work is a generator that yields progress and returns its result; this runs one to the end."""

from __future__ import annotations

from collections.abc import Generator
from typing import TypeVar

R = TypeVar("R")


def result_of(gen: Generator[object, None, R]) -> R:
    """Drain ``gen`` (ignoring what it yields) and return its return value."""
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            return stop.value

"""``python -m napari_mitoseg ...``: the same as the ``mitoseg`` command."""

from .cli import run

if __name__ == "__main__":
    run()

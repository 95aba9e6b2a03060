"""napari-mitoseg: mitochondria segmentation for electron-microscopy volumes.

Importing the package is cheap: torch, Qt and napari are imported only by the
submodules that need them (``model``, ``inference``, ``training``, ``_widgets``).
"""

__version__ = "0.1.0"

__all__ = ["__version__"]

"""How the widgets show layers: physical units and the scale bar, and the 3D view (an oblique
camera with the layers that would hide the objects put away, and back when the view leaves 3D)."""

from __future__ import annotations

import numpy as np

from ._common import VOXEL_SIZE_NM, same_layer

#: the camera of the 3D view after measuring: tilted, so that a stack reads as a volume
OBLIQUE_ANGLES = (-20.0, 35.0, -50.0)


def _pixels(layer) -> bool:
    return all(str(u) == "pixel" for u in layer.units)


def has_physical_size(layer) -> bool:
    """Whether the layer's scale is a physical size: units other than pixels, or a scale equal
    to the voxel size (nm) the reader recorded."""
    if layer is None:
        return False
    if not _pixels(layer):
        return True
    voxel = layer.metadata.get(VOXEL_SIZE_NM)
    if voxel is None or len(voxel) > layer.ndim:
        return False
    return bool(np.allclose(np.asarray(layer.scale)[-len(voxel):], np.asarray(voxel, float)))


def show_in_nm(viewer, layers) -> None:
    """Give those of ``layers`` still in pixels (their scale in nm) the unit nm, and show the
    scale bar."""
    for layer in layers:
        if layer is not None and _pixels(layer):
            layer.units = ("nm",) * layer.ndim
    scale_bar(viewer).visible = True


def scale_bar(viewer):
    """The viewer's scale bar overlay (``viewer.canvas.overlays`` from napari 0.9 on)."""
    canvas = getattr(viewer, "canvas", None)
    return canvas.overlays.scale_bar if canvas is not None else viewer.scale_bar


def camera(viewer):
    """The viewer's camera (``viewer.scene.camera`` from napari 0.9 on)."""
    scene = getattr(viewer, "scene", None)
    return scene.camera if scene is not None else viewer.camera


class View3D:
    """Puts a viewer into an oblique 3D view of some layers, hiding the others (images, other
    labels), and shows the hidden ones again when the view goes back to 2D."""

    def __init__(self, viewer) -> None:
        self.viewer = viewer
        self._hidden: list = []
        viewer.dims.events.ndisplay.connect(self._on_ndisplay)

    def show(self, keep) -> None:
        """3D, with only the layers in ``keep`` (and ones already hidden by the user) drawn."""
        viewer = self.viewer
        self.restore()
        for layer in viewer.layers:
            if layer.visible and not any(same_layer(layer, k) for k in keep):
                layer.visible = False
                self._hidden.append(layer)
        for k in keep:
            k.visible = True
        viewer.dims.ndisplay = 3
        self.reset()

    def reset(self) -> None:
        """Fit the view to the layers and tilt the camera."""
        viewer = self.viewer
        viewer.reset_view()
        if viewer.dims.ndisplay == 3:
            camera(viewer).angles = OBLIQUE_ANGLES

    def restore(self) -> None:
        """Show the layers :meth:`show` hid (those still in the viewer)."""
        hidden, self._hidden = self._hidden, []
        for layer in hidden:
            if any(same_layer(layer, ly) for ly in self.viewer.layers):
                layer.visible = True

    def _on_ndisplay(self, event=None) -> None:
        if self.viewer.dims.ndisplay == 2:
            self.restore()


def scales_differ(a, b) -> bool:
    """Whether two layers of the same shape are drawn at different scales."""
    return a is not None and b is not None and not np.allclose(a.scale, b.scale)

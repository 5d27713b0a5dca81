"""npe2 entry point (napari.yaml): Plugins > sdglass explorer docks every panel on this viewer."""

from __future__ import annotations

from magicgui.widgets import Label


def explorer(napari_viewer):
    """Build the sdglass session on an existing viewer; returns a small status widget."""
    from app.launcher import launch

    launch(viewer=napari_viewer, return_viewer=True)
    return Label(value="sdglass: panels docked (System, Dynamics, Fields, Model, Export)")

"""npe2 entry point (napari.yaml): Plugins > sdglass explorer docks every panel on this viewer."""

from __future__ import annotations

from magicgui.widgets import Container, Label


class Explorer(Container):
    """Builds the sdglass session on the viewer napari passes in; shows a one-line status.

    napari hands plugin widgets a PublicOnlyProxy of the viewer; the explorer
    needs the viewer itself (its window and canvas), so the proxy is unwrapped.
    """

    def __init__(self, napari_viewer) -> None:
        from app.launcher import launch

        viewer = getattr(napari_viewer, "__wrapped__", napari_viewer)
        launch(viewer=viewer, return_viewer=True)
        self.status = Label(
            value="sdglass: panels docked (System, Dynamics, Fields, Model, Export)"
        )
        super().__init__(widgets=[self.status])

"""npe2 entry point (napari.yaml): Plugins > sdglass explorer docks every panel on this viewer,
or shows them again where the viewer has them already."""

from __future__ import annotations

from magicgui.widgets import Container, Label


class Explorer(Container):
    """Builds the sdglass session on the viewer napari passes in; shows a one-line status.

    napari hands plugin widgets a PublicOnlyProxy of the viewer; the explorer
    needs the viewer itself (its window and canvas), so the proxy is unwrapped.
    """

    def __init__(self, napari_viewer) -> None:
        from app.launcher import launch, session_of, show_panels

        viewer = getattr(napari_viewer, "__wrapped__", napari_viewer)
        try:  # the sdglass app itself, or a second press: one session per viewer
            show_panels(session_of(viewer))
            text = "sdglass: panels shown again (System, Dynamics, Fields, Model, Export)"
        except KeyError:
            launch(viewer=viewer, return_viewer=True)
            text = "sdglass: panels docked (System, Dynamics, Fields, Model, Export)"
        self.status = Label(value=text)
        super().__init__(widgets=[self.status])

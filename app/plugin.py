"""npe2 entry points (napari.yaml).

Plugins > sdglass explorer docks every panel on this viewer, or shows them again where
the viewer has them already. The reader opens an sdglass frames or trajectory file
(napari's File > Open, or a file dropped on the window) as the state to continue from,
like the System panel's Open state.
"""

from __future__ import annotations

from magicgui.widgets import Container, Label
from napari.utils.notifications import show_warning

from core.io import file_format

#: npe2's "read, and there are no layers to add" (the session shows the state itself)
NO_LAYERS = [(None,)]


def _viewer(napari_viewer):
    """napari hands plugins a PublicOnlyProxy of the viewer; the explorer needs the viewer
    itself (its window and canvas)."""
    return getattr(napari_viewer, "__wrapped__", napari_viewer)


def _session(viewer):
    """The viewer's sdglass session, None where the explorer is not docked yet."""
    from app.launcher import session_of

    try:
        return session_of(viewer)
    except KeyError:
        return None


class Explorer(Container):
    """Builds the sdglass session on the viewer napari passes in (or shows its panels
    again); shows a one-line status."""

    def __init__(self, napari_viewer) -> None:
        from app.launcher import launch, show_panels

        viewer = _viewer(napari_viewer)
        session = _session(viewer)
        if session is not None:  # the sdglass app itself, or a second press
            show_panels(session)
            text = "sdglass: panels shown again (System, Dynamics, Fields, Model, Export)"
        else:
            launch(viewer=viewer, return_viewer=True)
            text = "sdglass: panels docked (System, Dynamics, Fields, Model, Export)"
        self.status = Label(value=text)
        super().__init__(widgets=[self.status])


def get_reader(path):
    """The reader for one sdglass frames or trajectory file; None for anything else (napari
    then asks its other readers)."""
    if not isinstance(path, str) or file_format(path) is None:
        return None
    return open_state_file


def open_state_file(path: str) -> list:
    """Open the state in the current viewer's session (System panel: Open state, in the
    background), or dock the explorer with it where the viewer has no session yet."""
    import napari

    from app.launcher import launch, show_panels

    viewer = _viewer(napari.current_viewer())
    session = _session(viewer)
    if session is None:
        launch(viewer=viewer, return_viewer=True, state=path)
        return NO_LAYERS
    show_panels(session)
    system = session.panels["System"]
    system.state_path.value = path
    if not system.open_state(path):
        show_warning(
            f"sdglass: {path} was not opened: the System panel is still building a system "
            "(open it again when that is done)"
        )
    return NO_LAYERS

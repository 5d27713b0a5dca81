"""`launch`: one function builds the whole sdglass viewer (STYLE.md, micro-sam pattern).

Used by `python -m app`, `sdglass app` and the GUI tests (return_viewer=True).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import napari
from qtpy.QtCore import QMargins, Qt, QTimer
from qtpy.QtWidgets import QApplication, QFrame, QScrollArea

from app.panels.dynamics import DEMO_PRESET, DynamicsPanel
from app.panels.export import ExportPanel, save_window
from app.panels.fields import FieldsPanel
from app.panels.model import ModelPanel
from app.panels.system import SystemPanel
from app.responsiveness import ResponsivenessProbe
from app.session import AppSession
from core.io import read_state

#: The session of each viewer built by launch (keyed by id(viewer)).
_SESSIONS: dict[int, AppSession] = {}


def session_of(viewer) -> AppSession:
    """The AppSession behind a viewer built by launch (tests and plugins use it)."""
    return _SESSIONS[id(viewer)]


#: GIL switch interval while the app runs (Python's default is 5 ms). The dynamics worker
#: calls many short torch ops, each needing the GIL; with the default, every GIL hand-back
#: from the busy main thread (drawing) costs it up to 5 ms.
SWITCH_INTERVAL_S = 0.0005

#: Delay after the last dynamics step before the screenshot (ms): plots and canvas redraw.
SETTLE_MS = 800

#: --compare: the longest wait after the run for the comparison of its final spins (s).
COMPARE_WAIT_S = 120.0

#: --steps presses Start this long after the window is on screen with every plot drawn (ms),
#: as a user would: the window's first layout and paint (~0.5 s with software OpenGL: every
#: dock, the 3D canvas and three full matplotlib draws) is not part of the run.
START_AFTER_SHOWN_MS = 500


#: Preferred main window size (px), shrunk to the screen's available area.
WINDOW_SIZE = (1600, 1000)


class _PanelScrollArea(QScrollArea):
    """Asks for its panel's full size (a plain scroll area asks for little): the window's dock
    layout then shares the height by what each panel needs."""

    def sizeHint(self):
        hint = self.widget().sizeHint()
        return hint.grownBy(QMargins(0, 0, self.verticalScrollBar().sizeHint().width(), 0))


def scrolling(panel) -> QScrollArea:
    """A panel in a vertical scroll area, so that a dock may be shorter than the panel and the
    window fits a laptop screen (napari docks a magicgui panel's inner widget, without the
    scroll area of magicgui's own scrollable option)."""
    area = _PanelScrollArea()
    area.setWidgetResizable(True)
    area.setFrameShape(QFrame.Shape.NoFrame)
    area.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
    area.setWidget(panel.native)
    area.setMinimumWidth(
        panel.native.minimumSizeHint().width() + area.verticalScrollBar().sizeHint().width()
    )
    return area


def fit_to_screen(window, size: tuple[int, int] = WINDOW_SIZE) -> None:
    """Resize the main window to size, or to the screen's available area where that is smaller."""
    screen = window.screen() if hasattr(window, "screen") else QApplication.primaryScreen()
    available = screen.availableGeometry()
    window.resize(min(size[0], available.width()), min(size[1], available.height()))


def show_whole(window, dock, other, extra: int = 0) -> None:
    """Give a dock its panel's full height (Dynamics: Start and the readout in view), taking
    the space from another dock in the same column. A second pass adds what the first fell
    short by (the tab bar of a tabbed group is not part of a dock's size hint)."""
    full = dock.sizeHint().height() + extra
    rest = max(window.height() - full, 1)
    window.resizeDocks([dock, other], [full, rest], Qt.Orientation.Vertical)
    if extra == 0:

        def second_pass() -> None:
            area = dock.widget()
            if area is None or not dock.isVisible():  # closed meanwhile
                return
            short = area.widget().sizeHint().height() - area.viewport().height()
            if short > 0:
                show_whole(window, dock, other, short)

        QTimer.singleShot(0, second_pass)


def dock_panels(viewer, session: AppSession) -> dict:
    """Dock the panels right (tabbed) and the live plots at the bottom; returns the panels.
    A panel's close button hides it; the Window menu (or Plugins > sdglass explorer) shows it
    again."""
    panels = {
        "System": SystemPanel(session),
        "Dynamics": DynamicsPanel(session),
        "Fields": FieldsPanel(session),
        "Model": ModelPanel(session),
        "Export": ExportPanel(session),
    }
    menu = getattr(viewer.window, "window_menu", None)  # Window menu: a toggle per panel
    docks = {}
    for name in ("System", "Model", "Export", "Dynamics", "Fields"):
        docks[name] = viewer.window.add_dock_widget(
            scrolling(panels[name]),
            name=name,
            area="right",
            tabify=name not in ("System", "Dynamics"),
            menu=menu,
        )
    docks["Live plots"] = viewer.window.add_dock_widget(
        session.plots, name="Live plots", area="bottom", menu=menu
    )
    for dock in docks.values():
        # napari's close button removes a dock for good; the session's panels close to hide
        dock.destroyOnClose = dock.hide
    session.docks = docks
    window = getattr(viewer.window, "_qt_window", None)
    if window is not None:  # the panels run down the right edge, the plots sit under the canvas
        window.setCorner(Qt.Corner.BottomRightCorner, Qt.DockWidgetArea.RightDockWidgetArea)

    def raise_main() -> None:
        docks["System"].raise_()
        docks["Dynamics"].raise_()
        if window is not None:
            show_whole(window, docks["Dynamics"], docks["System"])

    QTimer.singleShot(0, raise_main)  # after launch has sized the window
    return panels


def show_panels(session: AppSession) -> None:
    """Show every panel and the live plots again (closed ones too), System and Dynamics on
    top of their tabs."""
    for dock in session.docks.values():
        dock.show()
    session.docks["System"].raise_()
    session.docks["Dynamics"].raise_()


def frame_view(viewer) -> None:
    """Oblique 3D view of the whole box with some margin."""
    viewer.reset_view()
    scene = getattr(viewer, "scene", None)
    camera = scene.camera if scene is not None and hasattr(scene, "camera") else viewer.camera
    camera.angles = (-15.0, 25.0, 140.0)
    camera.zoom *= 0.7


def _dismiss_notifications(viewer) -> None:
    from napari._qt.dialogs.qt_notification import NapariQtNotification

    window = getattr(viewer.window, "_qt_window", None)
    if window is not None:
        for toast in window.findChildren(NapariQtNotification):
            toast.close()


def when_shown(viewer, session: AppSession, action) -> None:
    """Call action() START_AFTER_SHOWN_MS after the main window is visible and every live plot
    has been drawn once (polled on the event loop); at the first poll for a viewer that is not
    shown (nothing will be drawn)."""
    qt_window = getattr(viewer.window, "_qt_window", None)
    timer = QTimer(session.plots)  # goes with the viewer's widgets

    def check() -> None:
        shown = qt_window is not None and qt_window.isVisible()
        if shown and any(p.background is None for p in session.plots.plots.values()):
            return
        timer.stop()
        timer.timeout.disconnect(check)
        timer.deleteLater()
        QTimer.singleShot(START_AFTER_SHOWN_MS if shown else 0, action)

    timer.timeout.connect(check)
    timer.start(50)


def when_compared(session, action) -> None:
    """Call action once the Fields panel has compared ML with ED on the run's final spins
    (or comparing stopped after a failure, or COMPARE_WAIT_S passed), with the atoms
    coloured by the ML error and the Fields panel raised."""
    fields, give_up = session.panels["Fields"], time.monotonic() + COMPARE_WAIT_S

    def check() -> None:
        final = fields.history and fields.history[-1][1] == session.sim.step_count
        if (fields.job is not None or (fields.track.value and not final)) and (
            time.monotonic() < give_up
        ):
            QTimer.singleShot(100, check)
            return
        if fields.last_comparison is not None:
            fields.colour_by.value = "ML-ED field error"
        docks = session.docks
        docks["Fields"].raise_()
        window = getattr(session.viewer.window, "_qt_window", None)
        if window is not None:  # the right column to Fields, scrolled to its plots
            window.resizeDocks([docks["System"], docks["Fields"]], [1, 10**4], Qt.Vertical)
            scroll = fields.native.parent().parent()
            QTimer.singleShot(
                0, lambda: scroll.verticalScrollBar().setValue(scroll.verticalScrollBar().maximum())
            )
        QTimer.singleShot(SETTLE_MS, action)

    check()


def launch(
    viewer=None,
    return_viewer: bool = False,
    steps: int | None = None,
    screenshot: str | Path | None = None,
    model_path: str | Path | None = None,
    n: int = 100,
    engine: str = "ed",
    measure: str | Path | None = None,
    force: bool = False,
    orbit: bool = False,
    demo: bool = False,
    state: str | Path | None = None,
    movie: str | Path | None = None,
    compare: bool = False,
):
    """Open the sdglass explorer: paper system, random spins, panels docked, ready to Start.

    engine: "ed" or "ml" (the loaded model) in the Dynamics panel. steps: run
    this many LLG steps at once in the background; screenshot: after those
    steps save the whole window to this PNG and close (headless capture);
    measure: while those steps run, record frames per second and event-loop
    stalls (app.responsiveness), write them to this JSON file, print them and
    close (an existing file only with force); orbit: meanwhile turn the camera
    like a user would; demo: choose the Dynamics panel's fast demo preset; state: open
    this frames file (its atoms, spins and electrons) instead of a random system of n;
    movie: film those steps into this MP4 (the Export panel's movie) and close;
    compare: compare ML with ED while they run (the Fields panel's "Compare during runs"),
    and show the result (the Fields panel, atoms coloured by the ML error) before the
    screenshot.
    Returns the viewer when return_viewer (else runs the event loop and
    returns the exit status).
    """
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    if viewer is None:
        viewer = napari.Viewer(title="sdglass: metallic spin-glass quench explorer", ndisplay=3)
    viewer.dims.ndisplay = 3
    session = AppSession(viewer, model_path=model_path, n=n, engine=engine)
    panels = dock_panels(viewer, session)
    _SESSIONS[id(viewer)] = session
    session.panels = panels
    if demo:
        panels["Dynamics"].preset.value = DEMO_PRESET
    if compare:
        panels["Fields"].track.value = True
    if state is not None:
        session.install(session.sim.prepare_state(read_state(state), str(state)))
        panels["System"].show_system()
        panels["System"].state_path.value = state
    qt_window = getattr(viewer.window, "_qt_window", None)
    if qt_window is not None:
        fit_to_screen(qt_window)
    viewer.layers.selection.active = session.scene.atoms
    QTimer.singleShot(50, lambda: frame_view(viewer))
    outcome = {"status": 0}
    probe = ResponsivenessProbe(viewer, session, orbit) if measure is not None and steps else None
    if probe is not None:

        def on_measured(state: str) -> None:
            if state != "stopped":
                return
            probe.stop()
            report = probe.write(measure, force)
            print(
                " ".join(
                    f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                    for k, v in report.items()
                    if not isinstance(v, list)
                )
            )
            if screenshot is None and not return_viewer:
                viewer.close()

        session.run_state_changed.connect(on_measured)

    if movie is not None and steps:
        export = panels["Export"]
        export.movie_target, export.overwrite.value = Path(movie), force
        export.movie.value = True

        def on_filmed(state: str) -> None:  # after the Export panel's own handler
            if state != "stopped":
                return
            if not Path(movie).is_file():
                outcome["status"] = 1
            if screenshot is None and probe is None and not return_viewer:
                viewer.close()

        session.run_state_changed.connect(on_filmed)

    if screenshot is not None:
        path = Path(screenshot)
        path.parent.mkdir(parents=True, exist_ok=True)

        def capture() -> None:
            session.plots.flush(force_full=True)
            _dismiss_notifications(viewer)
            QApplication.processEvents()
            save_window(viewer, path, force)
            if session.errors or (compare and panels["Fields"].last_comparison is None):
                outcome["status"] = 1
            if not return_viewer:
                viewer.close()

        def on_state(state: str) -> None:
            if state == "stopped" and compare:
                when_compared(session, capture)
            elif state == "stopped":
                QTimer.singleShot(SETTLE_MS, capture)

        if steps:
            session.run_state_changed.connect(on_state)
        else:
            QTimer.singleShot(SETTLE_MS, capture)

    if steps:

        def press_start() -> None:
            if probe is not None:
                probe.start()
            panels["Dynamics"].start(max_steps=int(steps))

        when_shown(viewer, session, press_start)
    if return_viewer:
        return viewer
    napari.run()
    return outcome["status"]

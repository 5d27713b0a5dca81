"""Shared state of one sdglass viewer: the Simulation, the scene layers, the plots and the worker.

Panels call these methods and subscribe to the signals; they never do physics
themselves (core does). Everything here runs on the main thread except the
Simulation.advance calls inside the dynamics worker.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from napari.settings import get_settings
from napari.utils.notifications import show_error, show_warning
from psygnal import Signal
from qtpy.QtCore import QEvent, QObject, QTimer
from qtpy.QtWidgets import QApplication

from core.config import ElectronConfig, LLGConfig, SystemConfig
from core.errors import SdglassError
from core.model import EnergyModel
from core.modelfile import ModelCard, load_model
from core.paths import DEFAULT_MODEL
from core.simulation import EngineChoice, Prepared, Simulation

from . import plots as plots_module
from .layers import SceneLayers
from .plots import LivePlots
from .worker import PAUSED, DynamicsError, dynamics_worker

#: Longest wait for a stopping worker to finish its current chunk (s).
STOP_TIMEOUT_S = 30.0
#: Delay of the 3D layers behind a full plot draw (ms): a timer, so the event loop turns between.
SCENE_AFTER_FULL_DRAW_MS = 1
#: Delay of the worker's go-ahead behind the 3D layers (ms): a timer, so it follows the repaint.
SHOWN_AFTER_MS = 1


@dataclass(frozen=True)
class LoadedModel:
    """A model file read by `AppSession.read_model`, with the ML provider built for it when
    the ML engine runs (None otherwise, or when the engine cannot use the model here)."""

    model: EnergyModel
    card: ModelCard
    path: Path
    choice: EngineChoice | None


class _CloseFilter(QObject):
    """Stops the dynamics worker when the main window closes (no traceback on exit)."""

    def __init__(self, session: AppSession) -> None:
        super().__init__()
        self.session = session

    def eventFilter(self, obj, event):
        if event.type() == QEvent.Close:
            self.session.shut_down()
        return False


#: Run states in which a step may be in progress.
STEPPING = ("running", "pausing", "stopping")


class AppSession:
    """One viewer's simulation state and run control."""

    snapshot_ready = Signal(object)
    scene_shown = Signal(object)  # the 3D view now shows this snapshot's spins
    system_changed = Signal()
    model_changed = Signal()
    state_saved = Signal(object)  # the path of a frames file the Export panel wrote
    # "running", "pausing" / "stopping" (after this step), "paused", "stopped"
    run_state_changed = Signal(str)
    closing = Signal()  # the window closes: panels drop their background jobs
    font_scaled = Signal(float)  # napari's font size changed: texts this many times larger

    def __init__(
        self, viewer, model_path: str | Path | None = None, n: int = 100, engine: str = "ed"
    ) -> None:
        self.viewer = viewer
        self.scene = SceneLayers(viewer)
        self.model = None
        self.card: ModelCard | None = None
        self.model_path: Path | None = None
        self.model_message = ""
        self.model_note = ""  # what loading the model changed (e.g. a switch to ED)
        self.warnings: list[str] = []
        self.shown_replica = 0  # the replica the 3D view shows (the plots average them all)
        self.panels: dict = {}  # name -> panel, and name -> its dock: set by app.launcher
        self.docks: dict = {}
        self.sim: Simulation | None = None
        self.try_load_model(model_path)
        engine = engine if self.model is not None else "ed"
        self.sim = Simulation(
            SystemConfig(n=n), ElectronConfig(), LLGConfig(), engine=engine, model=self.model
        )
        self.check_model()
        self.plots = LivePlots(str(viewer.theme), *self._pair_range())
        viewer.events.theme.connect(lambda event: self.plots.set_theme(str(viewer.theme)))
        self.font_scale = self.scene.font_scale = plots_module.font_scale()
        get_settings().appearance.events.font_size.connect(self._font_size_changed)
        self.worker = None
        self._shown = threading.Event()  # set when the main thread has drawn a snapshot
        self._running = threading.Event()  # cleared while the run is paused
        self.steps_per_frame = 1  # one snapshot per LLG step: 12-13 frames/s at N = 500 (README)
        self.last_snapshot = None
        self._pending = None
        self.state = "stopped"
        self.errors: list[str] = []
        self._show_system()
        self._close_filter = _CloseFilter(self)
        try:
            viewer.window._qt_window.installEventFilter(self._close_filter)
        except AttributeError:  # headless viewer without a window
            pass

    # -------------------------------------------------------------- model

    def try_load_model(self, path: str | Path | None) -> bool:
        """Load `path` (default: the shipped model if present) here and now; notify and keep
        ED on failure. The Model panel's Load does the same in a worker thread."""
        explicit = path is not None
        path = Path(path) if explicit else DEFAULT_MODEL
        if not path.is_file() and not explicit:
            self.model_message = (
                f"No ML model available ({path.name} not found in assets/models): "
                "the ML engine is disabled; ED works."
            )
            self.model_changed.emit()
            return False
        try:
            loaded = self.read_model(path)
        except SdglassError as err:
            self.model_failed(err)
            return False
        return self.adopt_model(loaded)

    def read_model(self, path: str | Path) -> LoadedModel:
        """The costly part of loading a model: read the file and, with the ML engine, build
        its provider for the current system (seconds at large N with another descriptor).
        Changes nothing, so it may run in a worker thread while the dynamics goes on.
        FileFormatError for a file that is not an sdglass model."""
        path = Path(path)
        model, card = load_model(path)
        choice = None
        if self.sim is not None and self.sim.engine == "ml":
            try:
                choice = self.sim.prepare_engine("ml", model)
            except SdglassError:  # adopt_model finds out again and switches to ED
                pass
        return LoadedModel(model, card, path, choice)

    def model_failed(self, err: SdglassError) -> None:
        """A model file that could not be read: say so; the model in use stays."""
        self.model_message = f"Could not load model: {err}"
        show_error(self.model_message)
        self.model_changed.emit()

    def adopt_model(self, loaded: LoadedModel) -> bool:
        """A model from `read_model` becomes the session's (main thread); False, with nothing
        changed, when neither it nor ED can run on this system."""
        note = ""
        if self.sim is not None:  # None while the session is being built
            try:
                note = self._give_model(loaded)
            except SdglassError as err:
                self.model_message = f"Could not use {loaded.path.name} here: {err}"
                show_error(self.model_message)
                self.model_changed.emit()
                return False
        self.model, self.card, self.model_path = loaded.model, loaded.card, loaded.path
        self.model_message, self.model_note = f"Loaded {loaded.path.name}", note
        if self.sim is not None:
            self.check_model()
        self.model_changed.emit()
        return True

    def _give_model(self, loaded: LoadedModel) -> str:
        """Hand a newly loaded model to the simulation; with the ML engine it takes the
        provider built by `read_model` (built again if the engine, system or device changed
        meanwhile). A model that cannot run on this system (a cutoff beyond L/2) switches the
        simulation to ED, and the returned note says so; SdglassError, with nothing
        changed, when ED cannot run either."""
        model = loaded.model
        if self.sim.engine != "ml":
            self.sim.model = model
            return ""
        try:
            choice = loaded.choice or self.sim.prepare_engine("ml", model)
            self.sim.use_engine(choice)
            return ""
        except SdglassError as err:
            self.sim.set_engine("ed")
            self.sim.model = model
            note = (
                f"The ML engine cannot use {loaded.path.name} on this system ({err}): "
                "switched to ED."
            )
            show_warning(note)
            return note

    def check_model(self) -> list[str]:
        """Warnings where the model's training parameters differ from the current system's."""
        import warnings

        if self.card is None:
            self.warnings = []
            return []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.warnings = self.sim.model_warnings(self.card.physical)
        for message in self.warnings:
            show_warning(message)
        return self.warnings

    # -------------------------------------------------------------- system

    def install(self, prepared: Prepared) -> None:
        """A configuration from `sim.prepare` becomes current (stops the run first); raises
        ConfigError unchanged (e.g. ED was chosen meanwhile for an N too large for it)."""
        self.stop(wait=True)
        self.sim.install(prepared)
        self.model_note = ""  # it described the previous system
        self._show_system()
        self.check_model()
        self.system_changed.emit()

    def reset_spins(self, seed: int | None = None) -> None:
        self.stop(wait=True)
        self.sim.reset_spins(seed)
        self._show_system(rebuild=False)

    def _pair_range(self) -> tuple[float, float]:
        """r_min and the largest r of the live C(r, t)'s bins."""
        return self.sim.system_config.r_min, float(self.sim.edges[-1])

    def _show_system(self, rebuild: bool = True) -> None:
        snap = self.sim.snapshot()
        self.last_snapshot = snap
        r = self._replica_of(snap)
        if rebuild:
            self.scene.set_system(self.sim.system.positions, self.sim.system.box, snap.spins[r])
        else:
            self.scene.fields = None
            self.scene.update_spins(snap.spins[r])
        self.plots.reset(*self._pair_range())
        self.snapshot_ready.emit(snap)

    def _font_size_changed(self, event=None) -> None:
        """napari's interface font size changed (Preferences > Appearance, e.g. for a
        projector): the plots, the panels' plots and the canvas legend follow."""
        scale = plots_module.font_scale()
        ratio, self.font_scale = scale / self.font_scale, scale
        if ratio == 1:
            return
        self.scene.font_scale = scale
        self.scene.refresh()
        self.plots.rescale_fonts(ratio)
        self.font_scaled.emit(ratio)

    def replica(self, count: int) -> int:
        """The replica the 3D view shows, among `count` (the last one where fewer are left)."""
        return min(self.shown_replica, count - 1)

    def shown(self, per_replica: np.ndarray) -> np.ndarray:
        """The row of the replica the 3D view shows, of an array (B, ...) over replicas."""
        return per_replica[self.replica(len(per_replica))]

    def _replica_of(self, snap) -> int:
        """The replica of `snap` to show; the legend names it where there are several."""
        count = len(snap.spins)
        r = self.replica(count)
        self.scene.replica_note = f"replica {r} of 0-{count - 1}" if count > 1 else ""
        return r

    def show_replica(self, index: int) -> None:
        """Show replica `index` of the state on screen; its fields and local energies come
        with the next snapshot (or are computed again by the Fields panel)."""
        self.shown_replica = int(index)
        snap = self.last_snapshot
        if snap is not None:
            r = self._replica_of(snap)
            self.scene.fields = None if snap.fields is None else snap.fields[r]
            self.scene.local_energy = (
                None if snap.local_energies is None else snap.local_energies[r]
            )
            self.scene.update_spins(snap.spins[r])

    # -------------------------------------------------------------- dynamics

    @property
    def running(self) -> bool:
        return self.worker is not None

    def start(self, max_steps: int | None = None):
        """Run the dynamics in a thread_worker (no-op if already running); returns the worker."""
        if self.worker is not None:
            return self.worker
        self._running.set()
        worker = dynamics_worker(
            self.sim, lambda: self.steps_per_frame, max_steps, shown=self._shown,
            running=self._running,
        )  # fmt: skip
        worker.yielded.connect(lambda snap, w=worker: self._on_snapshot(w, snap))
        worker.errored.connect(lambda err, w=worker: self._on_error(w, err))
        worker.finished.connect(lambda w=worker: self._on_finished(w))
        self.worker = worker
        self._set_state("running")  # before the first step: listeners see the initial state
        worker.start()
        return worker

    def pause(self) -> None:
        """No step starts until resume: "pausing" until the step in progress has ended (an
        ED step at large N takes seconds), then "paused"."""
        if self.worker is not None and self.state == "running":
            self._running.clear()
            self._set_state("pausing")

    def resume(self) -> None:
        if self.worker is not None and self.state in ("pausing", "paused"):
            self._running.set()
            self._set_state("running")

    def stop(self, wait: bool = False) -> None:
        """Ask the worker to quit after its current step ("stopping" until then: an ED step
        at large N takes seconds); with wait, block until its thread has ended and its last
        state is shown."""
        worker = self._ask_to_quit()
        if worker is None:
            return
        self._set_state("stopping")
        if not wait:
            return
        # the worker's finished signal arrives through the main event loop
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while self.worker is worker and time.monotonic() < deadline:
            QApplication.processEvents()
            time.sleep(0.002)
        self._on_finished(worker)

    def shut_down(self) -> None:
        """The window is closing: panels drop their background jobs (`closing`), and the
        dynamics worker stops; its thread is waited for without turning the event loop (that
        would delete the widgets napari is closing while it still uses them) and without
        drawing."""
        self.closing.emit()
        get_settings().appearance.events.font_size.disconnect(self._font_size_changed)
        worker = self._ask_to_quit()
        if worker is None:
            return
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while worker.is_running and time.monotonic() < deadline:
            time.sleep(0.002)
        self.worker, self._pending = None, None
        self._set_state("stopped")

    def _ask_to_quit(self):
        """Tell the running worker (if any) to quit after its current chunk; returns it."""
        worker = self.worker
        if worker is None:
            return None
        worker.quit()
        self._running.set()  # a paused worker wakes to see the quit
        self._shown.set()  # a worker waiting for its snapshot to be drawn goes on to quit
        return worker

    def current_snapshot(self):
        """The state to save: while a step may be in progress, the one last shown (the window
        does not wait for the step, seconds with ED at large N); else the simulation's own."""
        if self.state in STEPPING and self.last_snapshot is not None:
            return self.last_snapshot
        return self.sim.snapshot()

    def _set_state(self, state: str) -> None:
        self.state = state
        self.run_state_changed.emit(state)

    def _on_snapshot(self, worker, snap) -> None:
        if snap is None or worker is not self.worker:
            return
        if snap is PAUSED:
            if self.state == "pausing":  # not resumed or stopped meanwhile
                self._set_state("paused")
            return
        if isinstance(snap, DynamicsError):
            self._on_error(worker, snap.error)
            return
        # coalesce: only the newest snapshot is drawn, however many queued up meanwhile
        if self._pending is None:
            QTimer.singleShot(0, self._show_pending)
        self._pending = snap

    def _show_pending(self) -> None:
        snap, self._pending = self._pending, None
        if snap is not None:
            self.show_snapshot(snap)

    def show_snapshot(self, snap) -> None:
        """Main thread: push a snapshot to the plots, the layers and the panels. After a full
        plot draw the layers follow in a later event-loop turn: with software OpenGL each
        takes 30-60 ms, and the two in one turn stalled the UI for over 100 ms."""
        self.last_snapshot = snap
        if self.plots.update(snap):
            QTimer.singleShot(SCENE_AFTER_FULL_DRAW_MS, lambda: self._show_scene(snap))
        else:
            self._show_scene(snap)
        self.snapshot_ready.emit(snap)

    def _show_scene(self, snap) -> None:
        if snap is self.last_snapshot:  # not overtaken by a newer one
            r = self._replica_of(snap)
            fields = None if snap.fields is None else snap.fields[r]
            eps = None if snap.local_energies is None else snap.local_energies[r]
            self.scene.update_spins(snap.spins[r], fields, eps)
            self.scene_shown.emit(snap)
        # the worker steps on once the window has repainted: a timer fires after the repaint
        # (a posted event of low priority)
        QTimer.singleShot(SHOWN_AFTER_MS, self._shown.set)

    def _on_error(self, worker, err: Exception) -> None:
        message = f"Dynamics stopped: {type(err).__name__}: {err}"
        self.errors.append(message)
        show_error(message)

    def _on_finished(self, worker) -> None:
        if worker is not self.worker:
            return
        self.worker = None
        self._pending = None
        snap = self.sim.snapshot()
        if snap.step:
            self.show_snapshot(snap)
            self.plots.flush()
        self._set_state("stopped")

    # -------------------------------------------------------------- fields

    def compare(self) -> dict:
        """ML vs ED transverse fields H_perp of one state of the spins (the dynamics may step
        on): RMSE, MAE (t0), per-atom error (B, N), both H_perp arrays (B, N, 3) for the parity plot,
        the spins (B, N, 3), their step, simulated time and system."""
        state = self.sim.compute_fields("ed", "ml")
        (h_ed, e_ed), (h_ml, e_ml) = state.fields["ed"], state.fields["ml"]
        s = state.spins
        hp_ed, hp_ml = np.cross(s, h_ed), np.cross(s, h_ml)
        diff = hp_ml - hp_ed
        n = s.shape[1]
        return {
            "rmse_hperp": float(np.sqrt(np.mean(diff**2))),
            "mae_hperp": float(np.mean(np.abs(diff))),
            "energy_error_per_spin": float(np.mean(np.abs(e_ml - e_ed)) / n),
            "per_atom": np.linalg.norm(diff, axis=-1),
            "hperp_ed": hp_ed,
            "hperp_ml": hp_ml,
            "spins": s,
            "step": state.step,
            "t": state.time,
            "system": state.system,
        }

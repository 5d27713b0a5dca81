"""Fields panel: ED / ML local fields of the current spins, ML vs ED comparison, display options."""

from __future__ import annotations

import time

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FloatSpinBox,
    Label,
    PushButton,
    SpinBox,
)
from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure
from napari.utils.notifications import show_error

from app.jobs import Job
from app.layers import QUANTITIES
from app.plots import recolour, rescale_fonts, style_axes, theme_colours
from core.errors import SdglassError

#: Comparisons during a run: at least this many seconds apart, and together at most this
#: share of the wall time (ED shares the CPU with the dynamics).
TRACK_MIN_S = 1.0
TRACK_SHARE = 0.2


class FieldsPanel(Container):
    """Compute fields in the background, compare ML with ED, choose what the atoms show."""

    def __init__(self, session) -> None:
        self.session = session
        scene = session.scene
        self.colour_by = ComboBox(
            label="Colour atoms by", choices=list(QUANTITIES), value=scene.quantity,
            tooltip="S_z; S.n along the axis n; |H_perp| = |S x H| in t0 (the field that drives "
            "the dynamics, ~0.013 per component for the paper's system); local energy eps_i "
            "in t0 (ML, recomputed for each frame while the dynamics runs); ML-ED error "
            "|dH_perp| (after Compare).",
        )  # fmt: skip
        self.axis = ComboBox(
            label="Axis n", choices=["x", "y", "z", "(1,1,1)"], value="z",
            tooltip="Axis n of the S.n colouring.",
        )  # fmt: skip
        self.replica = SpinBox(
            label="Replica shown", value=0, min=0, max=max(session.sim.replicas - 1, 0),
            tooltip="Which spin replica the atoms, arrows and colours show (0 to replicas - "
            "1, the Dynamics panel's Replicas); the plots average over all of them. The "
            "paper's ensembles have 20 replicas per configuration.",
        )  # fmt: skip
        self.arrow_length = FloatSpinBox(
            label="Arrow length (ell)", value=scene.arrow_length, min=0.05, max=3, step=0.05,
            tooltip="Length of the spin arrows in ell (the paper's r_min is 0.5).",
        )  # fmt: skip
        self.arrow_width = FloatSpinBox(
            label="Arrow width", value=scene.arrow_width, min=0.005, max=1, step=0.01,
            tooltip="Width of the spin arrows (screen-independent, in ell).",
        )  # fmt: skip
        self.show_fields = CheckBox(
            label="Show fields", value=False,
            tooltip="Show the transverse local fields H_perp = S x H of the last evaluation, "
            "scaled so that the longest arrow is 0.8 ell.",
        )  # fmt: skip
        self.ed_button = PushButton(
            text="Compute ED fields", tooltip="Exact-diagonalization fields H_i for the spins."
        )
        self.ml_button = PushButton(
            text="Compute ML fields", tooltip="ML force-field fields H_i = -dE/dS_i (autograd)."
        )
        self.compare_button = PushButton(
            text="Compare ML vs ED",
            tooltip="RMSE and MAE of the ML transverse fields H_perp against ED (t0); the "
            "paper's error width is ~1e-3. Colours atoms by the per-atom error.",
        )
        self.track = CheckBox(
            label="Compare during runs", value=False,
            tooltip="While the dynamics runs, compare ML with ED again and again on the "
            "latest spins (at least 1 s apart, ED taking at most a fifth of the time): the "
            "plot below follows the H_perp RMSE along the quench, e.g. whether the model "
            "holds on states unlike its training data.",
        )  # fmt: skip
        self.result = Label(value="")
        self.job: Job | None = None
        self.last_comparison: dict | None = None
        self.history: list[tuple[float, int, float]] = []  # (t, step, H_perp RMSE)
        self._next_track = 0.0
        super().__init__(
            widgets=[
                self.colour_by, self.axis, self.replica, self.arrow_length, self.arrow_width,
                self.show_fields, self.ed_button, self.ml_button, self.compare_button,
                self.track, self.result,
            ],
            label="Fields",
        )  # fmt: skip
        self.parity = ParityPlot(session.plots.colours)
        self.error_history = ErrorHistory(session.plots.colours)
        viewer = session.viewer
        for plot in (self.parity, self.error_history):
            viewer.events.theme.connect(
                lambda event, plot=plot: plot.set_colours(theme_colours(str(viewer.theme)))
            )
            self.native.layout().addWidget(plot.canvas)
        self.colour_by.changed.connect(self._display)
        self.replica.changed.connect(self._show_replica)
        self.axis.changed.connect(self._display)
        self.arrow_length.changed.connect(self._display)
        self.arrow_width.changed.connect(self._display)
        self.show_fields.changed.connect(self._display)
        self.ed_button.clicked.connect(lambda: self.compute("ed"))
        self.ml_button.clicked.connect(lambda: self.compute("ml"))
        self.compare_button.clicked.connect(self.compare)
        session.model_changed.connect(self._model_changed)
        session.system_changed.connect(self._new_system)
        session.font_scaled.connect(self.parity.rescale_fonts)
        session.font_scaled.connect(self.error_history.rescale_fonts)
        session.snapshot_ready.connect(self._on_snapshot)
        session.run_state_changed.connect(lambda state: self._follow())
        self.track.changed.connect(lambda value: self._follow())
        self._model_changed()

    def _on_snapshot(self, snap) -> None:
        """Replica shown: as many choices as the run has replicas; then compare during runs."""
        last = len(snap.spins) - 1
        if self.replica.max != last:
            self.replica.max = last  # a value beyond it comes down to it
        self._follow()

    def _show_replica(self, index: int) -> None:
        """The 3D view shows another replica: its spins, and its share of the last
        comparison's errors and of the local energies."""
        session = self.session
        session.show_replica(index)
        stats = self.last_comparison
        if stats is not None:
            session.scene.error = session.shown(stats["per_atom"])
        if session.scene.quantity == "local energy (ML)" and session.scene.local_energy is None:
            self._local_energies()
        session.scene.refresh()

    def _model_changed(self) -> None:
        self._enable_ml()
        if self.session.scene.quantity == "local energy (ML)":  # the new model's
            self._local_energies()
            self.session.scene.refresh()

    def _enable_ml(self) -> None:
        has = self.session.model is not None
        self.ml_button.enabled = has
        self.compare_button.enabled = has
        if not has:
            self.result.value = "ML fields need a model (see the Model panel)."

    def _new_system(self) -> None:
        """The results shown belong to the previous system: cleared (a new system's snapshot
        brings its local energies)."""
        self.result.value = ""
        self.last_comparison = None
        self.history = []
        self.parity.clear()
        self.error_history.clear()
        self._enable_ml()

    def _display(self, *_) -> None:
        scene = self.session.scene
        newly = str(self.colour_by.value) != scene.quantity
        scene.quantity = str(self.colour_by.value)
        scene.axis = {
            "x": np.array([1.0, 0, 0]), "y": np.array([0, 1.0, 0]), "z": np.array([0, 0, 1.0]),
            "(1,1,1)": np.ones(3),
        }[self.axis.value]  # fmt: skip
        scene.arrow_length = float(self.arrow_length.value)
        scene.arrow_width = float(self.arrow_width.value)
        if scene.field_layer is not None:
            scene.field_layer.visible = bool(self.show_fields.value)
        # while the dynamics runs, each snapshot brings the local energies of its spins
        energies = scene.quantity == "local energy (ML)"
        self.session.sim.track_local_energies = energies
        if energies and newly:
            self._local_energies()
        scene.refresh()

    def _local_energies(self) -> None:
        """The model's eps_i of the spins shown: computed now, or while a run goes on, brought
        by its next snapshot (the window does not wait for the step in progress)."""
        scene = self.session.scene
        if self.session.model is None:
            return
        if self.session.state == "running":
            scene.local_energy = None  # until the next snapshot
            return
        try:
            eps = self.session.sim.local_energies()
        except SdglassError as err:  # e.g. a system too small for the model's cutoff
            eps = None
            self.result.value = f"⚠ local energies: {err}"
        scene.local_energy = None if eps is None else self.session.shown(eps)

    def _run(self, job, done, text: str, busy=None) -> None:
        """job() in the background, then done(result); busy: the label that counts its
        seconds (default: the result line)."""
        if self.job is not None:
            return
        for b in (self.ed_button, self.ml_button, self.compare_button):
            b.enabled = False
        self.job = Job(
            job, done, self._fail, self._finished, busy or self.result, text,
            self.session.closing,
        )  # fmt: skip

    def _fail(self, err: SdglassError) -> None:
        """A computation that cannot run here (a user error, not a bug): said in one line;
        comparing during runs stops (it would fail again)."""
        self.result.value = f"⚠ {err}"
        show_error(f"Field computation: {err}")
        self.track.value = False

    def _finished(self) -> None:
        self.job = None
        self.ed_button.enabled = True
        self._enable_ml()
        self._follow()

    def compute(self, engine: str) -> None:
        """Fields of the current spins from ED or ML, shown as the Fields layer."""

        def done(state) -> None:
            if not self._current(state.system):
                return
            (h, e) = state.fields[engine]
            r = self.session.replica(len(h))
            spins, scene = state.spins[r], self.session.scene
            scene.fields = h[r]
            hp = np.cross(spins, h[r])
            which = f", replica {r}" if len(h) > 1 else ""
            mean = np.linalg.norm(h[r], axis=-1).mean()
            self.result.value = (
                f"{engine.upper()} at step {state.step}{which}: E/N = {e[r] / len(spins):.5f} "
                f"t0\n|H| mean {mean:.3f} t0, H_perp std {hp.std():.4f} t0"
            )
            self.show_fields.value = True
            scene.refresh()

        self._run(
            lambda: self.session.sim.compute_fields(engine), done,
            f"Computing {engine.upper()} fields",
        )  # fmt: skip

    def compare(self, during_run: bool = False) -> None:
        """RMSE / MAE of ML vs ED transverse fields, added to the error history; atoms
        coloured by the per-atom error (during_run: the colouring chosen stays, and the
        result line is not replaced by a busy count each time)."""
        started = time.monotonic()

        def done(stats) -> None:
            if not self._current(stats["system"]):
                return
            self.last_comparison = stats
            scene = self.session.scene
            scene.error = self.session.shown(stats["per_atom"])
            scene.error_step = stats["step"]
            self.result.value = (
                f"ML vs ED at step {stats['step']}\nH_perp RMSE {stats['rmse_hperp']:.3e} t0, "
                f"MAE {stats['mae_hperp']:.3e} t0\n|dE|/N {stats['energy_error_per_spin']:.3e} t0"
            )
            if not during_run:
                self.colour_by.value = "ML-ED field error"
            self.parity.show(stats)
            self._add_to_history(stats)
            now = time.monotonic()
            self._next_track = now + max(TRACK_MIN_S, (now - started) / TRACK_SHARE)
            scene.refresh()

        busy = Label() if during_run else None  # the last result stays in view
        self._run(self.session.compare, done, "Computing ML and ED fields", busy)

    def _follow(self) -> None:
        """Compare during runs: while a quench runs, the next comparison starts when the
        last one is done and its share of the time allows; when it pauses or stops (or its
        spins are reset), one more compares the spins it shows."""
        if not self.track.value or self.job is not None or self.session.model is None:
            return
        state = self.session.state
        if state == "running":
            if time.monotonic() >= self._next_track:
                self.compare(during_run=True)
        elif state in ("paused", "stopped") and self.history:
            if self.history[-1][1] != self.session.sim.step_count:
                self.compare(during_run=True)

    def _add_to_history(self, stats: dict) -> None:
        """One (t, step, RMSE) more; a comparison from before the last one (spins reset: a
        new quench) starts the history again."""
        if self.history and stats["step"] < self.history[-1][1]:
            self.history = []
        self.history.append((stats["t"], stats["step"], stats["rmse_hperp"]))
        self.error_history.show(self.history)

    def plot_tables(self) -> dict:
        """The plots with data, for the Export panel: name -> (save the PNG to a path, CSV
        header, rows). parity: every H_perp component of the last comparison; ml-error: the
        comparisons of the current quench."""
        tables = {}
        stats = self.last_comparison
        if stats is not None:
            ed = stats["hperp_ed"]
            replica, atom, component = (i.ravel() for i in np.indices(ed.shape))
            rows = np.column_stack(
                [replica, atom, component, ed.ravel(), stats["hperp_ml"].ravel()]
            )
            header = ["replica", "atom", "component", "hperp_ed", "hperp_ml"]
            tables["parity"] = (self.parity.save, header, rows)
        if self.history:
            header = ["t", "step", "rmse_hperp"]
            tables["ml-error"] = (self.error_history.save, header, np.array(self.history))
        return tables

    def _current(self, system) -> bool:
        """Whether a result belongs to the system shown; if not, it is dropped and said so."""
        if system is self.session.sim.system:
            return True
        self.result.value = "⚠ result dropped: a new system was generated meanwhile"
        return False


class PanelPlot:
    """A small matplotlib canvas in a panel, in napari's theme. Subclasses draw with
    `_line`, which keeps each line's colour role ("text", "data") for a theme change."""

    #: Axis labels, and the title of the empty axes.
    xlabel = ylabel = empty_title = ""

    def __init__(self, colours: dict[str, str], height: int = 240) -> None:
        self.colours = colours
        self.figure = Figure(figsize=(3, 3 * height / 240), facecolor=colours["background"])
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(height)
        self.ax = self.figure.add_subplot()
        self.figure.subplots_adjust(left=0.24, right=0.96, bottom=0.2, top=0.88)
        self.roles: list[tuple[object, str]] = []
        self.clear()

    def clear(self) -> None:
        """Empty axes, waiting for data."""
        self._begin(self.empty_title)
        self.canvas.draw_idle()

    def _begin(self, title: str) -> None:
        self.ax.clear()
        self.roles = []
        style_axes(self.ax, self.colours, title, self.xlabel, self.ylabel)

    def _line(self, x, y, fmt: str, role: str, **style) -> None:
        (line,) = self.ax.plot(x, y, fmt, color=self.colours[role], **style)
        self.roles.append((line, role))

    def set_colours(self, colours: dict[str, str]) -> None:
        """Follow a new napari theme."""
        self.colours = colours
        recolour(self.ax, colours)
        for line, role in self.roles:
            line.set_color(colours[role])
        self.canvas.draw_idle()

    def rescale_fonts(self, ratio: float) -> None:
        """napari's font size changed: texts `ratio` times larger, the axes make room."""
        rescale_fonts(self.figure, ratio)
        self.figure.tight_layout(pad=0.4)
        self.canvas.draw_idle()

    def save(self, path, dpi: int = 150):
        """The plot as a PNG."""
        self.figure.savefig(path, format="png", dpi=dpi, facecolor=self.figure.get_facecolor())
        return path


class ParityPlot(PanelPlot):
    """ML vs ED H_perp components (paper Fig. 3a style) on a small canvas in the Fields panel."""

    xlabel, ylabel = "ED H_perp component (t0)", "ML H_perp component (t0)"
    empty_title = "Compare ML vs ED to fill"

    @property
    def points(self) -> int:
        """How many components the plot shows (0 when empty)."""
        return sum(len(line.get_xdata()) for line, role in self.roles if role == "data")

    def show(self, stats: dict) -> None:
        """Scatter every component of S x H, the diagonal, and the RMSE in the title."""
        ed, ml = stats["hperp_ed"].ravel(), stats["hperp_ml"].ravel()
        self._begin(f"RMSE {stats['rmse_hperp']:.2e} t0 ({ed.size} components)")
        lim = 1.05 * float(max(np.abs(ed).max(), np.abs(ml).max(), 1e-12))
        self._line([-lim, lim], [-lim, lim], "-", "text", lw=0.8, alpha=0.6)
        self._line(ed, ml, ".", "data", ms=2, alpha=0.6)
        self.ax.set_xlim(-lim, lim)
        self.ax.set_ylim(-lim, lim)
        self.canvas.draw_idle()


class ErrorHistory(PanelPlot):
    """H_perp RMSE of ML vs ED at each comparison of the current quench, against t."""

    xlabel, ylabel = "t (1/gamma t0)", "H_perp RMSE (t0)"
    empty_title = "Compare during runs to follow"

    def __init__(self, colours: dict[str, str]) -> None:
        super().__init__(colours, height=180)

    def show(self, history: list[tuple[float, int, float]]) -> None:
        """One point per comparison, joined in time; the axes start at zero error."""
        t, _, rmse = zip(*history, strict=True)
        self._begin(f"ML-ED error along the run ({len(history)} comparisons)")
        self._line(t, rmse, "o-", "data", ms=3, lw=1)
        self.ax.set_ylim(0, 1.15 * max(rmse) or 1e-12)
        self.canvas.draw_idle()

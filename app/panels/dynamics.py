"""Dynamics panel: engine, LLG parameters, run control and a live readout (PHYSICS.md "LLG dynamics")."""

from __future__ import annotations

import time

import torch
from magicgui.widgets import ComboBox, Container, FloatSpinBox, Label, PushButton, SpinBox
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QLabel

from app.jobs import Job, say
from app.panels.presets import Presets
from app.session import STEPPING
from core.config import INTEGRATORS, LLGConfig
from core.errors import SdglassError
from core.simulation import MAX_REPLICAS

ENGINE_LABELS = {"ED (exact diagonalization)": "ed", "ML (machine-learned)": "ml"}
#: Dynamics-panel label of each engine name.
ENGINE_NAMES = {name: label for label, name in ENGINE_LABELS.items()}


#: The readout's widest lines: it is sized for them once. A label whose size follows its
#: text makes Qt lay out and repaint its dock after every frame (one more composition of
#: the whole window, ~13 ms with software OpenGL).
READOUT_SAMPLE = (
    "step 0000000   t = 00000.0 (1/gamma t0)",
    "E/N = -00.00000 t0   |m| = 0.000",
    "computing step 0000000: 0000 s   [stopping]",
)
#: A step taking longer than this (s) shows its progress in the readout (ED at N = 1000
#: takes ~6 s a step on 2 cores): seconds so far, counted every TICK_MS.
SLOW_STEP_S = 2.0
TICK_MS = 1000


#: The paper's quench (PHYSICS.md "LLG dynamics"); its correlations build up over t ~ 100-300.
PAPER_QUENCH = LLGConfig()
#: Damping of the fast demonstration: C(r_min) reaches -0.4 by t = 27 (README, "The app").
DEMO_ALPHA = 1.0
PRESET_COMMON = {
    "temperature": PAPER_QUENCH.temperature,
    "dt": PAPER_QUENCH.dt,
    "integrator": PAPER_QUENCH.integrator,
}
DEMO_PRESET = f"Fast demo (alpha = {DEMO_ALPHA:g})"
PRESETS = {
    f"Paper quench (alpha = {PAPER_QUENCH.alpha:g})": {
        **PRESET_COMMON, "alpha": PAPER_QUENCH.alpha, "steps_per_frame": 1,
    },
    DEMO_PRESET: {**PRESET_COMMON, "alpha": DEMO_ALPHA, "steps_per_frame": 5},
}  # fmt: skip


def fix_size(label: QLabel, lines: tuple[str, ...]) -> None:
    """Give a label the fixed size of `lines`, so new text never changes the layout."""
    metrics = label.fontMetrics()
    width = max(metrics.horizontalAdvance(line) for line in lines) + 8
    label.setFixedSize(width, len(lines) * metrics.lineSpacing() + 6)


class DynamicsPanel(Container):
    """Engine ED / ML, temperature, alpha, dt, integrator, replicas, device, steps per frame."""

    def __init__(self, session) -> None:
        self.session = session
        llg = session.sim.llg_config
        self.presets = Presets(
            PRESETS,
            tooltip="The paper's quench (k_B T = 0.001, alpha = 0.05, dt = 0.02, 1 step per "
            "frame): its correlations build up over t ~ 100-300, some 15000 steps. Fast demo: "
            "alpha = 1 relaxes faster (not the paper's value) and 5 steps per frame run more "
            "steps per second; C(r_min) reaches -0.4 by t ~ 27, about 30 s with the ML engine "
            "at N = 100.",
        )
        self.preset = self.presets.menu
        self.engine = ComboBox(
            label="Engine", choices=list(ENGINE_LABELS), value=ENGINE_NAMES[session.sim.engine],
            tooltip="Field provider: exact diagonalization of the s-d Hamiltonian (the paper's "
            "reference) or the machine-learned force field (needs a model).",
        )  # fmt: skip
        self.temperature = FloatSpinBox(
            label="k_B T (t0)", value=llg.temperature, min=0, max=10, step=0.001,
            tooltip="Bath temperature k_B T in t0 (thermal noise). Paper quench: 0.001. "
            "Takes effect at the next step while running.",
        )  # fmt: skip
        self.temperature.native.setDecimals(4)
        self.alpha = FloatSpinBox(
            label="alpha", value=llg.alpha, min=0, max=10, step=0.01,
            tooltip="Gilbert damping alpha (dimensionless). Paper: 0.05. "
            "Takes effect at the next step while running.",
        )  # fmt: skip
        self.dt = FloatSpinBox(
            label="dt (1/gamma t0)", value=llg.dt, min=0.0001, max=1, step=0.005,
            tooltip="LLG time step in 1/(gamma t0). Paper: not given; 0.01-0.05 is typical "
            "for fields of order J.",
        )  # fmt: skip
        self.dt.native.setDecimals(4)
        self.integrator = ComboBox(
            label="Integrator", choices=list(INTEGRATORS), value=llg.integrator,
            tooltip="sib: semi-implicit (Mentink 2010, norm exact, no thermal bias); depondt: "
            "rotation predictor-corrector; heun: with projection. 2 field evaluations per step.",
        )  # fmt: skip
        self.replicas = SpinBox(
            label="Replicas", value=session.sim.replicas, min=1, max=MAX_REPLICAS,
            tooltip="Independent spin states on the same atoms; C(r, t) averages over them and "
            "subtracts <S_i>.<S_j>. Changing it resets the spins.",
        )  # fmt: skip
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
        self.device = ComboBox(
            label="Device", choices=devices, value="cpu",
            tooltip="Where the fields are computed (cuda only when available). On cuda the "
            "ED engine at kT_e = 0 finds the occupied states by canonical purification (matrix "
            "products, the same fields to ~1e-13) instead of diagonalizing.",
        )  # fmt: skip
        self.steps_per_frame = SpinBox(
            label="Steps per frame", value=session.steps_per_frame, min=1, max=10000,
            tooltip="LLG steps between two frames drawn (and energy samples). 1 draws the "
            "smoothest (N = 500, ML: 12-13 frames/s); more steps per frame run the dynamics "
            "faster (2: ~19 steps/s at ~9 frames/s) because drawing shares the CPU.",
        )  # fmt: skip
        self.start_button = PushButton(text="Start", tooltip="Run the dynamics in the background.")
        self.pause_button = PushButton(
            text="Pause", tooltip="Pause or resume the running dynamics."
        )
        self.stop_button = PushButton(text="Stop", tooltip="Stop the dynamics (state is kept).")
        self.reset_button = PushButton(
            text="Reset spins",
            tooltip="New random spins on the same atoms (the next spin seed); clock back to t = 0.",
        )
        self.readout = Label(value="")
        fix_size(self.readout.native, READOUT_SAMPLE)
        self.message = Label(value="")
        self.job: Job | None = None  # an engine being prepared
        self.device_job: Job | None = None  # a device being prepared
        buttons = Container(
            widgets=[self.start_button, self.pause_button, self.stop_button, self.reset_button],
            layout="horizontal", labels=False,
        )  # fmt: skip
        super().__init__(
            widgets=[
                self.engine, self.preset, self.temperature, self.alpha, self.dt, self.integrator,
                self.replicas, self.device, self.steps_per_frame, buttons, self.readout,
                self.message,
            ],
            label="Dynamics",
        )  # fmt: skip
        for w in (self.temperature, self.alpha, self.dt, self.integrator):
            w.changed.connect(self.apply_llg)
        self.presets.bind(self)
        self.steps_per_frame.changed.connect(self._steps_changed)
        self.engine.changed.connect(self._engine_changed)
        self.replicas.changed.connect(self._replicas_changed)
        self.device.changed.connect(self._device_changed)
        self.start_button.clicked.connect(self.start)
        self.pause_button.clicked.connect(self.toggle_pause)
        self.stop_button.clicked.connect(self.stop)
        self.reset_button.clicked.connect(self.reset)
        session.snapshot_ready.connect(self.show_readout)
        session.run_state_changed.connect(self._state_changed)
        self._ticker = QTimer()
        self._ticker.setInterval(TICK_MS)
        self._ticker.timeout.connect(self._tick)
        session.closing.connect(self._close)
        self._step_seen = (0, time.monotonic())  # (step count, when it was first seen)
        session.model_changed.connect(self._model_changed)
        session.system_changed.connect(self._system_changed)
        self._model_changed()
        self._state_changed("stopped")
        self.show_readout(session.last_snapshot)

    # -------------------------------------------------------------- parameters

    def llg_config(self) -> LLGConfig:
        return self.session.sim.llg_config.replace(
            temperature=float(self.temperature.value),
            alpha=float(self.alpha.value),
            dt=float(self.dt.value),
            integrator=str(self.integrator.value),
        )

    def apply_llg(self, *_) -> None:
        """Thread-safe update: the running stepper uses the new values at its next step."""
        try:
            self.session.sim.set_llg(self.llg_config())
            say(self.message, "")
        except SdglassError as err:
            say(self.message, f"⚠ {err}", error=True)

    def _steps_changed(self, value: int) -> None:
        self.session.steps_per_frame = int(value)

    def _engine_changed(self, label: str) -> None:
        """Switch ED / ML, prepared in the background (the ML descriptor's set-up takes
        seconds at large N); a run goes on and switches at its next step. An engine that
        cannot run here is reported and the menu goes back to the engine in use."""
        engine = ENGINE_LABELS[label]
        if engine == self.session.sim.engine or self.job is not None:  # also the way back
            return
        if engine == "ml" and self.session.model is None:
            self._engine_failed("No ML model loaded: the ML engine is disabled.")
            return
        self.engine.enabled = False
        say(self.message, "")
        self.job = Job(
            lambda: self._switch_engine(engine), lambda _: say(self.message, ""),
            self._engine_failed, self._engine_ready, self.message, f"Preparing {label}",
            self.session.closing,
        )  # fmt: skip

    def _switch_engine(self, engine: str) -> None:
        """Worker thread: prepare the engine, then switch at the next step (waiting here, not
        in the window, for a step in progress: an ED step at large N takes seconds)."""
        sim = self.session.sim
        choice = sim.prepare_engine(engine)
        if choice.model is not sim.model:  # the Model panel loaded another one meanwhile
            choice = sim.prepare_engine(engine)
        sim.use_engine(choice)

    def _engine_failed(self, err) -> None:
        say(self.message, f"⚠ {err}", error=True)
        self.engine.value = ENGINE_NAMES[self.session.sim.engine]

    def _engine_ready(self) -> None:
        self.job = None
        self._state_changed(self.session.state)

    def _device_changed(self, device: str) -> None:
        """Move the simulation (provider, pair bins, spins) to the chosen device, prepared in
        the background (CUDA's start-up and the copies take seconds at large N); the state is
        kept. No run starts meanwhile. A device that fails is reported here and the menu goes
        back to the one in use."""
        if str(device) == self.session.sim.device:  # also the menu's own way back
            return
        self.session.stop(wait=True)
        say(self.message, "")
        self.device_job = Job(
            lambda: self.session.sim.prepare_device(str(device)), self._use_device,
            self._device_failed, self._device_ready, self.message, f"Moving to {device}",
            self.session.closing,
        )  # fmt: skip
        self._state_changed(self.session.state)

    def _use_device(self, choice) -> None:
        try:
            self.session.sim.use_device(choice)
        except SdglassError as err:
            self._device_failed(err)
            return
        say(self.message, "")

    def _device_failed(self, err) -> None:
        say(self.message, f"⚠ {err}", error=True)
        self.device.value = self.session.sim.device

    def _device_ready(self) -> None:
        self.device_job = None
        self._state_changed(self.session.state)

    def _replicas_changed(self, value: int) -> None:
        if int(value) == self.session.sim.replicas:  # shown for a state that was opened
            return
        self.session.stop(wait=True)
        self.session.sim.set_replicas(int(value))
        self.session.reset_spins()

    def _system_changed(self) -> None:
        self.replicas.value = self.session.sim.replicas  # an opened state brings its own

    def _model_changed(self) -> None:
        self.engine.value = ENGINE_NAMES[self.session.sim.engine]  # a new model may switch it
        has = self.session.model is not None
        self.engine.native.model().item(1).setEnabled(has)
        tip = "" if has else " (disabled: no ML model available)"
        self.engine.native.setItemData(1, f"Machine-learned force field{tip}", 3)

    # -------------------------------------------------------------- run control

    def start(self, max_steps: int | None = None):
        self.apply_llg()
        self.session.steps_per_frame = int(self.steps_per_frame.value)
        return self.session.start(max_steps=max_steps if isinstance(max_steps, int) else None)

    def toggle_pause(self) -> None:
        if self.session.state == "running":
            self.session.pause()
        elif self.session.state in ("pausing", "paused"):
            self.session.resume()

    def stop(self) -> None:
        self.session.stop()

    def reset(self) -> None:
        """A new quench on the same atoms: spins from the next seed (each press, other spins)."""
        self.session.reset_spins(seed=self.session.sim.spin_seed + 1)

    def _state_changed(self, state: str) -> None:
        moving = self.device_job is not None
        self.start_button.enabled = state == "stopped" and not moving
        active = ("running", "pausing", "paused")
        self.pause_button.enabled = self.stop_button.enabled = state in active
        self.pause_button.text = "Resume" if state in ("pausing", "paused") else "Pause"
        for w in (self.replicas, self.device):
            w.enabled = state == "stopped" and not moving
        # an engine switch mid-run is taken at the next step (and marked on the plots and in
        # an exported trajectory)
        self.engine.enabled = state != "stopping" and not moving and self.job is None
        if state in STEPPING:
            if not self._ticker.isActive():
                self._step_seen = (self.session.sim.step_count, time.monotonic())
                self._ticker.start()
        else:
            self._ticker.stop()
        self.show_readout(self.session.last_snapshot)

    def _close(self) -> None:
        self._ticker.stop()  # no tick into a closed window

    def _tick(self) -> None:
        """While a step runs long, the readout counts its seconds."""
        count = self.session.sim.step_count
        if count != self._step_seen[0]:
            self._step_seen = (count, time.monotonic())
        self.show_readout(self.session.last_snapshot)

    def show_readout(self, snap) -> None:
        if snap is None:
            return
        e = "n/a" if snap.step == 0 else f"{snap.energy_per_spin:.5f} t0"
        count, since = self._step_seen
        busy = time.monotonic() - since
        state = self.session.state
        if state in STEPPING and busy > SLOW_STEP_S:
            progress = f"computing step {count + 1}: {busy:.0f} s"
        else:
            progress = f"{snap.steps_per_second:.1f} steps/s"
        self.readout.value = (
            f"step {snap.step}   t = {snap.time:.4g} (1/gamma t0)\n"
            f"E/N = {e}   |m| = {snap.magnetisation:.3f}\n"
            f"{progress}   [{state}]"
        )

"""System panel: the amorphous configuration and the electrons' parameters (PHYSICS.md)."""

from __future__ import annotations

import time
from pathlib import Path

from magicgui.widgets import (
    CheckBox,
    Container,
    FileEdit,
    FloatSpinBox,
    Label,
    PushButton,
    SpinBox,
)

from app.jobs import Job, say
from app.panels.presets import Presets
from core.config import ElectronConfig, SystemConfig
from core.errors import SdglassError
from core.io import read_state
from core.paths import EXAMPLE_STATE
from core.simulation import MAX_REPLICAS

#: Widget values shared by every preset: the paper's density, r_min, half filling, kT_e = 0.
PRESET_COMMON = {"keep_density": True, "r_min": 0.5, "filling": 0.5, "kT_e": 0.0}
PRESETS = {
    "Paper (N = 100)": {**PRESET_COMMON, "n": 100, "J": 6.0},
    "Larger quench (N = 500)": {**PRESET_COMMON, "n": 500, "J": 6.0},
    "Weak coupling (J = 1)": {**PRESET_COMMON, "n": 100, "J": 1.0},
}


class SystemPanel(Container):
    """N, box or density, r_min, seed, J, filling, kT_e, hopping cutoff; presets; Generate."""

    def __init__(self, session) -> None:
        self.session = session
        sc, ec = session.sim.system_config, session.sim.electrons
        self.presets = Presets(
            PRESETS,
            tooltip="Parameter sets: the paper's N = 100 system, a larger quench at the "
            "paper's density (N = 500, the paper's psi fit), or weak s-d coupling J = 1.",
        )
        self.preset = self.presets.menu
        self.n = SpinBox(
            label="N atoms", value=sc.n, min=2, max=20000,
            tooltip="Number of atoms N. Paper: 100 (and 500 for the psi fit).",
        )  # fmt: skip
        self.keep_density = CheckBox(
            label="Keep density 0.8", value=sc.box is None,
            tooltip="Box side L = 5 (N/100)^(1/3) ell, the paper's density 0.8 per ell^3; "
            "uncheck to set the side L directly.",
        )  # fmt: skip
        self.box = FloatSpinBox(
            label="Box side L (ell)", value=sc.side, min=0.5, max=200, step=0.5,
            tooltip="Periodic cube side L in units of the hopping decay length ell. Paper: 5.",
        )  # fmt: skip
        self.r_min = FloatSpinBox(
            label="r_min (ell)", value=sc.r_min, min=0.0, max=5, step=0.05,
            tooltip="Smallest allowed minimum-image distance between atoms (ell). Paper: 0.5.",
        )  # fmt: skip
        self.seed = SpinBox(
            label="Seed", value=sc.seed, min=0, max=2**31 - 1,
            tooltip="Random seed of the atomic positions (reproducible configurations).",
        )  # fmt: skip
        self.J = FloatSpinBox(
            label="J (t0)", value=ec.J, min=-100, max=100, step=0.5,
            tooltip="s-d exchange coupling J in units of the hopping t0. Paper: 6.",
        )  # fmt: skip
        self.filling = FloatSpinBox(
            label="Filling", value=ec.filling, min=0.01, max=0.99, step=0.05,
            tooltip="Electrons per spin-orbital (0.5 = half filling, N electrons). Paper: 0.5.",
        )  # fmt: skip
        self.kT_e = FloatSpinBox(
            label="kT_e (t0)", value=ec.kT_e, min=0, max=10, step=0.01,
            tooltip="Electron temperature k_B T_e in t0 (0 = ground state). Paper: 0.",
        )  # fmt: skip
        self.r_hop = FloatSpinBox(
            label="Hopping cutoff (ell)", value=0.0, min=0, max=100, step=0.5,
            tooltip="Hopping cutoff R_hop in ell; 0 = no cutoff, all minimum-image pairs "
            "(the paper's choice).",
        )  # fmt: skip
        self.generate_button = PushButton(
            text="Generate",
            tooltip="New random atomic configuration and random spins, built in the background "
            "(N = 10000 with the ML engine takes several seconds; the window stays usable).",
        )
        self.state_path = FileEdit(
            label="State file", mode="r", filter="*.h5", value=EXAMPLE_STATE,
            tooltip="A frames file (Export's 'Save frames', sdglass generate / label): its first "
            "atomic configuration opens with the spins of every frame on it as the replicas "
            f"(at most {MAX_REPLICAS}) and the electrons it records. Or a recorded trajectory "
            "(Export's 'Record trajectory'): its last spin snapshot. It starts as the shipped "
            f"example, {EXAMPLE_STATE.name}: the paper's system quenched by ML-LLG to t = 300 "
            "(alpha = 0.05, 8 replicas), where C at r_min is -0.36 (the paper has -0.4 by "
            "t = 30; see the README).",
        )  # fmt: skip
        self.open_button = PushButton(
            text="Open state",
            tooltip="Open the chosen frames file: its atoms and spins replace the current ones "
            "at t = 0, and the fields above show its N, L, r_min and electrons.",
        )
        self.job: Job | None = None
        self.message = Label(value="")
        self.summary = Label(value="")
        super().__init__(
            widgets=[
                self.preset, self.n, self.keep_density, self.box, self.r_min, self.seed,
                self.J, self.filling, self.kT_e, self.r_hop, self.generate_button,
                self.state_path, self.open_button, self.message, self.summary,
            ],
            label="System",
        )  # fmt: skip
        self.presets.bind(self)
        self.keep_density.changed.connect(self._sync_box)
        self.n.changed.connect(self._sync_box)
        self.generate_button.clicked.connect(self.generate)
        self.open_button.clicked.connect(lambda: self.open_state())
        self._sync_box()
        self._summarise()
        session.system_changed.connect(self._summarise)
        session.state_saved.connect(lambda path: setattr(self.state_path, "value", path))

    def _sync_box(self, *_) -> None:
        self.box.enabled = not self.keep_density.value
        if self.keep_density.value:
            self.box.value = round(5.0 * (self.n.value / 100) ** (1 / 3), 4)

    def configs(self) -> tuple[SystemConfig, ElectronConfig]:
        """Validated configs from the widgets (ConfigError with the bad value and its range)."""
        system = SystemConfig(
            n=int(self.n.value),
            box=None if self.keep_density.value else float(self.box.value),
            r_min=float(self.r_min.value),
            seed=int(self.seed.value),
        )
        electrons = ElectronConfig(
            J=float(self.J.value),
            filling=float(self.filling.value),
            kT_e=float(self.kT_e.value),
            r_hop=float(self.r_hop.value) or None,
        )
        return system, electrons

    def generate(self) -> bool:
        """Validate the widgets, then build the configuration in a worker thread (the dynamics
        goes on meanwhile; the new system replaces it when ready). Errors appear inline in
        red. Returns whether the build started."""
        if self.job is not None:
            return False
        try:
            system, electrons = self.configs()
        except (SdglassError, ValueError) as err:
            self._fail(err)
            return False
        self._build(lambda: self.session.sim.prepare(system, electrons),
                    f"Generating {system.n} atoms", "Generated")  # fmt: skip
        return True

    def open_state(self, path=None) -> bool:
        """Open a frames file (default: the chosen one) in a worker thread: its atoms and
        spins replace the current ones, and the widgets show its system. A file that is not
        a readable frames file is reported inline; the current state stays. Returns whether
        the opening started."""
        if self.job is not None:
            return False
        path = Path(path or self.state_path.value)
        self._build(lambda: self.session.sim.prepare_state(read_state(path), str(path)),
                    f"Opening {path.name}", f"Opened {path.name}", show=True)  # fmt: skip
        return True

    def _build(self, prepare, busy: str, done: str, show: bool = False) -> None:
        """prepare() in a worker thread, then install its result; show: the widgets take
        the new system's values."""
        say(self.message, "")
        self.generate_button.enabled = self.open_button.enabled = False
        started = time.perf_counter()
        self.job = Job(
            prepare, lambda prepared: self._install(prepared, done, started, show),
            self._fail, self._finished, self.message, busy, self.session.closing,
        )  # fmt: skip

    def _install(self, prepared, done: str, started: float, show: bool) -> None:
        try:
            self.session.install(prepared)
        except SdglassError as err:
            self._fail(err)
            return
        seconds = time.perf_counter() - started
        say(self.message, f"{done} in {seconds:.1f} s" if seconds >= 1 or show else "")
        if show:
            self.show_system()

    def show_system(self) -> None:
        """The widgets hold the current system's values (nothing is generated; the preset
        menu follows), e.g. after a state was opened."""
        system, electrons = self.session.sim.system_config, self.session.sim.electrons
        self.keep_density.value = False
        self.n.value, self.box.value = system.n, system.side
        self.r_min.value, self.seed.value = system.r_min, system.seed
        self.J.value, self.filling.value = electrons.J, electrons.filling
        self.kT_e.value, self.r_hop.value = electrons.kT_e, electrons.r_hop or 0.0

    def _fail(self, err: Exception) -> None:
        say(self.message, f"⚠ {err}", error=True)

    def _finished(self) -> None:
        self.job = None
        self.generate_button.enabled = self.open_button.enabled = True

    def _summarise(self) -> None:
        s = self.session.sim
        origin = (
            f"atoms of {Path(s.state_file).name}"
            if s.state_file
            else f"seed {s.system_config.seed}"
        )
        self.summary.value = (
            f"N = {s.system.n}, L = {s.system.box:.3g} ell, density {s.system.density:.3g}, "
            f"J = {s.electrons.J:g} t0; {origin}"
        )

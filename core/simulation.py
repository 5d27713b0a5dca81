"""A live simulation: one atomic configuration, its field provider, the LLG stepper and observables.

The Qt-free model behind the napari app (STYLE.md, napari-animation pattern):
`Simulation` owns the system, the field provider (ED or ML), the stepper, the
spins (B, N, 3), the clock and the live observables (energy per spin and |m|
per advance call; C(r, t) and xi(t) at a growing, log-spaced set of times).
`advance` runs in a worker thread; parameter changes from another thread go
through `set_llg` (LLG.set_config, thread safe) and take effect at the next step.
Everything returned to callers is a CPU numpy copy.
"""

from __future__ import annotations

import math
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, fields

import numpy as np
import torch

from core.config import ConfigError, ElectronConfig, LLGConfig, SystemConfig
from core.electrons import EDSolver
from core.errors import DeviceError, SdglassError
from core.fields import FieldProvider
from core.io import Frames
from core.llg import LLG
from core.model import (
    EnergyModel,
    MLFieldProvider,
    check_physical_parameters,
    physical_parameters,
)
from core.observables import (
    CorrelationAccumulator,
    PairBins,
    bin_edges,
    correlation_length,
    correlation_sums,
    fit_droplet,
    magnetisation,
    pair_bins,
)
from core.system import AtomicSystem, generate_positions, nearest_distance, random_spins

ENGINES = ("ed", "ml")

#: Most spin replicas of one run (the app's Replicas menu goes this far).
MAX_REPLICAS = 64

#: Largest N for the ED engine: its 2N x 2N diagonalization takes ~3 s at N = 1000 and
#: grows as N^3 (the ML engine is linear in N).
ED_MAX_N = 2000

#: Largest distance of the live C(r, t) (ell): L/2 up to N ~ 1400 at the paper's density;
#: beyond, the pair count grows as N r^3 (26M pairs within L/2 at N = 10000) while C(r)
#: has decayed long before (xi is 1-3 ell; the paper plots r <= 4).
CORR_R_MAX = 6.0

#: Ratio between consecutive C(r, t) record steps: about 10 records per decade of t.
RECORD_RATIO = 10 ** (1 / 10)


@dataclass(frozen=True)
class Snapshot:
    """CPU copies of the live state: spins (B, N, 3), fields of the last evaluation
    (B, N, 3) or None, energy/|m| histories, C(r, t), xi(t) at the record times, the
    ML local energies eps_i (B, N) of the spins when tracked (else None), and the
    parameters changed during the run, oldest first."""

    step: int
    time: float
    spins: np.ndarray
    fields: np.ndarray | None
    energy_per_spin: float
    magnetisation: float
    steps_per_second: float
    energy_times: np.ndarray
    energy_history: np.ndarray
    magnetisation_history: np.ndarray
    record_times: np.ndarray
    corr: np.ndarray
    xi: np.ndarray
    r_edges: np.ndarray
    r_min: float
    local_energies: np.ndarray | None = None
    changes: tuple[dict, ...] = ()  # parameters changed mid-run (`parameter_change`)


@dataclass(frozen=True)
class Prepared:
    """A configuration built by `Simulation.prepare` or `prepare_state` (off the lock), for
    `Simulation.install`: the configs, the atoms, the provider and pair bins made for engine,
    model and device, and the spins of a saved state."""

    system_config: SystemConfig
    electrons: ElectronConfig
    atoms: AtomicSystem
    engine: str
    model: EnergyModel | None
    device: str
    provider: FieldProvider
    edges: np.ndarray
    bins: PairBins
    spins: np.ndarray | None = None  # (B, N, 3) of a saved state; None: random spins
    state_file: str | None = None  # the frames file of a saved state


@dataclass(frozen=True)
class EngineChoice:
    """A provider built by `Simulation.prepare_engine` for engine and model on a system and
    device, for `Simulation.use_engine`."""

    engine: str
    model: EnergyModel | None
    system: AtomicSystem
    device: str
    provider: FieldProvider


@dataclass(frozen=True)
class DeviceChoice:
    """The field provider and C(r, t) pair bins moved to a device by
    `Simulation.prepare_device`, for `Simulation.use_device`."""

    device: str
    engine: str
    model: EnergyModel | None
    system: AtomicSystem
    provider: FieldProvider
    bins: PairBins


@dataclass(frozen=True)
class StateFields:
    """Simulation.compute_fields: the spins evaluated (B, N, 3, a CPU copy), their step,
    simulated time and system, and (H (B, N, 3), E (B,)) per engine."""

    spins: np.ndarray
    step: int
    time: float
    system: AtomicSystem
    fields: dict[str, tuple[np.ndarray, np.ndarray]]


def _checked_replicas(replicas) -> int:
    if not isinstance(replicas, int) or not 1 <= replicas <= MAX_REPLICAS:
        raise ConfigError(f"replicas must be an integer from 1 to {MAX_REPLICAS}, got {replicas!r}")
    return replicas


@contextmanager
def _on_device(device: str):
    """Errors of torch on `device` (a CUDA build or driver that does not run here) as one
    DeviceError; our own errors pass as they are."""
    try:
        yield
    except SdglassError:
        raise
    except Exception as err:
        raise DeviceError(f"cannot compute on {device!r}: {type(err).__name__}: {err}") from err


@dataclass
class _History:
    energy_times: list[float] = field(default_factory=list)
    energy: list[float] = field(default_factory=list)
    magnetisation: list[float] = field(default_factory=list)
    record_times: list[float] = field(default_factory=list)
    corr: list[np.ndarray] = field(default_factory=list)
    changes: list[dict] = field(default_factory=list)


def parameter_change(t: float, step: int, before: tuple, after: tuple) -> dict | None:
    """What differs between the (engine, model, LLGConfig) of two steps, as
    {"t", "step", name: [old, new], ...} ("model": "replaced" when the ML engine's model
    changed); None when nothing that moves the spins changed."""
    (e0, m0, c0), (e1, m1, c1) = before, after
    change: dict = {}
    if e0 != e1:
        change["engine"] = [e0, e1]
    elif e1 == "ml" and m0 is not m1:
        change["model"] = "replaced"
    for f in fields(LLGConfig):
        old, new = getattr(c0, f.name), getattr(c1, f.name)
        if old != new:
            change[f.name] = [old, new]
    return {"t": t, "step": step, **change} if change else None


class Simulation:
    """PHYSICS.md "LLG dynamics" on one amorphous configuration, with live observables.

    engine: "ed" (exact diagonalization) or "ml" (needs `model`); replicas: B
    independent spin states on the same atoms (C(r, t) then subtracts the
    replica-averaged disconnected part); bin_width: C(r, t) bin width in ell.
    """

    def __init__(
        self,
        system: SystemConfig | None = None,
        electrons: ElectronConfig | None = None,
        llg: LLGConfig | None = None,
        engine: str = "ed",
        replicas: int = 1,
        device: str = "cpu",
        model: EnergyModel | None = None,
        bin_width: float = 0.1,
        spin_seed: int = 0,
    ) -> None:
        self._lock = threading.RLock()
        self.system_config = system or SystemConfig()
        self.electrons = electrons or ElectronConfig()
        self.device = device
        self.model = model
        self.bin_width = bin_width
        self._llg_config = llg or LLGConfig()
        self._check_engine(engine, model)
        self.engine = engine
        self.replicas = _checked_replicas(replicas)
        self.spin_seed = spin_seed
        #: snapshots carry the ML local energies of their spins (the app colours atoms by them)
        self.track_local_energies = False
        self._ml_under_ed: MLFieldProvider | None = None  # built on demand, once per system
        self.system: AtomicSystem
        self.provider: FieldProvider
        self.stepper: LLG
        self.bins: PairBins
        self.spins: torch.Tensor
        self.state_file: str | None  # the frames file the atoms came from (None: the seed)
        self.generate(self.system_config, self.electrons)

    # ------------------------------------------------------------------ set-up

    @staticmethod
    def _check_engine(engine: str, model: EnergyModel | None) -> None:
        if engine not in ENGINES:
            raise ConfigError(f"engine must be one of {ENGINES}, got {engine!r}")
        if engine == "ml" and model is None:
            raise ConfigError("the ML engine needs a model: no ML model is loaded")

    def _make_provider(
        self,
        engine: str,
        system: AtomicSystem | None = None,
        electrons: ElectronConfig | None = None,
        device: str | None = None,
        model: EnergyModel | None = None,
    ) -> FieldProvider:
        system, electrons = system or self.system, electrons or self.electrons
        device = device or self.device
        model = model if model is not None else self.model
        if engine == "ed":
            if system.n > ED_MAX_N:
                gib = (2 * system.n) ** 2 * 16 / 2**30
                raise ConfigError(
                    f"ED at N = {system.n} diagonalizes a {2 * system.n} x {2 * system.n} complex "
                    f"matrix ({gib:.1f} GiB) twice per step; the app allows ED up to "
                    f"N = {ED_MAX_N}: use the ML engine"
                )
            return EDSolver(system, electrons, device)
        assert model is not None
        for kept in (getattr(self, "provider", None), self._ml_under_ed):
            # a model for the same atoms: the descriptor geometry is reused, moved to
            # another device if need be
            if isinstance(kept, MLFieldProvider) and kept.systems[0] is system:
                if len(kept.systems) == 1 and kept.shares_geometry(model):
                    there = kept if kept.device == torch.device(device) else kept.to(device)
                    return there.for_model(model)
        return MLFieldProvider(model, system, device)

    def generate(
        self, system: SystemConfig | None = None, electrons: ElectronConfig | None = None
    ) -> None:
        """New atomic configuration (PHYSICS.md "Amorphous system"), fresh random spins, t = 0."""
        self.install(self.prepare(system, electrons))

    def prepare(
        self, system: SystemConfig | None = None, electrons: ElectronConfig | None = None
    ) -> Prepared:
        """The costly part of `generate`: positions, field provider (the ML descriptor's
        geometry) and pair bins. Changes nothing, so it may run in another thread while
        the dynamics goes on; PackingError or ConfigError leave the simulation as it was."""
        system = system or self.system_config
        return self._prepared(system, electrons or self.electrons, generate_positions(system))

    def prepare_state(self, frames: Frames, state_file: str | None = None) -> Prepared:
        """A saved state (a frames file, e.g. the app's export) made ready for `install`: the
        atoms of its first frame, the spins of every frame on those atoms as the replicas
        (at most MAX_REPLICAS), the electrons the file records (else the current ones).
        r_min becomes the atoms' nearest distance where that is below the current r_min;
        state_file names the file (exports record it). Changes nothing, so it may run in
        another thread."""
        same = np.all(frames.positions == frames.positions[0], axis=(1, 2))
        same &= frames.box == frames.box[0]
        count = int(same.sum())
        if count > MAX_REPLICAS:
            raise ConfigError(
                f"the first configuration of the file has {count} spin states and a run holds "
                f"at most {MAX_REPLICAS} replicas: save fewer frames (sdglass label and eval "
                "read files of any size)"
            )
        box = float(frames.box[0])
        atoms = AtomicSystem(np.mod(frames.positions[0], box), box)  # drawn inside the box
        r_min = min(self.system_config.r_min, nearest_distance(atoms))
        system = SystemConfig(n=atoms.n, box=atoms.box, r_min=r_min, seed=self.system_config.seed)
        electrons = frames.electron_config(self.electrons)
        return self._prepared(system, electrons, atoms, frames.spins[same], state_file)

    def _prepared(self, system, electrons, atoms, spins=None, state_file=None) -> Prepared:
        """Provider and pair bins of atoms for the current engine, model and device."""
        with self._lock:
            engine, model, device = self.engine, self.model, self.device
        provider = self._make_provider(engine, atoms, electrons, device, model)
        edges = bin_edges(system.r_min, min(atoms.box / 2, CORR_R_MAX), self.bin_width)
        bins = pair_bins(atoms, edges, device)
        return Prepared(
            system, electrons, atoms, engine, model, device, provider, edges, bins, spins,
            state_file,
        )  # fmt: skip

    def install(self, prepared: Prepared) -> None:
        """Make a prepared configuration current at t = 0, with fresh random spins (a saved
        state's spins and replicas for `prepare_state`). Parts made for an engine, model or
        device that changed meanwhile are made again for the current."""
        p = prepared
        with self._lock:
            provider, bins = p.provider, p.bins
            ml_changed = self.engine == "ml" and p.model is not self.model
            if (p.engine, p.device) != (self.engine, self.device) or ml_changed:
                provider = self._make_provider(self.engine, p.atoms, p.electrons)
            if p.device != self.device:
                bins = bins.to(self.device)
            self.system_config, self.electrons, self.system = p.system_config, p.electrons, p.atoms
            self.state_file = p.state_file  # where the atoms came from, if not from the seed
            self.edges, self.bins, self.provider = p.edges, bins, provider
            self._ml_under_ed = None
            self.stepper = LLG(provider, self._llg_config, device=self.device)
            if p.spins is None:
                self.reset_spins(self.spin_seed)
            else:
                self.replicas = len(p.spins)
                self._begin(torch.as_tensor(p.spins, dtype=torch.float64))

    def reset_spins(self, seed: int | None = None) -> None:
        """Uniformly random spins for every replica (seeded), clock and observables back to 0."""
        with self._lock:
            if seed is not None:
                self.spin_seed = int(seed)
            # drawn on the CPU: a seed gives the same spins on every device
            gen = torch.Generator().manual_seed(self.spin_seed)
            self._begin(random_spins(self.replicas, self.system.n, gen))

    def _begin(self, spins: torch.Tensor) -> None:
        """A new run from spins (B, N, 3): clock and observables back to 0."""
        with self._lock:
            self.spins = spins.to(self.device)
            self.step_count = 0
            self.time = 0.0
            self.last_fields: np.ndarray | None = None
            self.last_energy = math.nan
            self._next_record = 0
            self._history = _History()
            self._used: tuple | None = None  # (engine, model, LLGConfig) of the last step
            self._rate = 0.0

    def set_engine(self, engine: str, model: EnergyModel | None = None) -> None:
        """Switch ED / ML, optionally with a new model (same system, spins and clock).

        On an error (ConfigError) nothing changes."""
        self.use_engine(self.prepare_engine(engine, model))

    def prepare_engine(self, engine: str, model: EnergyModel | None = None) -> EngineChoice:
        """The costly part of `set_engine`, the provider (the ML descriptor's set-up takes
        seconds at large N): changes nothing, so it may run in another thread while the
        dynamics goes on."""
        model = model if model is not None else self.model
        self._check_engine(engine, model)
        with self._lock:
            system, electrons, device = self.system, self.electrons, self.device
        provider = self._make_provider(engine, system, electrons, device, model)
        return EngineChoice(engine, model, system, device, provider)

    def use_engine(self, choice: EngineChoice) -> None:
        """Switch to a prepared engine at the next step; the thermal noise goes on where it
        was. A provider made for a system or device replaced meanwhile is made again for
        the current ones (ConfigError: nothing changes)."""
        c = choice
        with self._lock:
            provider = c.provider
            if c.system is not self.system or c.device != self.device:
                provider = self._make_provider(c.engine, model=c.model)
            self.engine, self.model, self.provider = c.engine, c.model, provider
            self._ml_under_ed = None
            self.stepper.provider = provider  # the same stepper: its noise streams go on

    def set_device(self, device: str) -> None:
        """Move provider, pair bins and spins to `device` ("cpu" or "cuda"); the state is kept.

        ConfigError when the device is not available, DeviceError when torch cannot compute
        there (a CUDA build or driver that does not run here); nothing changes then."""
        self.use_device(self.prepare_device(device))

    def prepare_device(self, device: str) -> DeviceChoice:
        """The costly part of `set_device`: the provider (the ML descriptor's geometry, moved
        rather than built again) and the pair bins on `device`, with CUDA's start-up on first
        use. Changes nothing, so it may run in another thread."""
        device = str(device)
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError(f"device {device!r} requested but no CUDA device is available")
        with self._lock:
            engine, model, system, bins = self.engine, self.model, self.system, self.bins
        with _on_device(device):
            provider = self._make_provider(engine, system, device=device, model=model)
            return DeviceChoice(device, engine, model, system, provider, bins.to(device))

    def use_device(self, choice: DeviceChoice) -> None:
        """Make a prepared device current: the spins move there and the thermal noise goes
        on. Parts prepared for a system, engine or model replaced meanwhile are made again
        for the current ones; on an error nothing changes."""
        c = choice
        with self._lock, _on_device(c.device):
            provider, bins = c.provider, c.bins
            if c.system is not self.system or c.engine != self.engine or c.model is not self.model:
                provider = self._make_provider(self.engine, device=c.device)
            if c.system is not self.system:
                bins = self.bins.to(c.device)
            spins = self.spins.to(c.device)
            stepper = self.stepper.continued_on(provider, c.device)
            self.device, self.provider, self.bins, self.spins = c.device, provider, bins, spins
            self.stepper = stepper
            self._ml_under_ed = None

    def set_replicas(self, replicas: int) -> None:
        """Number of spin replicas B; resets the spins."""
        with self._lock:
            self.replicas = _checked_replicas(replicas)
            self.reset_spins()

    def model_warnings(self, trained: dict[str, float]) -> list[str]:
        """Differences between a model's training parameters and the current system's."""
        used = physical_parameters(self.electrons, self.system.density)
        return check_physical_parameters(trained, used)

    @property
    def llg_config(self) -> LLGConfig:
        return self.stepper.config

    def set_llg(self, config: LLGConfig) -> None:
        """Thread safe: the next step uses the new temperature, alpha, dt or integrator."""
        self._llg_config = config
        self.stepper.set_config(config)

    # ------------------------------------------------------------------ dynamics

    def _record(self, spins: torch.Tensor) -> None:
        h = self._history
        sums = correlation_sums(spins, self.bins)
        with np.errstate(invalid="ignore", divide="ignore"):
            corr = np.where(self.bins.counts > 0, sums / np.maximum(self.bins.counts, 1), 0.0)
        h.record_times.append(self.time)
        h.corr.append(corr)
        self._next_record = max(self.step_count + 1, round(self.step_count * RECORD_RATIO))

    def advance(self, n_steps: int) -> None:
        """PHYSICS.md, LLG (paper Eq. 3): n_steps steps of all replicas, recording observables."""
        if not isinstance(n_steps, int) or n_steps < 1:
            raise ConfigError(f"n_steps must be an integer >= 1, got {n_steps!r}")
        start = time.perf_counter()
        with self._lock:
            result = None
            t_before = self.time
            for _ in range(n_steps):
                if self.step_count == self._next_record:
                    self._record(self.spins)
                t_before = self.time
                result = self.stepper.step(self.spins)
                self._note_parameters(t_before)
                self.spins = result.spins
                self.step_count += 1
                self.time += result.dt  # the step's own dt, even if changed meanwhile
            assert result is not None
            n = self.system.n
            self.last_energy = float(result.energy.mean()) / n
            self.last_fields = result.fields.detach().cpu().numpy()
            h = self._history
            h.energy_times.append(t_before)
            h.energy.append(self.last_energy)
            h.magnetisation.append(float(magnetisation(self.spins).mean()))
            elapsed = time.perf_counter() - start
            self._rate = n_steps / elapsed if elapsed > 0 else math.inf

    def _note_parameters(self, t: float) -> None:
        """Keep what changed since the previous step (temperature, alpha, engine, ...: the
        app changes them mid-run), with the time the step began."""
        used = (self.engine, self.model, self.stepper.last_config)
        before = self._used
        # per step, only identities are compared: a change makes new objects
        if before is not None and any(a is not b for a, b in zip(used, before, strict=True)):
            change = parameter_change(t, self.step_count, before, used)
            if change is not None:
                self._history.changes.append(change)
        self._used = used

    def compute_fields(self, *engines: str) -> StateFields:
        """Local fields H (B, N, 3) and energies E (B,) of one state of the current spins,
        from each engine ("ed", "ml"; default: the current). The state, its system and the
        providers are taken together, so the dynamics may step on, and a new system be
        installed, while the fields are computed."""
        engines = engines or (self.engine,)
        for engine in engines:
            self._check_engine(engine, self.model)
        with self._lock:
            spins, step, t, system = self.spins.clone(), self.step_count, self.time, self.system
            providers = {engine: self._provider_of(engine) for engine in engines}
        fields = {}
        for engine, provider in providers.items():
            h, e = provider.fields(spins)
            fields[engine] = (h.detach().cpu().numpy(), e.detach().cpu().numpy())
        return StateFields(spins.cpu().numpy(), step, t, system, fields)

    def _provider_of(self, engine: str) -> FieldProvider:
        if engine == self.engine:
            return self.provider
        return self._ml() if engine == "ml" else self._make_provider(engine)

    def _ml(self) -> MLFieldProvider:
        """The ML provider of this system: the engine's, or (under ED) one kept until the
        system, model or device changes (its descriptor set-up takes seconds at large N)."""
        with self._lock:
            if self.engine == "ml":
                return self.provider
            kept = self._ml_under_ed
            if kept is None or kept.source is not self.model:
                self._ml_under_ed = self._make_provider("ml")
            return self._ml_under_ed

    def local_energies(self) -> np.ndarray | None:
        """Per-atom ML energies eps_i (B, N) of the current spins, or None without ML."""
        if self.model is None:
            return None
        with self._lock:
            provider, spins = self._ml(), self.spins.clone()
        return provider.local_energies(spins).cpu().numpy()

    # ------------------------------------------------------------------ observables

    def correlations(self) -> CorrelationAccumulator:
        """C(r, t) at the record times as an accumulator (one configuration)."""
        with self._lock:
            h = self._history
            acc = CorrelationAccumulator(len(h.corr), self.edges)
            if h.corr:
                acc.sums[:] = np.stack(h.corr) * self.bins.counts
                acc.counts[:] = self.bins.counts
            return acc

    def fit_psi(self, t_min: float = 1.5):
        """Droplet fit xi ~ (log t)^(1/psi) of the recorded xi(t) (core.observables.fit_droplet)."""
        snap = self.snapshot()
        return fit_droplet(snap.record_times, snap.xi, t_min=t_min)

    def snapshot(self) -> Snapshot:
        """CPU copies of everything a viewer shows."""
        with self._lock:
            h = self._history
            corr = np.array(h.corr).reshape(len(h.corr), len(self.edges) - 1)
            xi = correlation_length(self.edges, corr) if len(corr) else np.zeros(0)
            return Snapshot(
                step=self.step_count,
                time=self.time,
                spins=self.spins.detach().cpu().numpy().copy(),
                fields=None if self.last_fields is None else self.last_fields.copy(),
                energy_per_spin=self.last_energy,
                magnetisation=float(magnetisation(self.spins).mean()),
                steps_per_second=self._rate,
                energy_times=np.array(h.energy_times),
                energy_history=np.array(h.energy),
                magnetisation_history=np.array(h.magnetisation),
                record_times=np.array(h.record_times),
                corr=corr,
                xi=xi,
                r_edges=self.edges.copy(),
                r_min=self.system_config.r_min,
                local_energies=self._tracked_local_energies(),
                changes=tuple(dict(c) for c in h.changes),
            )

    def _tracked_local_energies(self) -> np.ndarray | None:
        """eps_i of the spins for a snapshot, when tracked and the model can run here."""
        if not self.track_local_energies:
            return None
        try:
            return self.local_energies()
        except SdglassError:  # e.g. a box too small for the model's cutoff: not shown
            return None

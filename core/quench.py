"""Ensemble thermal quench: configurations x replicas of stochastic LLG from random spins.

Configurations are run in groups of `pack` (default 1): a group is one task
(`run_group`) whose result holds only sums, and `run_quench` adds the groups
up in index order. With pack > 1 (ML engine) the group's configurations are
packed into one system, so all their replicas advance in one batched model
call: what fills a GPU. Seeds derive from the configuration index alone (the
noise of each packed configuration comes from its own stream), so any split of
the work, packed or spread over a Dask cluster (core.cluster), gives the same
numbers up to floating-point round-off in the batched products.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from functools import partial

import numpy as np
import torch

from core.checkpoint import (
    Checkpoints,
    GroupCheckpoint,
    Progress,
    file_digest,
    safe_points,
)
from core.cluster import ClusterSpec, map_configurations
from core.config import ConfigError, ElectronConfig, LLGConfig, SystemConfig, _require
from core.electrons import EDSolver, PackedEDSolver, resolve_method
from core.errors import FileFormatError
from core.fields import FieldProvider
from core.io import Trajectory
from core.llg import LLG, check_spins
from core.model import (
    ELECTRON_KEYS,
    EnergyModel,
    MLFieldProvider,
    check_physical_parameters,
    parameter_mismatches,
    physical_parameters,
)
from core.modelfile import load_model
from core.observables import (
    CorrelationAccumulator,
    bin_edges,
    correlation_length,
    magnetisation,
    pair_bins,
)
from core.system import AtomicSystem, generate_positions, random_spins

ENGINES = ("ed", "ml")
#: The ED method of progress saved before checkpoints recorded it.
UNRECORDED = "not recorded"


@dataclass(frozen=True)
class QuenchConfig:
    """A quench ensemble: configs atomic configurations x replicas random starts, run to t_max.

    Configuration c uses atomic seed system.seed + c and spin/noise seed llg.seed + c.
    Observables are recorded at about n_records log-spaced times (plus t = 0);
    C(r, t) uses bins of width bin_width (ell) from r_min to L/2.
    """

    system: SystemConfig = field(default_factory=SystemConfig)
    electrons: ElectronConfig = field(default_factory=ElectronConfig)
    llg: LLGConfig = field(default_factory=LLGConfig)
    engine: str = "ed"
    configs: int = 2
    replicas: int = 4
    t_max: float = 50.0
    n_records: int = 40
    bin_width: float = 0.1
    snapshots: bool = False
    device: str = "cpu"
    model_path: str | None = None
    pack: int = 1
    ed_method: str = "auto"

    def __post_init__(self) -> None:
        _require(self.engine in ENGINES, f"engine must be one of {ENGINES}, got {self.engine!r}")
        _require(
            self.engine != "ml" or self.model_path is not None,
            "the ml engine needs a model file (model_path)",
        )
        _require(self.configs >= 1, f"configs must be >= 1, got {self.configs}")
        _require(self.replicas >= 1, f"replicas must be >= 1, got {self.replicas}")
        _require(
            np.isfinite(self.t_max) and self.t_max >= self.llg.dt,
            f"t_max must be >= dt = {self.llg.dt}, got {self.t_max}",
        )
        _require(self.n_records >= 2, f"n_records must be >= 2, got {self.n_records}")
        _require(self.bin_width > 0, f"bin_width must be > 0, got {self.bin_width}")
        _require(self.pack >= 1, f"pack must be >= 1, got {self.pack}")
        self.resolved_ed_method  # noqa: B018 (raises ConfigError for an unusable ed_method)

    @property
    def resolved_ed_method(self) -> str:
        """ "eigh" or "purification": what ed_method (ED_METHODS) means on this device."""
        return resolve_method(self.ed_method, self.electrons.kT_e, torch.device(self.device))

    @property
    def n_groups(self) -> int:
        return -(-self.configs // self.pack)

    def group(self, index: int) -> range:
        """Configuration indices of group `index`."""
        return range(index * self.pack, min(self.configs, (index + 1) * self.pack))

    @property
    def n_steps(self) -> int:
        return round(self.t_max / self.llg.dt)

    def record_steps(self) -> np.ndarray:
        """Step indices at which observables are recorded: 0 and ~log-spaced up to n_steps."""
        logs = np.logspace(0, np.log10(self.n_steps), self.n_records - 1)
        return np.unique(np.concatenate([[0], np.round(logs).astype(int)]))

    def edges(self) -> np.ndarray:
        return bin_edges(self.system.r_min, self.system.side / 2, self.bin_width)

    def attributes(self) -> dict[str, float | int | str]:
        """Flat run parameters for the trajectory file."""
        out: dict[str, float | int | str] = {}
        for part in (self.system, self.electrons, self.llg):
            out.update({k: v for k, v in part.to_dict().items() if v is not None})
        out.update(
            box=self.system.side,
            seed=self.system.seed,
            noise_seed=self.llg.seed,
            engine=self.engine,
            configs=self.configs,
            replicas=self.replicas,
            t_max=self.t_max,
            n_steps=self.n_steps,
            bin_width=self.bin_width,
            pack=self.pack,
        )
        if self.engine == "ml":
            out["model"] = str(self.model_path)
        else:
            out["ed_method"] = self.resolved_ed_method
        return out


@dataclass
class GroupResult:
    """Sums over the replicas of one group of configurations at every record time;
    positions (K, N, 3) and snapshots (T, K, B, N, 3) for its K configurations;
    resumed_steps: configuration-steps read back from a checkpoint, not run here."""

    positions: np.ndarray
    energy_sum: np.ndarray
    magnetisation_sum: np.ndarray
    n_replicas: int
    correlations: CorrelationAccumulator
    snapshots: np.ndarray | None
    resumed_steps: int = 0
    ed_methods: list[str] = field(default_factory=list)


@dataclass
class QuenchResult:
    """Ensemble averages at the record times: energy per spin, |m|, C(r, t), xi(t);
    resumed_steps: configuration-steps read back from checkpoints, not run here."""

    config: QuenchConfig
    times: np.ndarray
    energy_per_spin: np.ndarray
    magnetisation: np.ndarray
    correlations: CorrelationAccumulator
    positions: np.ndarray
    snapshots: np.ndarray | None
    resumed_steps: int = 0
    ed_methods: list[str] = field(default_factory=list)

    @property
    def corr(self) -> np.ndarray:
        return self.correlations.correlation()

    @property
    def xi(self) -> np.ndarray:
        return correlation_length(self.correlations.edges, self.corr)


def field_provider(
    qc: QuenchConfig, systems: list[AtomicSystem], model: EnergyModel | None = None
) -> FieldProvider:
    """The engine that computes local fields on the configurations packed into one batch:
    ED (each configuration its own Hamiltonian), or the ML model."""
    if qc.engine == "ed":
        if len(systems) == 1:
            return EDSolver(systems[0], qc.electrons, qc.device, qc.ed_method)
        return PackedEDSolver(systems, qc.electrons, qc.device, qc.ed_method)
    if model is None:
        model, _ = load_model(qc.model_path)
    return MLFieldProvider(model, systems, qc.device)


def load_quench_model(qc: QuenchConfig) -> EnergyModel | None:
    """Load the ML model once per process. Electron parameters (t0, ell, J, filling, kT_e)
    other than the model's are an error: the model has its electrons built in, and the
    trajectory file would record parameters the run never simulated. Another density
    is a warning: the system is really that dense, and the model extrapolates."""
    if qc.engine != "ml":
        return None
    model, card = load_model(qc.model_path)
    used = physical_parameters(qc.electrons, qc.system.density)
    differ = parameter_mismatches(card.physical, used)
    fixed = [differ[key] for key in ELECTRON_KEYS if key in differ]
    if fixed:
        raise ConfigError(
            f"{'; '.join(fixed)} ({qc.model_path}): the ML engine simulates the electrons its "
            "model was trained for, so run with the model's values, use the ED engine, or "
            "train a model for these parameters"
        )
    check_physical_parameters(card.physical, used)  # density: warns
    return model


def run_identity(qc: QuenchConfig, index: int) -> dict:
    """Every parameter that fixes the numbers of group `index` (what a checkpoint must match)."""
    run = {**qc.attributes(), "n_records": qc.n_records, "snapshots": qc.snapshots}
    run.pop("ed_method", None)  # the methods agree to round-off: a resume may switch, like device
    run.update(group=index, configs_in_group=list(qc.group(index)))
    if qc.engine == "ml":
        run["model_sha256"] = file_digest(qc.model_path)
    return run


def run_group(
    qc: QuenchConfig,
    index: int,
    on_steps: Callable[[int], None] | None = None,
    model: EnergyModel | None = None,
    checkpoints: Checkpoints | None = None,
) -> GroupResult:
    """Quench all replicas of the configurations of group `index`, packed into one system
    (PHYSICS.md "LLG dynamics"); with checkpoints, continue from and save its progress."""
    configs = qc.group(index)
    systems = _systems(qc, configs)
    store, progress = None, None
    if checkpoints is not None:
        store = GroupCheckpoint(checkpoints, index, run_identity(qc, index))
        progress = checkpoints.load(index, store.run)
    progress = progress or _start(qc, configs)
    resumed = len(configs) * progress.step
    if on_steps is not None and resumed:
        on_steps(resumed)
    if not progress.done:
        _advance(qc, configs, systems, progress, on_steps, model, store)
    return GroupResult(
        np.stack([system.positions for system in systems]), progress.energy_sum,
        progress.magnetisation_sum, len(configs) * qc.replicas, _correlations(qc, progress),
        progress.snapshots, resumed, progress.methods,
    )  # fmt: skip


def _systems(qc: QuenchConfig, configs: range) -> list[AtomicSystem]:
    """The atoms of configurations `configs` (configuration c: atomic seed system.seed + c)."""
    return [generate_positions(qc.system.replace(seed=qc.system.seed + c)) for c in configs]


def _start(qc: QuenchConfig, configs: range) -> Progress:
    """Step 0: random spins, configuration c seeded llg.seed + c like its noise stream
    (whose state starts from that seed: no saved state yet)."""
    gens = [torch.Generator(device=qc.device).manual_seed(qc.llg.seed + c) for c in configs]
    spins = torch.cat(
        [random_spins(qc.replicas, qc.system.n, g, device=qc.device) for g in gens], 1
    )
    n_t, n_r = len(qc.record_steps()), len(qc.edges()) - 1
    shape = (n_t, len(configs), qc.replicas, qc.system.n, 3)
    return Progress(
        step=0, t_index=0, spins=spins.cpu().numpy(), noise=[],
        energy_sum=np.zeros(n_t), magnetisation_sum=np.zeros(n_t),
        corr_sums=np.zeros((n_t, n_r)), corr_counts=np.zeros((n_t, n_r)),
        snapshots=np.zeros(shape, np.float32) if qc.snapshots else None,
    )  # fmt: skip


def _correlations(qc: QuenchConfig, p: Progress) -> CorrelationAccumulator:
    """An accumulator on the progress's C(r, t) sums (shared arrays, not copies)."""
    acc = CorrelationAccumulator(len(qc.record_steps()), qc.edges())
    acc.sums, acc.counts = p.corr_sums, p.corr_counts
    return acc


def _advance(qc, configs, systems, p: Progress, on_steps, model, store) -> None:
    """Run a group from its progress p to the end, updating p; store (a GroupCheckpoint)
    saves it every store.every seconds, on Ctrl-C or SIGTERM and at the end."""
    n, k = qc.system.n, len(configs)
    if qc.engine == "ed":  # which ED methods advanced it (a resume may switch, like device)
        if p.step and not p.methods:
            p.methods.append(UNRECORDED)  # progress saved before methods were recorded
        if p.methods[-1:] != [qc.resolved_ed_method]:
            p.methods.append(qc.resolved_ed_method)
    provider = field_provider(qc, systems, model)
    bins = [pair_bins(system, qc.edges(), qc.device) for system in systems]
    # configuration c: noise stream llg.seed + c, initial spins from a generator seeded the same
    stepper = LLG(provider, qc.llg.replace(seed=qc.llg.seed + configs[0]), qc.device, [n] * k)
    if p.noise:
        stepper.set_noise_state([torch.from_numpy(s) for s in p.noise])
    spins = torch.from_numpy(p.spins).to(qc.device)
    acc = _correlations(qc, p)

    def record(state: torch.Tensor, e: torch.Tensor) -> None:
        check_spins(state)  # NaN from any step since the last check stops the run here
        per_config = state.unflatten(1, (k, n))  # (B, K, N, 3)
        p.energy_sum[p.t_index] = e.sum().item() / n
        p.magnetisation_sum[p.t_index] = magnetisation(per_config).sum().item()
        for c, config_bins in enumerate(bins):
            acc.add(p.t_index, per_config[:, c], config_bins)
        if p.snapshots is not None:
            p.snapshots[p.t_index] = per_config.transpose(0, 1).cpu().numpy()
        p.t_index += 1

    def save() -> None:
        check_spins(spins)  # a checkpoint never holds NaN
        p.spins = spins.cpu().numpy()
        p.noise = [s.numpy() for s in stepper.noise_state()]
        store(p)

    records = qc.record_steps()
    with safe_points(store.every if store is not None else None, save) as reached:
        while p.step < qc.n_steps:
            # unchecked: a check per step would make a GPU finish each step before the
            # next is queued; records and saves check the spins instead
            result = stepper.step(spins, check=False)
            if p.step == records[p.t_index]:
                record(spins, result.energy)
            spins, p.step = result.spins, p.step + 1
            if on_steps is not None:
                on_steps(k)
            reached()
    record(spins, provider.fields(spins)[1])
    p.done = True
    if store is not None:
        save()


def merge_results(qc: QuenchConfig, parts: list[GroupResult]) -> QuenchResult:
    """Ensemble averages from per-configuration sums (order-independent up to round-off)."""
    acc = CorrelationAccumulator(len(qc.record_steps()), qc.edges())
    for part in parts:
        acc.merge(part.correlations)
    total = sum(p.n_replicas for p in parts)
    snaps = None
    if qc.snapshots:
        snaps = np.concatenate([p.snapshots for p in parts], axis=1)  # (T, C, B, N, 3)
    return QuenchResult(
        config=qc,
        times=qc.record_steps() * qc.llg.dt,
        energy_per_spin=sum(p.energy_sum for p in parts) / total,
        magnetisation=sum(p.magnetisation_sum for p in parts) / total,
        correlations=acc,
        positions=np.concatenate([p.positions for p in parts]),
        snapshots=snaps,
        resumed_steps=sum(p.resumed_steps for p in parts),
        ed_methods=list(dict.fromkeys(m for p in parts for m in p.ed_methods)),
    )


def run_quench(
    qc: QuenchConfig,
    on_steps: Callable[[int], None] | None = None,
    cluster: ClusterSpec | None = None,
    checkpoints: Checkpoints | None = None,
    model: EnergyModel | None = None,
) -> QuenchResult:
    """All groups of configurations, one after another in this process or as tasks on a
    Dask cluster (each worker loads the model file itself); on_steps(k) reports k more
    configuration-steps done (qc.configs x qc.n_steps in all). With checkpoints, finished
    groups are read back, an unfinished one continues, and each saves its progress
    (core.checkpoint; on a cluster the directory must be shared). model: the ML engine's
    model if the caller has loaded it already with load_quench_model."""
    if model is None:
        model = load_quench_model(qc)  # checks the model file (and warns) before any work
    if cluster is None or not cluster.distributed:
        task = partial(run_group, qc, on_steps=on_steps, model=model, checkpoints=checkpoints)
        parts = map_configurations(task, qc.n_groups)
    else:

        def done(g: int, part: GroupResult) -> None:
            if on_steps is not None:
                on_steps(len(qc.group(g)) * qc.n_steps)

        task = partial(run_group, qc, checkpoints=checkpoints)
        parts = map_configurations(task, qc.n_groups, cluster, done)
    return merge_results(qc, parts)


def to_trajectory(result: QuenchResult) -> Trajectory:
    """The trajectory-file record of a quench (core.io, trajectory format)."""
    acc = result.correlations
    snaps = result.snapshots
    attrs = result.config.attributes()
    if result.config.engine == "ed":  # the methods that ran, not what this device would use
        attrs["ed_method"] = ", ".join(result.ed_methods) or UNRECORDED
    return Trajectory(
        times=result.times,
        energy_per_spin=result.energy_per_spin,
        magnetisation=result.magnetisation,
        corr=result.corr,
        r_centres=acc.centres,
        r_edges=acc.edges,
        pair_counts=acc.counts[0].astype(np.int64),
        xi=np.nan_to_num(result.xi, nan=0.0),
        attrs=attrs,
        snapshots=snaps,
        snapshot_times=result.times if snaps is not None else None,
        positions=result.positions,
    )


def config_of_run(run: dict) -> QuenchConfig:
    """The quench that a checkpoint's run record describes (the device it ran on aside)."""

    def part(cls, **fixed):
        names = {f.name for f in fields(cls)}
        return cls.from_dict({**{k: run[k] for k in names if k in run}, **fixed})

    return QuenchConfig(
        system=part(SystemConfig, seed=run["seed"]), electrons=part(ElectronConfig),
        llg=part(LLGConfig, seed=run["noise_seed"]), engine=run["engine"],
        configs=run["configs"], replicas=run["replicas"], t_max=run["t_max"],
        n_records=run["n_records"], bin_width=run["bin_width"], model_path=run.get("model"),
        pack=run["pack"],
    )  # fmt: skip


def saved_trajectory(checkpoints: Checkpoints) -> Trajectory:
    """What an unfinished quench has recorded so far, from its saved progress: the
    configurations of the groups saved, up to the last record every one of them reached.
    attrs["partial"] says how much of the run that is."""
    groups = checkpoints.saved_groups()
    if not groups:
        inside = sorted(
            d.name for d in checkpoints.directory.glob("*/") if any(d.glob("group-*.h5"))
        )
        raise FileFormatError(
            f"{checkpoints.directory} holds no saved quench progress (group-*.h5)"
            + (f"; its folders {', '.join(inside)} do" if inside else "")
        )
    qc = config_of_run(groups[0][0])
    parts, reached = [], []
    for run, _ in groups:
        progress = checkpoints.load(run["group"], run)
        configs = qc.group(run["group"])
        parts.append(GroupResult(
            np.stack([system.positions for system in _systems(qc, configs)]),
            progress.energy_sum, progress.magnetisation_sum, len(configs) * qc.replicas,
            _correlations(qc, progress), None, ed_methods=progress.methods,
        ))  # fmt: skip
        reached.append(progress.t_index)
    k = min(reached)
    if k < 1:
        raise FileFormatError(
            f"{checkpoints.directory}: no record reached yet (t = 0 is the first)"
        )
    traj = to_trajectory(merge_results(qc, parts))
    _, done, total = checkpoints.saved_steps()
    traj.attrs["partial"] = (
        f"saved progress: {len(traj.positions)} of {qc.configs} configurations, records to "
        f"t = {traj.times[k - 1]:.4g} of {qc.t_max:g} ({done} of {total} configuration-steps)"
    )
    cut = {name: getattr(traj, name)[:k] for name in
           ("times", "energy_per_spin", "magnetisation", "corr", "xi")}  # fmt: skip
    return replace(traj, **cut)


def read_run(path: str) -> Trajectory:
    """A quench run's observables: a trajectory file, or what a quench checkpoint
    directory (`--checkpoint DIR`, a reproduction's checkpoints/NAME) has recorded so far."""
    from pathlib import Path

    from core.io import read_trajectory

    if Path(path).is_dir():
        return saved_trajectory(Checkpoints(Path(path)))
    return read_trajectory(path)

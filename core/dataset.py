"""ED-labelled training data: the paper's recipe (PHYSICS.md "Behler-Parrinello model", paper Sec. IV).

For each of `configs` atomic configurations (seed system.seed + c) the dataset
holds `spins_per_config` frames: a fraction of uniformly random spins and the
rest sampled along ED-LLG relaxations from random starts (`replicas` of them
run as one batch (R, N, 3)), each frame labelled by exact diagonalization with
its fields H_i = -dE/dS_i and total energy E. Frame k has `source` 0 (random)
or 1 (relaxation).

Relaxation defaults: H_perp ~ 0.013 (PHYSICS.md "Scales") makes relaxation at
the paper's alpha = 0.05 take t ~ hundreds to thousands, so the sampling runs
use alpha = 1 and dt = 0.5 at the paper's k_B T = 0.001, sampled at
log-spaced times from t_first = 1 to t_max = 100. Measured at N = 100 (SIB,
4 replicas): H_perp's spread falls from 0.014 to 0.0042 by t = 90, and the
energy per spin at dt = 0.5 and dt = 0.25 agrees within 5e-5 at t = 20 and 40
(it changes by 8e-3 over that time). The step that leaves a state already
holds that state's ED fields and energy, so every relaxation frame costs no
extra diagonalization. All these settings are recorded as root attributes
``dataset_*`` of the frames file (read them with `read_dataset_attrs`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from core import __version__
from core.checkpoint import Checkpoints
from core.cluster import ClusterSpec, map_configurations
from core.config import ElectronConfig, LLGConfig, SystemConfig, _require
from core.electrons import EDSolver
from core.io import Frames, atomic_output, electron_attrs, write_frames
from core.llg import LLG
from core.system import generate_positions, random_spins

RANDOM, RELAXATION = 0, 1
#: Relaxation LLG defaults (see module docstring): strong damping, large step, paper's k_B T.
RELAX_LLG = LLGConfig(temperature=0.001, alpha=1.0, dt=0.5, integrator="sib", seed=0)
ATTR_PREFIX = "dataset_"


@dataclass(frozen=True)
class DatasetConfig:
    """What `generate_dataset` builds (module docstring).

    system: atoms of configuration c use seed system.seed + c; electrons: the ED
    labels; configs, spins_per_config: frames = configs x spins_per_config;
    random_fraction: share of random-spin frames per configuration; replicas:
    relaxations run as one batch; relax: their LLG parameters (seed + c seeds the
    random spins and noise of configuration c); t_first, t_max: first and last
    sampling time (1/(gamma t0)), log-spaced; batch: frames per ED call for
    random frames; device: torch device.
    """

    system: SystemConfig = field(default_factory=SystemConfig)
    electrons: ElectronConfig = field(default_factory=ElectronConfig)
    configs: int = 10
    spins_per_config: int = 250
    random_fraction: float = 0.2
    replicas: int = 8
    relax: LLGConfig = RELAX_LLG
    t_first: float = 1.0
    t_max: float = 100.0
    batch: int = 32
    device: str = "cpu"

    def __post_init__(self) -> None:
        _require(self.configs >= 1, f"configs must be >= 1, got {self.configs}")
        _require(
            self.spins_per_config >= 1,
            f"spins_per_config must be >= 1, got {self.spins_per_config}",
        )
        _require(
            0 <= self.random_fraction <= 1,
            f"random_fraction must be in [0, 1], got {self.random_fraction}",
        )
        _require(self.replicas >= 1, f"replicas must be >= 1, got {self.replicas}")
        _require(self.batch >= 1, f"batch must be >= 1, got {self.batch}")
        _require(
            math.isfinite(self.t_first) and self.t_first >= self.relax.dt,
            f"t_first must be >= dt = {self.relax.dt}, got {self.t_first}",
        )
        _require(
            math.isfinite(self.t_max) and self.t_max >= self.t_first,
            f"t_max must be >= t_first = {self.t_first}, got {self.t_max}",
        )
        n_e = self.electrons.n_electrons(self.system.n)
        _require(
            0 < n_e < 2 * self.system.n,
            f"filling {self.electrons.filling} gives {n_e} electrons for N = {self.system.n} "
            f"atoms; need between 1 and {2 * self.system.n - 1}",
        )
        if self.n_relaxation:
            self.sample_steps()  # raises when t_max / dt leaves too few steps

    @property
    def n_random(self) -> int:
        return round(self.random_fraction * self.spins_per_config)

    @property
    def n_relaxation(self) -> int:
        return self.spins_per_config - self.n_random

    @property
    def samples_per_replica(self) -> int:
        return -(-self.n_relaxation // self.replicas)

    def sample_steps(self) -> np.ndarray:
        """Strictly increasing LLG step indices, ~log-spaced from t_first to t_max."""
        k = self.samples_per_replica
        first = round(self.t_first / self.relax.dt)
        last = round(self.t_max / self.relax.dt)
        _require(
            last - first + 1 >= k,
            f"t_max = {self.t_max} with dt = {self.relax.dt} leaves {last - first + 1} steps "
            f"after t_first = {self.t_first}, fewer than the {k} samples per replica",
        )
        steps = np.round(np.geomspace(first, last, k)).astype(np.int64)
        for i in range(1, k):  # keep distinct: push collisions one step later
            steps[i] = max(steps[i], steps[i - 1] + 1)
        for i in range(k - 2, -1, -1):  # and pull back anything past the last step
            steps[i] = min(steps[i], steps[i + 1] - 1)
        return steps

    @property
    def work_per_config(self) -> int:
        """Progress units per configuration: random frames plus LLG steps."""
        n_steps = int(self.sample_steps()[-1]) + 1 if self.n_relaxation else 0
        return self.n_random + n_steps

    def attributes(self) -> dict[str, Any]:
        """The generation settings as flat ``dataset_*`` file attributes."""
        out: dict[str, Any] = {
            "n": self.system.n,
            "box": self.system.side,
            "r_min": self.system.r_min,
            "seed": self.system.seed,
            "configs": self.configs,
            "spins_per_config": self.spins_per_config,
            "random_fraction": self.random_fraction,
            "replicas": self.replicas,
            "relax_alpha": self.relax.alpha,
            "relax_dt": self.relax.dt,
            "relax_temperature": self.relax.temperature,
            "relax_integrator": self.relax.integrator,
            "relax_gamma": self.relax.gamma,
            "noise_seed": self.relax.seed,
            "t_first": self.t_first,
            "t_max": self.t_max,
            "sdglass_version": __version__,
        }
        return {ATTR_PREFIX + k: v for k, v in out.items()}


def _configuration(
    cfg: DatasetConfig, c: int, on_progress: Callable[[int], None] | None = None
) -> Frames:
    """The ED-labelled frames of configuration c: random ones first, then relaxation samples."""
    system = generate_positions(cfg.system.replace(seed=cfg.system.seed + c))
    ed = EDSolver(system, cfg.electrons, cfg.device)
    gen = torch.Generator(device=cfg.device).manual_seed(cfg.relax.seed + c)
    spins: list[torch.Tensor] = []
    fields: list[torch.Tensor] = []
    energy: list[torch.Tensor] = []

    def keep(s: torch.Tensor, h: torch.Tensor, e: torch.Tensor) -> None:
        spins.append(s)
        fields.append(h)
        energy.append(e)

    for start in range(0, cfg.n_random, cfg.batch):
        s = random_spins(min(cfg.batch, cfg.n_random - start), system.n, gen, device=cfg.device)
        keep(s, *ed.fields(s))
        if on_progress is not None:
            on_progress(len(s))

    if cfg.n_relaxation:
        steps = cfg.sample_steps()
        wanted = set(steps.tolist())
        stepper = LLG(ed, cfg.relax.replace(seed=cfg.relax.seed + c), device=cfg.device)
        s = random_spins(cfg.replicas, system.n, gen, device=cfg.device)
        for step in range(int(steps[-1]) + 1):
            result = stepper.step(s)  # holds the ED fields and energy of s itself
            if step in wanted:
                keep(s, result.fields, result.energy)
            s = result.spins
            if on_progress is not None:
                on_progress(1)

    f = cfg.spins_per_config  # the last sample time may overshoot by < replicas frames
    spins_a = torch.cat(spins).cpu().numpy()[:f]
    # float64 round-off after many rotations: renormalise (far below the 1e-6 file tolerance)
    spins_a /= np.linalg.norm(spins_a, axis=-1, keepdims=True)
    return Frames(
        positions=np.repeat(system.positions[None], f, axis=0),
        box=np.full(f, system.box),
        spins=spins_a,
        fields=torch.cat(fields).cpu().numpy()[:f],
        energy=torch.cat(energy).cpu().numpy()[:f],
        source=np.array([RANDOM] * cfg.n_random + [RELAXATION] * cfg.n_relaxation, np.int8),
        attrs=electron_attrs(cfg.electrons),
    )


def concat_frames(parts: list[Frames]) -> Frames:
    """Frames of several files or configurations as one (labels and attrs from the first)."""
    first = parts[0]

    def cat(name: str) -> np.ndarray | None:
        values = [getattr(p, name) for p in parts]
        return None if any(v is None for v in values) else np.concatenate(values)

    return Frames(
        positions=cat("positions"),
        box=cat("box"),
        spins=cat("spins"),
        fields=cat("fields"),
        energy=cat("energy"),
        source=cat("source"),
        source_labels=first.source_labels,
        attrs=dict(first.attrs),
    )


def _saved_configuration(
    cfg: DatasetConfig,
    c: int,
    on_progress: Callable[[int], None] | None = None,
    checkpoints: Checkpoints | None = None,
) -> Frames:
    """Configuration c's frames: read back from checkpoints when saved there, else made
    (and saved when checkpoints are given)."""
    if checkpoints is None:
        return _configuration(cfg, c, on_progress)
    run = {**cfg.attributes(), "config": c}
    frames = checkpoints.load_frames(c, run)
    if frames is None:
        frames = _configuration(cfg, c, on_progress)
        checkpoints.save_frames(c, run, frames)
    elif on_progress is not None:
        on_progress(cfg.work_per_config)
    return frames


def generate_dataset(
    cfg: DatasetConfig,
    on_progress: Callable[[int], None] | None = None,
    cluster: ClusterSpec | None = None,
    checkpoints: Checkpoints | None = None,
) -> Frames:
    """ED-labelled random and relaxation frames of cfg.configs configurations (paper Sec. IV),
    in this process or one task per configuration on a Dask cluster (core.cluster). With
    checkpoints, each finished configuration is saved, and read back when run again.

    on_progress(k) reports k more work units done (total cfg.configs * cfg.work_per_config).
    """
    task = partial(_saved_configuration, cfg, checkpoints=checkpoints)
    if cluster is None or not cluster.distributed:
        return concat_frames(map_configurations(partial(task, on_progress=on_progress),
                                                cfg.configs))  # fmt: skip

    def done(c: int, frames: Frames) -> None:
        if on_progress is not None:
            on_progress(cfg.work_per_config)

    return concat_frames(map_configurations(task, cfg.configs, cluster, done))


def write_dataset(
    path: str | Path, frames: Frames, attributes: dict[str, Any], force: bool = False
) -> Path:
    """io.write_frames plus the ``dataset_*`` generation attributes, written atomically."""
    with atomic_output(path, force) as tmp:
        write_frames(tmp, frames)
        with h5py.File(tmp, "a") as f:
            for key, value in attributes.items():
                f.attrs[key] = value
    return Path(path)


def read_dataset_attrs(path: str | Path) -> dict[str, Any]:
    """The ``dataset_*`` attributes of a frames file (prefix stripped; {} when absent)."""
    with h5py.File(path, "r") as f:
        out = {}
        for key, value in f.attrs.items():
            if key.startswith(ATTR_PREFIX):
                value = value.decode() if isinstance(value, bytes) else value
                out[key[len(ATTR_PREFIX) :]] = value.item() if hasattr(value, "item") else value
    return out


def configuration_index(frames: Frames) -> np.ndarray:
    """Configuration id (F,) of every frame: frames with identical positions and box share one.

    Ids count from 0 in order of first appearance.
    """
    ids = np.empty(frames.n_frames, dtype=np.int64)
    seen: dict[bytes, int] = {}
    for k in range(frames.n_frames):
        key = frames.positions[k].tobytes() + frames.box[k].tobytes()
        ids[k] = seen.setdefault(key, len(seen))
    return ids

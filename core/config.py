"""Typed, validated parameter sets: one dataclass per concern (PHYSICS.md defaults).

Units (PHYSICS.md "Units"): length in ell, energy in t0, time in 1/(gamma t0),
temperature as k_B T in units of t0.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from core.errors import SdglassError

INTEGRATORS = ("sib", "depondt", "heun")


class ConfigError(SdglassError, ValueError):
    """A parameter outside its allowed range; the message names value and range."""


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _finite(name: str, value: float) -> None:
    _require(math.isfinite(value), f"{name} must be a finite number, got {value!r}")


class _Config:
    """Shared helpers: dict round trip and keyword replacement."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        unknown = set(data) - names
        _require(not unknown, f"unknown {cls.__name__} keys: {sorted(unknown)}")
        return cls(**data)

    def replace(self, **changes):
        return replace(self, **changes)  # type: ignore[type-var]


@dataclass(frozen=True)
class SystemConfig(_Config):
    """Amorphous atoms in a periodic cube (PHYSICS.md "Amorphous system").

    n: number of atoms; box: cube side L in ell (None: keep the paper's density,
    L = 5 (N/100)^(1/3)); r_min: minimum pair distance in ell; seed: RNG seed.
    """

    n: int = 100
    box: float | None = None
    r_min: float = 0.5
    seed: int = 0

    def __post_init__(self) -> None:
        _require(
            isinstance(self.n, int) and self.n >= 2, f"n must be an integer >= 2, got {self.n!r}"
        )
        _finite("r_min", float(self.r_min))
        _require(self.r_min >= 0, f"r_min must be >= 0, got {self.r_min}")
        if self.box is not None:
            _finite("box", float(self.box))
            _require(self.box > 0, f"box side must be > 0, got {self.box}")
            _require(
                self.box > 2 * self.r_min,
                f"box side {self.box} must exceed 2 r_min = {2 * self.r_min}",
            )
        _require(
            isinstance(self.seed, int) and self.seed >= 0, f"seed must be >= 0, got {self.seed}"
        )

    @property
    def side(self) -> float:
        """Box side L in ell (paper density when box is None)."""
        if self.box is not None:
            return float(self.box)
        return 5.0 * (self.n / 100) ** (1 / 3)

    @property
    def density(self) -> float:
        return self.n / self.side**3


@dataclass(frozen=True)
class ElectronConfig(_Config):
    """s-d Hamiltonian parameters (PHYSICS.md "Electrons", paper Eq. 17).

    t0: hopping amplitude; ell: hopping decay length; J: s-d coupling (t0);
    filling: electrons per spin-orbital (0.5 = half filling, N electrons);
    kT_e: electron temperature (t0, 0 = ground state); r_hop: hopping cutoff
    in ell (None = all minimum-image pairs).
    """

    t0: float = 1.0
    ell: float = 1.0
    J: float = 6.0
    filling: float = 0.5
    kT_e: float = 0.0
    r_hop: float | None = None

    def __post_init__(self) -> None:
        for name in ("t0", "ell", "J", "filling", "kT_e"):
            _finite(name, float(getattr(self, name)))
        _require(self.ell > 0, f"ell must be > 0, got {self.ell}")
        _require(0 < self.filling < 1, f"filling must be in (0, 1), got {self.filling}")
        _require(self.kT_e >= 0, f"kT_e must be >= 0, got {self.kT_e}")
        if self.r_hop is not None:
            _finite("r_hop", float(self.r_hop))
            _require(self.r_hop > 0, f"r_hop must be > 0, got {self.r_hop}")

    def n_electrons(self, n_atoms: int) -> int:
        """Electron count: filling x 2N spin-orbitals, rounded to an integer."""
        return round(self.filling * 2 * n_atoms)


@dataclass(frozen=True)
class LLGConfig(_Config):
    """Stochastic LLG parameters (PHYSICS.md "LLG dynamics", paper Eq. 3).

    temperature: k_B T of the bath (t0); alpha: Gilbert damping; dt: time step
    (1/(gamma t0)); gamma: gyromagnetic ratio; integrator: sib, depondt or heun;
    seed: seed of the thermal-noise stream.
    """

    temperature: float = 0.001
    alpha: float = 0.05
    dt: float = 0.02
    gamma: float = 1.0
    integrator: str = "sib"
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("temperature", "alpha", "dt", "gamma"):
            _finite(name, float(getattr(self, name)))
        _require(self.temperature >= 0, f"temperature must be >= 0, got {self.temperature}")
        _require(self.alpha >= 0, f"alpha must be >= 0, got {self.alpha}")
        _require(self.dt > 0, f"time step dt must be > 0, got {self.dt}")
        _require(self.gamma > 0, f"gamma must be > 0, got {self.gamma}")
        _require(
            self.integrator in INTEGRATORS,
            f"integrator must be one of {INTEGRATORS}, got {self.integrator!r}",
        )
        _require(
            isinstance(self.seed, int) and self.seed >= 0, f"seed must be >= 0, got {self.seed}"
        )

    def noise_std(self) -> float:
        """Thermal-field std per component: sqrt(2 alpha kT / (gamma^2 dt))."""
        return math.sqrt(2 * self.alpha * self.temperature / (self.gamma**2 * self.dt))

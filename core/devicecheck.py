"""Does a device compute the same physics as the CPU? (`sdglass check --device cuda`)

Every check runs one computation twice from the same input, on the device and
on the CPU, and compares the results against a tolerance:

* ED fields and energies (float64), by diagonalization and, at kT_e = 0, by
  canonical purification (the method `auto` picks on CUDA);
* ML fields and energies (float32 network, the shipped model by default);
* the app's dynamics (core.simulation.Simulation, the Qt-free model that the
  napari worker advances), ED and ML engines: K SIB steps at k_B T = 0 (the
  thermal noise is drawn on each device's own generator, so runs with noise
  differ in their random numbers), then the spins, their unit length, the
  energy per spin and the live C(r, t) the app plots; and a run switched from
  the CPU to the device halfway, as the app's Device menu does.

On a CPU-only machine `--device cpu` compares the CPU with itself (everything
agrees exactly, except purification against diagonalization: ~1e-13).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from core.config import ElectronConfig, LLGConfig, SystemConfig
from core.electrons import EDSolver
from core.model import EnergyModel, MLFieldProvider
from core.simulation import Simulation
from core.system import generate_positions, random_spins

#: Largest |delta H| (t0) of float64 ED between devices: round-off of a 2N x 2N eigh.
ED_TOLERANCE = 1e-9
#: Largest |delta H| (t0) of the float32 ML fields between devices: ~1e-6 of |H| ~ 6,
#: twenty times below the model's own H_perp error (~4e-4 t0).
ML_TOLERANCE = 2e-5
#: Largest |delta S| after the dynamics steps (float32 ML; float64 ED).
SPIN_TOLERANCE = {"ml": 1e-4, "ed": 1e-8}
#: Largest | |S| - 1 | on the device after the steps.
NORM_TOLERANCE = {"ml": 1e-5, "ed": 1e-12}


@dataclass(frozen=True)
class Check:
    """One comparison: the largest difference found, its tolerance and unit."""

    name: str
    difference: float
    tolerance: float
    unit: str = ""

    @property
    def passed(self) -> bool:
        return math.isfinite(self.difference) and self.difference <= self.tolerance


@dataclass(frozen=True)
class Timing:
    """Steps per second of the app's dynamics on the device and on the CPU."""

    name: str
    device_rate: float
    cpu_rate: float


def _largest(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> float:
    a = a.detach().cpu().double() if isinstance(a, torch.Tensor) else torch.as_tensor(a).double()
    b = b.detach().cpu().double() if isinstance(b, torch.Tensor) else torch.as_tensor(b).double()
    return float((a - b).abs().max())


def field_checks(
    device: str, model: EnergyModel, n: int = 100, replicas: int = 2, seed: int = 0
) -> list[Check]:
    """ED (eigh, purification) and ML fields and energies on the device against the CPU."""
    system = generate_positions(SystemConfig(n=n, seed=seed))
    spins = random_spins(replicas, n, torch.Generator().manual_seed(seed))  # same on every device
    electrons = ElectronConfig()
    reference = EDSolver(system, electrons, "cpu", "eigh").fields(spins)
    checks = []
    methods = ("eigh", "purification") if electrons.kT_e == 0 else ("eigh",)
    for method in methods:
        h, e = EDSolver(system, electrons, device, method).fields(spins.to(device))
        checks += [
            Check(
                f"ED fields H ({method}, float64)", _largest(h, reference[0]), ED_TOLERANCE, "t0"
            ),
            Check(
                f"ED energy / N ({method})", _largest(e / n, reference[1] / n), ED_TOLERANCE, "t0"
            ),
        ]
    h_cpu, e_cpu = MLFieldProvider(model, system, "cpu").fields(spins)
    h, e = MLFieldProvider(model, system, device).fields(spins.to(device))
    checks.append(Check("ML fields H (float32)", _largest(h, h_cpu), ML_TOLERANCE, "t0"))
    checks.append(Check("ML energy / N", _largest(e / n, e_cpu / n), ML_TOLERANCE, "t0"))
    return checks


def _simulation(engine: str, device: str, model: EnergyModel, n: int, replicas: int):
    return Simulation(
        SystemConfig(n=n), llg=LLGConfig(temperature=0.0), engine=engine,
        replicas=replicas, device=device, model=model,
    )  # fmt: skip


def _advanced(engine: str, device: str, model: EnergyModel, n: int, steps: int, replicas: int):
    sim = _simulation(engine, device, model, n, replicas)
    sim.advance(1)  # warm-up (CUDA kernels load on first use); the clock restarts below
    sim.reset_spins()
    start = time.perf_counter()
    sim.advance(steps)
    return sim.snapshot(), steps / (time.perf_counter() - start)


def _switched(engine: str, device: str, model: EnergyModel, n: int, steps: int, replicas: int):
    """Half the steps on the CPU, then the app's Device menu: the run moves to the device
    (Simulation.set_device) and goes on there."""
    sim = _simulation(engine, "cpu", model, n, replicas)
    sim.advance(steps // 2)
    sim.set_device(device)
    sim.advance(steps - steps // 2)
    return sim.snapshot()


def dynamics_checks(
    device: str, model: EnergyModel, n: int = 100, steps: int = 20, replicas: int = 2
) -> tuple[list[Check], list[Timing]]:
    """The app's Simulation, ED and ML engines, `steps` SIB steps at T = 0 on both devices."""
    checks, timings = [], []
    for engine in ("ed", "ml"):
        ref, cpu_rate = _advanced(engine, "cpu", model, n, steps, replicas)
        got, rate = _advanced(engine, device, model, n, steps, replicas)
        label = f"app dynamics, {engine.upper()}, {steps} steps:"
        norm = float(np.abs(np.linalg.norm(got.spins, axis=-1) - 1).max())
        checks += [
            Check(f"{label} spins S", _largest(got.spins, ref.spins), SPIN_TOLERANCE[engine]),
            Check(f"{label} | |S| - 1 |", norm, NORM_TOLERANCE[engine]),
            Check(
                f"{label} energy / N",
                abs(got.energy_per_spin - ref.energy_per_spin),
                SPIN_TOLERANCE[engine],
                "t0",
            ),
            Check(f"{label} C(r, t)", _largest(got.corr, ref.corr), SPIN_TOLERANCE[engine]),
            Check(
                f"{label} spins S, switched from cpu midway",
                _largest(_switched(engine, device, model, n, steps, replicas).spins, ref.spins),
                SPIN_TOLERANCE[engine],
            ),
        ]
        timings.append(
            Timing(f"app dynamics, {engine.upper()}, N = {n}, B = {replicas}", rate, cpu_rate)
        )
    return checks, timings


def check_device(
    device: str,
    model: EnergyModel,
    n: int = 100,
    steps: int = 20,
    on_stage: Callable[[str], None] | None = None,
) -> tuple[list[Check], list[Timing]]:
    """Every check of this module on `device` against the CPU."""
    if on_stage:
        on_stage("fields")
    checks = field_checks(device, model, n)
    if on_stage:
        on_stage("dynamics")
    more, timings = dynamics_checks(device, model, n, steps)
    return checks + more, timings


def format_report(device: str, checks: list[Check], timings: list[Timing]) -> str:
    """A plain-text table: each check with its difference, tolerance and verdict."""
    width = max(len(c.name) for c in checks)
    lines = [f"{'check':<{width}}  {'largest |difference|':>22}  {'tolerance':>10}  result"]
    for c in checks:
        diff = f"{c.difference:.3g} {c.unit}".rstrip()
        lines.append(
            f"{c.name:<{width}}  {diff:>22}  {c.tolerance:>10.0e}  {'ok' if c.passed else 'FAIL'}"
        )
    lines.append("")
    lines += [
        f"{t.name}: {t.device_rate:.1f} steps/s on {device}, {t.cpu_rate:.1f} on cpu"
        for t in timings
    ]
    failed = sum(not c.passed for c in checks)
    lines.append(
        f"{device}: all {len(checks)} checks agree with the CPU"
        if not failed
        else f"{device}: {failed} of {len(checks)} checks FAILED"
    )
    return "\n".join(lines)

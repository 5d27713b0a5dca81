"""core.llg: the identities of PHYSICS.md "LLG dynamics" for every integrator."""

from __future__ import annotations

import math

import pytest
import torch

from core.config import INTEGRATORS, ConfigError, LLGConfig, SystemConfig
from core.electrons import EDSolver
from core.errors import StateError
from core.fields import ConstantField, FieldProvider
from core.llg import LLG, StepResult, depondt_step, heun_step, sib_step
from core.system import generate_positions

STEPS = {"sib": sib_step, "depondt": depondt_step, "heun": heun_step}


class Heisenberg:
    """E = -1/2 sum_ij J_ij S_i.S_j - b . sum_i S_i, so H = J S + b: a nonlinear test field."""

    def __init__(self, coupling: torch.Tensor, b: tuple[float, float, float]) -> None:
        self.coupling = coupling
        self.b = torch.tensor(b, dtype=torch.float64)

    def fields(self, spins: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        exchange = self.coupling.to(spins.dtype) @ spins
        h = exchange + self.b.to(spins.dtype)
        energy = -(spins * (0.5 * exchange + self.b.to(spins.dtype))).sum(dim=(-2, -1))
        return h, energy


def unit_spins(batch: int, n: int, seed: int) -> torch.Tensor:
    s = torch.randn(batch, n, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return s / s.norm(dim=-1, keepdim=True)


@pytest.fixture(scope="module")
def heisenberg() -> Heisenberg:
    j = 0.5 * torch.randn(16, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    j = 0.5 * (j + j.T)
    j.fill_diagonal_(0)
    return Heisenberg(j, (0.3, -0.2, 1.0))


@pytest.fixture(scope="module")
def ed_provider() -> FieldProvider:
    return EDSolver(generate_positions(SystemConfig(n=12, seed=3)))


def energy_trace(
    provider: FieldProvider, spins: torch.Tensor, config: LLGConfig, n_steps: int
) -> torch.Tensor:
    """Energies (n_steps + 1, B) along a run: those each step reports, then the final state's."""
    trace: list[torch.Tensor] = []
    final = LLG(provider, config).run(spins, n_steps, lambda i, r: trace.append(r.energy))
    trace.append(provider.fields(final)[1])
    return torch.stack(trace)


def max_relative_drift(provider, spins, config, n_steps) -> float:
    """PHYSICS.md: alpha = 0, T = 0 conserves E; returns max_n |E_n - E_0| / |E_0|."""
    e = energy_trace(provider, spins, config, n_steps)
    return float(((e - e[0]) / e[0]).abs().max())


def max_energy_rise(provider, spins, config, n_steps) -> float:
    """PHYSICS.md: alpha > 0, T = 0 never raises E; returns max_n (E_{n+1} - E_n)."""
    return float(energy_trace(provider, spins, config, n_steps).diff(dim=0).max())


@pytest.mark.parametrize("integrator", INTEGRATORS)
def test_norm_is_preserved_over_1e4_thermal_steps(heisenberg, integrator):
    config = LLGConfig(temperature=0.5, alpha=0.1, dt=0.02, integrator=integrator, seed=2)
    worst = [0.0]

    def track(i: int, result: StepResult) -> None:
        worst[0] = max(worst[0], float((result.spins.norm(dim=-1) - 1).abs().max()))

    LLG(heisenberg, config).run(unit_spins(2, 16, seed=0), 10_000, track)
    assert worst[0] < 1e-12  # measured: 2e-14 (sib), 2e-14 (depondt), 2e-16 (heun)


@pytest.mark.parametrize("integrator", INTEGRATORS)
def test_single_spin_in_constant_field_follows_analytic_solution(integrator):
    """phi(t) = phi(0) - gamma B t, S_z(t) = tanh(alpha B t + artanh S_z(0)), second order in dt."""
    gamma, alpha, b, t_end = 1.5, 0.1, 1.0, 10.0
    z0 = torch.tensor([-0.9, -0.3, 0.0, 0.5, 0.95], dtype=torch.float64)
    phi0 = torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0], dtype=torch.float64)

    def exact(t: float) -> torch.Tensor:
        z = torch.tanh(alpha * b * t + torch.atanh(z0))
        r, phi = (1 - z**2).sqrt(), phi0 - gamma * b * t
        return torch.stack([r * torch.cos(phi), r * torch.sin(phi), z], dim=-1)[None]

    errors = []
    for dt in (0.005, 0.0025):
        config = LLGConfig(temperature=0, alpha=alpha, gamma=gamma, dt=dt, integrator=integrator)
        spins = LLG(ConstantField((0, 0, b)), config).run(exact(0.0), round(t_end / dt))
        errors.append(float((spins - exact(t_end)).abs().max()))
    assert errors[0] < 1e-4  # measured 1.2e-5 to 4e-5 at gamma B t = 15
    assert errors[0] / errors[1] > 3.5  # global error ~ dt^2


@pytest.mark.parametrize("integrator", INTEGRATORS)
def test_step_reports_energy_and_fields_of_the_starting_state(heisenberg, integrator):
    spins = unit_spins(2, 16, seed=4)
    result = STEPS[integrator](heisenberg, spins, 0.02, alpha=0.1)
    h, e = heisenberg.fields(spins)
    assert torch.equal(result.fields, h) and torch.equal(result.energy, e)
    assert result.spins.shape == spins.shape and not torch.equal(result.spins, spins)


@pytest.mark.parametrize("integrator", INTEGRATORS)
def test_undamped_heisenberg_energy_is_conserved_to_second_order(heisenberg, integrator):
    spins = unit_spins(2, 16, seed=5)
    drifts = [
        max_relative_drift(
            heisenberg, spins, LLGConfig(temperature=0, alpha=0, dt=dt, integrator=integrator), n
        )
        for dt, n in ((0.01, 500), (0.005, 1000))
    ]
    assert drifts[0] < 1e-3  # measured over t = 5: 1.7e-5 (sib), 2.3e-4 (depondt, heun)
    assert drifts[0] / drifts[1] > 3.5  # measured 8 (sib), 4.2 (depondt, heun)


@pytest.mark.parametrize("integrator", INTEGRATORS)
def test_damped_heisenberg_energy_never_rises(heisenberg, integrator):
    config = LLGConfig(temperature=0, alpha=0.1, dt=0.01, integrator=integrator)
    assert max_energy_rise(heisenberg, unit_spins(2, 16, seed=6), config, 2000) <= 1e-12


@pytest.mark.parametrize("integrator", INTEGRATORS)
def test_undamped_ed_energy_is_conserved(ed_provider, integrator):
    config = LLGConfig(temperature=0, alpha=0, dt=0.02, integrator=integrator)
    drift = max_relative_drift(ed_provider, unit_spins(1, 12, seed=7), config, 1000)
    # measured ~3e-12; SIB/Depondt without dropping the part of H along S drift ~1e-6
    assert drift < 1e-9


@pytest.mark.parametrize("integrator", INTEGRATORS)
def test_damped_ed_energy_never_rises(ed_provider, integrator):
    config = LLGConfig(temperature=0, alpha=0.05, dt=0.02, integrator=integrator)
    assert max_energy_rise(ed_provider, unit_spins(1, 12, seed=8), config, 500) <= 1e-10


def test_thermal_single_spins_follow_langevin_function():
    """<S.B/|B|> = coth(B/kT) - kT/B for independent spins in a field B (default integrator)."""
    b, kt, alpha, dt, n = 1.0, 1.0, 1.0, 0.05, 20_000
    config = LLGConfig(temperature=kt, alpha=alpha, dt=dt, seed=11)
    assert config.integrator == "sib"
    stepper = LLG(ConstantField((0, 0, b)), config)
    spins = torch.zeros(1, n, 3, dtype=torch.float64)
    spins[..., 2] = 1
    # relaxation times 1/(alpha B) = 1 and 1/(2 alpha kT) = 0.5: equilibrate for t = 5,
    # then take 20 samples 1 apart; spins are independent, so the standard error comes
    # from the spread of the per-spin time averages
    spins = stepper.run(spins, 100)
    total = torch.zeros(n, dtype=torch.float64)
    n_samples = 20
    for _ in range(n_samples):
        spins = stepper.run(spins, 20)
        total += spins[0, :, 2]
    per_spin = total / n_samples
    mean, stderr = float(per_spin.mean()), float(per_spin.std() / math.sqrt(n))
    exact = 1 / math.tanh(b / kt) - kt / b
    # stderr ~ 9e-4; a noise variance off by 10% shifts the mean by 0.025 (27 stderr);
    # the dt bias of sib at dt = 0.05 is zero within 3e-4 (measured with 2e5 spins)
    assert abs(mean - exact) < 3 * stderr


def test_same_seed_same_trajectory_other_seed_differs(heisenberg):
    spins = unit_spins(2, 16, seed=9)

    def trajectory(seed: int) -> torch.Tensor:
        stepper = LLG(heisenberg, LLGConfig(temperature=0.3, alpha=0.1, seed=seed))
        states: list[torch.Tensor] = []
        stepper.run(spins, 20, lambda i, r: states.append(r.spins))
        return torch.stack(states)

    assert torch.equal(trajectory(3), trajectory(3))
    assert not torch.allclose(trajectory(3), trajectory(4))


def test_set_config_changes_temperature_at_the_next_step(heisenberg):
    spins = unit_spins(2, 16, seed=10)
    cold = LLGConfig(temperature=0, alpha=0.1)
    stepper = LLG(heisenberg, cold)

    def noiseless(s: torch.Tensor) -> torch.Tensor:
        return sib_step(heisenberg, s, cold.dt, alpha=cold.alpha).spins

    s1 = stepper.step(spins).spins
    assert torch.equal(s1, noiseless(spins))
    stepper.set_config(cold.replace(temperature=1.0))
    s2 = stepper.step(s1).spins
    assert not torch.allclose(s2, noiseless(s1))
    stepper.config = cold
    assert torch.equal(stepper.step(s2).spins, noiseless(s2))


def test_new_seed_restarts_the_noise_stream(heisenberg):
    spins = unit_spins(1, 16, seed=12)
    warm = LLGConfig(temperature=0.3, alpha=0.1, seed=5)
    reseeded = LLG(heisenberg, warm.replace(seed=0))
    reseeded.run(spins, 3)
    reseeded.set_config(warm)
    assert torch.equal(reseeded.run(spins, 5), LLG(heisenberg, warm).run(spins, 5))


def test_step_follows_input_dtype():
    spins = unit_spins(1, 4, seed=13).to(torch.float32)
    result = LLG(ConstantField((0, 0, 1)), LLGConfig(temperature=0.1)).step(spins)
    assert result.spins.dtype == torch.float32 and result.energy.dtype == torch.float32


@pytest.mark.parametrize(
    "spins",
    [
        torch.zeros(4, 3),
        torch.zeros(1, 4, 2),
        torch.zeros(0, 4, 3),
        torch.full((1, 4, 3), math.nan),
        2 * unit_spins(1, 4, seed=14),
        torch.ones(1, 4, 3, dtype=torch.int64),
    ],
    ids=["no-batch", "two-components", "empty", "nan", "non-unit", "integer"],
)
def test_bad_spins_raise_state_error(spins):
    stepper = LLG(ConstantField((0, 0, 1)), LLGConfig())
    with pytest.raises(StateError):
        stepper.step(spins)
    with pytest.raises(StateError):
        stepper.run(spins, 1)


def test_nan_in_one_spin_raises_state_error():
    spins = unit_spins(2, 5, seed=15)
    spins[1, 3, 0] = math.nan
    with pytest.raises(StateError, match="NaN"):
        LLG(ConstantField((0, 0, 1)), LLGConfig()).step(spins)


def test_run_rejects_negative_step_count():
    with pytest.raises(ConfigError):
        LLG(ConstantField((0, 0, 1)), LLGConfig()).run(unit_spins(1, 2, seed=16), -1)


def test_noise_blocks_draw_what_each_block_alone_would_draw():
    # two independent blocks of spins in a local field: packed with blocks [3, 5]
    # and seed s, they move exactly as block 0 alone with seed s and block 1 with s + 1
    field = ConstantField((0.2, 0.0, 1.0))
    warm = LLGConfig(temperature=0.5, alpha=0.1, seed=21)
    a, b = unit_spins(2, 3, seed=17), unit_spins(2, 5, seed=18)
    packed = LLG(field, warm, blocks=[3, 5]).run(torch.cat([a, b], 1), 4)
    alone_a = LLG(field, warm).run(a, 4)
    alone_b = LLG(field, warm.replace(seed=22)).run(b, 4)
    assert torch.equal(packed, torch.cat([alone_a, alone_b], 1))


def test_noise_blocks_must_cover_the_atoms():
    stepper = LLG(ConstantField((0, 0, 1)), LLGConfig(temperature=0.1), blocks=[2, 2])
    with pytest.raises(StateError, match="add up to 4"):
        stepper.step(unit_spins(1, 5, seed=19))
    with pytest.raises(ConfigError, match="noise blocks"):
        LLG(ConstantField((0, 0, 1)), LLGConfig(), blocks=[])


def test_continued_on_the_same_kind_of_device_keeps_the_noise_streams(heisenberg):
    spins = unit_spins(2, 16, seed=23)
    warm = LLGConfig(temperature=0.3, alpha=0.1, seed=31)
    whole = LLG(heisenberg, warm, blocks=[6, 10]).run(spins, 6)
    first = LLG(heisenberg, warm, blocks=[6, 10])
    half = first.run(spins, 3)
    moved = first.continued_on(heisenberg, "cpu:0")
    assert moved.blocks == (6, 10) and moved.device == torch.device("cpu", 0)
    assert torch.equal(moved.run(half, 3), whole)


class OtherKindGenerator:
    """Stands in for a CUDA generator (a CPU build of torch cannot make one)."""

    def __init__(self, device) -> None:
        self.device = torch.device(device)
        self.seeds: list[int] = []

    def manual_seed(self, seed: int):
        self.seeds.append(seed)
        return self


def test_continued_on_another_kind_of_device_seeds_each_block_from_its_stream(
    heisenberg, monkeypatch
):
    # a CPU generator's state does not fit a CUDA one: each block's new stream is seeded by
    # the next draw of its old one, so the switch is reproducible and the blocks stay apart
    spins = unit_spins(1, 16, seed=24)
    warm = LLGConfig(temperature=0.3, alpha=0.1, seed=32)

    def after_three_steps() -> LLG:
        stepper = LLG(heisenberg, warm, blocks=[6, 10])
        stepper.run(spins, 3)
        return stepper

    _, generators = after_three_steps()._snapshot(torch.device("cpu"))
    expected = [int(torch.randint(2**62, (1,), generator=g)) for g in generators]
    stepper = after_three_steps()
    with monkeypatch.context() as m:
        m.setattr(torch, "Generator", OtherKindGenerator)
        moved = stepper.continued_on(heisenberg, "cuda")
        _, fresh = moved._snapshot(torch.device("cuda"))
    assert moved.device == torch.device("cuda") and moved.blocks == (6, 10)
    # the new generators were seeded from the config first, then from the old streams
    assert [g.seeds for g in fresh] == [[32, expected[0]], [33, expected[1]]]
    assert expected[0] != expected[1]

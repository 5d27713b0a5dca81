import math

import numpy as np
import pytest
import torch

from core.config import ElectronConfig, SystemConfig
from core.electrons import EDSolver, density_of_states, fermi_occupations
from core.errors import StateError
from core.system import AtomicSystem, generate_positions, random_spins


@pytest.fixture(scope="module")
def small_system():
    return generate_positions(SystemConfig(n=8, seed=4))


def finite_difference_gradient(energy_fn, spins, h=1e-5):
    """Central differences of a batched energy function w.r.t. every spin component."""
    n = spins.shape[1]
    eye = torch.eye(3 * n, dtype=torch.float64).reshape(3 * n, n, 3)
    batch = torch.cat([spins + h * eye, spins - h * eye])
    e = energy_fn(batch)
    return ((e[: 3 * n] - e[3 * n :]) / (2 * h)).reshape(n, 3)


@pytest.mark.parametrize("kT_e", [0.0, 0.3])
def test_hellmann_feynman_fields(small_system, kT_e):
    ed = EDSolver(small_system, ElectronConfig(kT_e=kT_e))
    spins = random_spins(1, small_system.n, torch.Generator().manual_seed(1))
    res = ed.solve(spins)
    if kT_e == 0:
        gap = res.eigenvalues[0, ed.n_electrons] - res.eigenvalues[0, ed.n_electrons - 1]
        assert gap > 0.5  # gapped: E is smooth in the spins
    grad = finite_difference_gradient(lambda s: ed.solve(s).free_energy, spins)
    torch.testing.assert_close(res.fields[0], -grad, atol=1e-6, rtol=0)


def test_grand_potential_derivative_at_fixed_mu(small_system):
    kT = 0.3
    ed = EDSolver(small_system, ElectronConfig(kT_e=kT))
    spins = random_spins(1, small_system.n, torch.Generator().manual_seed(2))
    res = ed.solve(spins)
    mu = res.mu[0]

    def omega(s):
        eps = torch.linalg.eigvalsh(ed.hamiltonian(s))
        return -kT * torch.nn.functional.softplus((mu - eps) / kT).sum(-1)

    torch.testing.assert_close(
        res.fields[0], -finite_difference_gradient(omega, spins), atol=1e-6, rtol=0
    )


def test_global_spin_rotation_rotates_fields_and_keeps_energy(small_system):
    ed = EDSolver(small_system)
    spins = random_spins(2, small_system.n, torch.Generator().manual_seed(3))
    q, _ = torch.linalg.qr(
        torch.randn(3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    )
    rot = q * torch.sign(torch.det(q))  # proper rotation
    a, b = ed.solve(spins), ed.solve(spins @ rot.T)
    torch.testing.assert_close(b.energy, a.energy, atol=1e-10, rtol=0)
    torch.testing.assert_close(b.fields, a.fields @ rot.T, atol=1e-10, rtol=0)


def test_zero_coupling_spectrum_is_spin_degenerate(small_system):
    ed = EDSolver(small_system, ElectronConfig(J=0.0))
    eps = ed.solve(random_spins(1, small_system.n)).eigenvalues[0]
    torch.testing.assert_close(eps[0::2], eps[1::2], atol=1e-12, rtol=0)


@pytest.mark.parametrize("theta", [0.0, 1.1, math.pi])
def test_two_atom_hamiltonian_and_spectrum(theta):
    r, j = 1.3, 6.0
    system = AtomicSystem(np.array([[1.0, 1.0, 1.0], [1.0 + r, 1.0, 1.0]]), 10.0)
    ed = EDSolver(system, ElectronConfig(J=j))
    s1 = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    s2 = torch.tensor([math.sin(theta), 0.0, math.cos(theta)], dtype=torch.float64)
    spins = torch.stack([s1, s2])[None]
    t = math.exp(-r)
    st, ct = math.sin(theta), math.cos(theta)
    # hand-built 4x4: basis (1 up, 1 down, 2 up, 2 down)
    expected = torch.tensor(
        [[-j, 0, t, 0], [0, j, 0, t], [t, 0, -j * ct, -j * st], [0, t, -j * st, j * ct]],
        dtype=torch.complex128,
    )
    torch.testing.assert_close(ed.hamiltonian(spins)[0], expected)
    c = math.cos(theta / 2)
    plus, minus = math.sqrt(j * j + t * t + 2 * j * t * c), math.sqrt(j * j + t * t - 2 * j * t * c)
    analytic = torch.tensor(sorted([-plus, -minus, minus, plus]), dtype=torch.float64)
    torch.testing.assert_close(ed.solve(spins).eigenvalues[0], analytic, atol=1e-12, rtol=0)


def test_batched_equals_one_by_one(small_system):
    ed = EDSolver(small_system, ElectronConfig(kT_e=0.1))
    spins = random_spins(3, small_system.n, torch.Generator().manual_seed(5))
    batch = ed.solve(spins)
    for b in range(3):
        single = ed.solve(spins[b : b + 1])
        torch.testing.assert_close(single.fields[0], batch.fields[b])
        torch.testing.assert_close(single.energy[0], batch.energy[b])


def test_fermi_occupations_count_electrons():
    eps = torch.linspace(-3, 3, 40, dtype=torch.float64)[None].repeat(2, 1)
    for kT in (0.0, 0.05, 1.0):
        f, _ = fermi_occupations(eps, 17, kT)
        torch.testing.assert_close(f.sum(-1), torch.full((2,), 17.0, dtype=torch.float64))
        assert ((f >= 0) & (f <= 1)).all()


def test_paper_scales(small_system):
    """PHYSICS.md "Scales": |H| ~ J-ish and nearly parallel to S at J = 6, half filling."""
    system = generate_positions(SystemConfig(n=100, seed=1))
    res = EDSolver(system).solve(random_spins(2, 100, torch.Generator().manual_seed(0)))
    assert -6.3 < (res.energy / 100).mean() < -5.9
    assert 5.5 < res.fields.norm(dim=-1).mean() < 6.3


def test_bad_spin_shapes_and_nan(small_system):
    ed = EDSolver(small_system)
    with pytest.raises(StateError, match="shape"):
        ed.solve(torch.zeros(1, small_system.n + 1, 3))
    bad = random_spins(1, small_system.n)
    bad[0, 0, 0] = float("nan")
    with pytest.raises(StateError, match="NaN"):
        ed.fields(bad)


def test_density_of_states_normalisation_and_fermi_level():
    systems = [generate_positions(SystemConfig(n=50, seed=s)) for s in range(3)]
    dos = density_of_states(systems, ElectronConfig(J=0.0), bins=30)
    assert np.sum(dos.rho * np.diff(dos.edges)) == pytest.approx(2.0)
    assert dos.edges[0] < dos.fermi_level < dos.edges[-1]
    assert dos.n_configs == 3


def test_density_of_states_resolves_the_bulk_and_keeps_the_tail():
    from core.electrons import TAIL_BINS

    systems = [generate_positions(SystemConfig(n=50, seed=s)) for s in range(3)]
    plain = density_of_states(systems, ElectronConfig(J=0.0), bins=30)
    bulk = density_of_states(systems, ElectronConfig(J=0.0), bins=30, bulk_share=0.9)
    assert len(bulk.edges) == 30 + TAIL_BINS + 1
    assert (bulk.edges[0], bulk.edges[-1]) == (plain.edges[0], plain.edges[-1])  # whole band
    assert np.sum(bulk.rho * np.diff(bulk.edges)) == pytest.approx(2.0)  # every state counted
    split = bulk.edges[30]
    below = np.sum((bulk.rho * np.diff(bulk.edges))[:30])
    assert below == pytest.approx(0.9 * 2.0, abs=2.0 / (2 * 150))  # 90 % of 2 N levels
    assert np.diff(bulk.edges[:31]).max() < np.diff(plain.edges).min()  # finer where states are
    assert bulk.fermi_level == plain.fermi_level and split > bulk.fermi_level

"""Canonical purification: the kT_e = 0 projector, and ED fields from it equal to `eigh`'s."""

import pytest
import torch

from core.config import ConfigError, ElectronConfig, SystemConfig
from core.electrons import EDSolver, resolve_method
from core.purification import canonical_purification, gershgorin_bounds
from core.system import generate_positions, random_spins


@pytest.fixture(scope="module")
def system():
    return generate_positions(SystemConfig(n=40, seed=2))


def spins(b, n, seed=0):
    return random_spins(b, n, torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("J", [6.0, 1.0])
def test_the_projector_is_idempotent_holds_n_e_commutes_with_h_and_equals_eigh(system, J):
    ed = EDSolver(system, ElectronConfig(J=J), method="eigh")
    h = ed.hamiltonian(spins(3, system.n))
    out = canonical_purification(h, ed.n_electrons)
    p = out.density
    assert out.converged.all() and 5 <= out.steps <= 40
    torch.testing.assert_close(p @ p, p, atol=1e-12, rtol=0)
    torch.testing.assert_close(p, p.conj().transpose(-1, -2), atol=1e-13, rtol=0)
    trace = torch.diagonal(p, dim1=-2, dim2=-1).sum(-1).real
    torch.testing.assert_close(
        trace, torch.full((3,), float(ed.n_electrons), dtype=torch.float64), atol=1e-10, rtol=0
    )
    torch.testing.assert_close(p @ h, h @ p, atol=1e-11, rtol=0)
    u = torch.linalg.eigh(h)[1][..., : ed.n_electrons]
    torch.testing.assert_close(p, u @ u.conj().transpose(-1, -2), atol=1e-12, rtol=0)


@pytest.mark.parametrize("J", [6.0, 1.0])
def test_purified_fields_and_energy_equal_the_diagonalized_ones(system, J):
    s = spins(4, system.n, seed=1)
    exact = EDSolver(system, ElectronConfig(J=J), method="eigh")
    purified = EDSolver(system, ElectronConfig(J=J), method="purification")
    assert (exact.method, purified.method) == ("eigh", "purification")
    h_exact, e_exact = exact.fields(s)
    h, e = purified.fields(s)
    assert purified.purification_steps > 0
    torch.testing.assert_close(h, h_exact, atol=1e-11, rtol=0)
    torch.testing.assert_close(e, e_exact, atol=1e-10, rtol=0)


def test_without_a_gap_it_does_not_converge_and_the_solver_diagonalizes_instead():
    # J = 0, odd N: N electrons half-fill a spin-degenerate level, no gap at the Fermi level
    system = generate_positions(SystemConfig(n=9, seed=3))
    config = ElectronConfig(J=0.0)
    solver = EDSolver(system, config, method="purification")
    h = solver.hamiltonian(spins(2, 9))
    out = canonical_purification(h, solver.n_electrons, max_steps=60)
    assert not out.converged.any() and out.steps == 60
    fields, energy = solver.fields(spins(2, 9))
    exact = EDSolver(system, config, method="eigh").fields(spins(2, 9))
    torch.testing.assert_close(energy, exact[1], atol=1e-12, rtol=0)
    torch.testing.assert_close(fields, exact[0], atol=1e-12, rtol=0)  # zero at J = 0


def test_gershgorin_bounds_contain_the_spectrum(system):
    h = EDSolver(system).hamiltonian(spins(2, system.n))
    lo, hi = gershgorin_bounds(h)
    eps = torch.linalg.eigvalsh(h)
    assert (lo <= eps[:, 0]).all() and (eps[:, -1] <= hi).all()


def test_method_choice_and_its_errors():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_method("auto", 0.0, cpu) == "eigh"
    assert resolve_method("auto", 0.0, cuda) == "purification"
    assert resolve_method("auto", 0.1, cuda) == "eigh"  # a Fermi-Dirac smeared density
    assert resolve_method("eigh", 0.0, cuda) == "eigh"
    assert resolve_method("purification", 0.0, cpu) == "purification"
    with pytest.raises(ConfigError, match=r"kT_e = 0\.1 needs method 'eigh'"):
        resolve_method("purification", 0.1, cpu)
    with pytest.raises(ConfigError, match="ED method must be one of"):
        resolve_method("lanczos", 0.0, cpu)

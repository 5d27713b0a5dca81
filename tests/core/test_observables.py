import numpy as np
import pytest
import torch

from core.config import SystemConfig
from core.observables import (
    CorrelationAccumulator,
    bin_edges,
    correlation_length,
    correlation_sums,
    fit_droplet,
    magnetisation,
    pair_bins,
)
from core.system import generate_positions, random_spins


@pytest.fixture(scope="module")
def system():
    return generate_positions(SystemConfig(n=400, seed=11))


@pytest.fixture(scope="module")
def bins(system):
    return pair_bins(system, bin_edges(0.5, system.box / 2, 0.1))


def measure(spins, bins):
    acc = CorrelationAccumulator(1, bins.edges)
    acc.add(0, spins, bins)
    return acc.correlation()[0]


def test_bins_cover_r_min_to_half_box(system, bins):
    assert bins.edges[0] == 0.5 and bins.edges[-1] == pytest.approx(system.box / 2)
    assert bins.counts.sum() == len(bins.pairs)
    assert (bins.counts > 0).all()


def test_all_parallel_single_replica_is_fully_correlated(bins):
    spins = torch.zeros(1, 400, 3, dtype=torch.float64)
    spins[..., 2] = 1
    np.testing.assert_allclose(measure(spins, bins), 1.0)


def test_all_parallel_in_every_replica_is_disconnected(bins):
    spins = torch.zeros(4, 400, 3, dtype=torch.float64)
    spins[..., 0] = 1
    np.testing.assert_allclose(measure(spins, bins), 0.0, atol=1e-12)


def test_random_spins_are_uncorrelated(bins):
    c = measure(random_spins(8, 400, torch.Generator().manual_seed(0)), bins)
    # each bin averages >= ~100 pairs x 8 replicas of a variance-1/3 product
    noise = np.sqrt(1 / 3 / (bins.counts * 8))
    assert np.all(np.abs(c) < 5 * noise)


def test_spiral_pattern_matches_brute_force_pair_average(system, bins):
    """S_i = (cos k.x_i, sin k.x_i, 0): S_i.S_j = cos(k (x_i - x_j)), checked pair by pair."""
    k = 2 * np.pi * 2 / system.box
    pos = system.positions
    phase = k * pos[:, 0]
    spins = torch.tensor(np.stack([np.cos(phase), np.sin(phase), 0 * phase], -1))[None]
    c = measure(spins, bins)
    # independent brute force over all pairs with the minimum image
    d = pos[:, None, :] - pos[None, :, :]
    d -= system.box * np.round(d / system.box)
    r = np.linalg.norm(d, axis=-1)
    iu = np.triu_indices(len(pos), 1)
    dots = np.cos(k * (pos[:, None, 0] - pos[None, :, 0]))[iu]
    idx = np.digitize(r[iu], bins.edges) - 1
    ok = (idx >= 0) & (idx < len(bins.counts))
    expected = np.bincount(idx[ok], dots[ok], len(bins.counts)) / np.bincount(
        idx[ok], None, len(bins.counts)
    )
    np.testing.assert_allclose(c, expected, atol=1e-12)
    # and the isotropic average sin(kr)/(kr) holds roughly
    kr = k * bins.centres
    assert np.abs(c - np.sin(kr) / kr).max() < 0.15


def test_replica_estimator_is_unbiased():
    """B replicas of random global rotations of one fixed pattern: connected C equals the pattern's."""
    system = generate_positions(SystemConfig(n=200, seed=3))
    b = pair_bins(system, bin_edges(0.5, system.box / 2, 0.2))
    pattern = random_spins(1, 200, torch.Generator().manual_seed(1))[0]
    single = measure(pattern[None], b)
    gen = torch.Generator().manual_seed(2)
    rots = torch.linalg.qr(torch.randn(400, 3, 3, dtype=torch.float64, generator=gen))[0]
    replicas = torch.einsum("bxy,ny->bnx", rots, pattern)
    np.testing.assert_allclose(measure(replicas, b), single, atol=0.02)


def test_accumulator_merge_equals_joint_accumulation(bins):
    gen = torch.Generator().manual_seed(4)
    s1, s2 = random_spins(2, 400, gen), random_spins(2, 400, gen)
    joint = CorrelationAccumulator(2, bins.edges)
    joint.add(0, s1, bins)
    joint.add(1, s2, bins)
    a, b = CorrelationAccumulator(2, bins.edges), CorrelationAccumulator(2, bins.edges)
    a.add(0, s1, bins)
    b.add(1, s2, bins)
    a.merge(b)
    np.testing.assert_array_equal(a.sums, joint.sums)
    np.testing.assert_array_equal(a.correlation(), joint.correlation())
    np.testing.assert_allclose(correlation_sums(s1, bins), joint.sums[0])


def test_correlation_length_exponential_and_constant():
    edges = np.linspace(0.0, 60.0, 6001)
    r = 0.5 * (edges[1:] + edges[:-1])
    assert correlation_length(edges, np.exp(-r / 1.7)) == pytest.approx(1.7, rel=1e-4)
    assert correlation_length(edges, -np.exp(-r / 0.9)) == pytest.approx(0.9, rel=1e-4)
    box = np.where((r > 2) & (r < 4), 0.3, 0.0)
    assert correlation_length(edges, box) == pytest.approx(3.0, rel=1e-6)
    assert np.isnan(correlation_length(edges, np.zeros_like(r)))


def test_correlation_length_with_a_noise_floor_ignores_the_noise():
    # a signal at r < 1 and a noise of +-0.01 out to r = 10: the noise's even spread moves
    # xi out towards 5 ell; taking 0.01 off every |C| leaves the signal's own xi
    edges = np.linspace(0.0, 10.0, 101)
    r = 0.5 * (edges[1:] + edges[:-1])
    signal = np.where(r < 1, -0.4, 0.0)
    noise = 0.01 * np.where(np.arange(len(r)) % 2 == 0, 1.0, -1.0) * (r > 1)
    assert correlation_length(edges, signal) == pytest.approx(0.5)
    assert correlation_length(edges, signal + noise) > 1.4
    assert correlation_length(edges, signal + noise, floor=0.01) == pytest.approx(0.5)
    assert np.isnan(correlation_length(edges, noise, floor=0.01))  # nothing above the floor
    # (T, R) at once, the floor applied at every time
    both = correlation_length(edges, np.stack([signal + noise, 2 * signal + noise]), floor=0.01)
    np.testing.assert_allclose(both, [0.5, 0.5])


def test_magnetisation():
    up = torch.zeros(2, 10, 3, dtype=torch.float64)
    up[..., 2] = 1
    torch.testing.assert_close(magnetisation(up), torch.ones(2, dtype=torch.float64))
    up[:, :5, 2] = -1
    torch.testing.assert_close(magnetisation(up), torch.zeros(2, dtype=torch.float64))


def test_droplet_fit_recovers_psi():
    rng = np.random.default_rng(0)
    t = np.logspace(0.5, 3, 40)
    xi = 0.4 * np.log(t) ** (1 / 1.02) * (1 + 0.01 * rng.standard_normal(t.size))
    fit = fit_droplet(t, xi)
    assert abs(fit.psi - 1.02) < 3 * fit.psi_err
    assert 0 < fit.psi_err < 0.05
    np.testing.assert_allclose(fit.curve(t), 0.4 * np.log(t) ** (1 / 1.02), rtol=0.05)
    with pytest.raises(ValueError, match="at least 3 points"):
        fit_droplet(t[:2], xi[:2])

import numpy as np
import pytest
import torch

from core.config import ConfigError, SystemConfig
from core.errors import PackingError
from core.system import (
    AtomicSystem,
    distance_matrix,
    generate_positions,
    nearest_distance,
    pairs_within,
    random_spins,
)


def brute_distances(pos, box):
    d = pos[:, None, :] - pos[None, :, :]
    d -= box * np.round(d / box)
    return np.linalg.norm(d, axis=-1)


def test_paper_defaults():
    cfg = SystemConfig()
    assert (cfg.n, cfg.side, cfg.r_min) == (100, 5.0, 0.5)
    assert cfg.density == pytest.approx(0.8)
    assert SystemConfig(n=800).side == pytest.approx(10.0)


def test_positions_respect_r_min_by_minimum_image():
    cfg = SystemConfig(n=300, seed=3)
    system = generate_positions(cfg)
    assert system.positions.shape == (300, 3)
    assert ((system.positions >= 0) & (system.positions < system.box)).all()
    d = brute_distances(system.positions, system.box)
    np.fill_diagonal(d, np.inf)
    assert d.min() > cfg.r_min


def test_generation_reproducible_from_seed():
    a = generate_positions(SystemConfig(n=50, seed=7)).positions
    b = generate_positions(SystemConfig(n=50, seed=7)).positions
    c = generate_positions(SystemConfig(n=50, seed=8)).positions
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_impossible_density_fails_clearly():
    with pytest.raises(PackingError, match="cannot pack N=1000"):
        generate_positions(SystemConfig(n=1000, box=5.0, r_min=0.5))


def test_dense_but_below_jamming_reports_failure_instead_of_looping():
    with pytest.raises(PackingError, match="could not place"):
        generate_positions(SystemConfig(n=600, box=5.0, r_min=0.5), max_rounds=20)


@pytest.mark.parametrize(
    "kwargs", [dict(n=1), dict(box=-1.0), dict(r_min=-0.1), dict(box=0.8, r_min=0.5), dict(seed=-1)]
)
def test_invalid_system_config(kwargs):
    with pytest.raises(ConfigError):
        SystemConfig(**kwargs)


def test_distance_matrix_and_pairs_match_brute_force():
    system = generate_positions(SystemConfig(n=60, seed=2))
    d = brute_distances(system.positions, system.box)
    np.testing.assert_allclose(distance_matrix(system).numpy(), d, atol=1e-12)
    pairs, dist = pairs_within(system, 2.0)
    iu = np.triu_indices(60, 1)
    expected = {(i, j) for i, j in zip(*iu, strict=True) if d[i, j] <= 2.0}
    assert {tuple(p) for p in pairs} == expected
    np.testing.assert_allclose(dist, d[pairs[:, 0], pairs[:, 1]], atol=1e-12)


def test_minimum_image_across_the_boundary():
    system = AtomicSystem(np.array([[0.1, 0.1, 0.1], [4.9, 4.9, 4.9]]), 5.0)
    assert distance_matrix(system)[0, 1].item() == pytest.approx(np.sqrt(3) * 0.2)


def test_random_spins_are_unit_and_isotropic():
    s = random_spins(4, 5000, torch.Generator().manual_seed(0))
    assert s.shape == (4, 5000, 3)
    torch.testing.assert_close(s.norm(dim=-1), torch.ones(4, 5000, dtype=torch.float64))
    assert s.mean(dim=(0, 1)).abs().max() < 0.03


def test_nearest_distance_is_the_smallest_minimum_image_distance():
    system = generate_positions(SystemConfig(n=60, seed=4))
    d = distance_matrix(system).numpy()
    expected = d[~np.eye(len(d), dtype=bool)].min()
    assert nearest_distance(system) == pytest.approx(expected, rel=1e-12)
    # a pair across the periodic boundary: 0.1 apart through the face, not L - 0.1
    pair = AtomicSystem(np.array([[0.05, 1.0, 1.0], [4.95, 1.0, 1.0]]), 5.0)
    assert nearest_distance(pair) == pytest.approx(0.1)

import numpy as np
import pytest

from core.config import ConfigError, ElectronConfig, LLGConfig, SystemConfig
from core.io import read_trajectory, write_trajectory
from core.quench import (
    QuenchConfig,
    merge_results,
    run_group,
    run_quench,
    to_trajectory,
)


@pytest.fixture(scope="module")
def tiny():
    return QuenchConfig(
        system=SystemConfig(n=20, seed=5),
        llg=LLGConfig(dt=0.02, seed=3),
        configs=2,
        replicas=2,
        t_max=0.3,
        n_records=6,
        bin_width=0.2,
    )


@pytest.fixture(scope="module")
def tiny_result(tiny):
    return run_quench(tiny)


def test_record_steps_span_the_run(tiny):
    steps = tiny.record_steps()
    assert steps[0] == 0 and steps[-1] == tiny.n_steps == 15
    assert np.all(np.diff(steps) > 0)


def test_quench_observables_are_sane(tiny, tiny_result):
    r = tiny_result
    assert r.corr.shape == (len(r.times), len(tiny.edges()) - 1)
    assert np.all(np.abs(r.corr) <= 2)
    assert np.all((r.magnetisation >= 0) & (r.magnetisation <= 1))
    assert np.all((-6.5 < r.energy_per_spin) & (r.energy_per_spin < -5.5))
    assert np.all(np.isfinite(r.xi))
    assert r.positions.shape == (2, 20, 3)


def test_configurations_merge_in_any_order(tiny, tiny_result):
    parts = [run_group(tiny, c) for c in (1, 0)]
    merged = merge_results(tiny, parts)
    np.testing.assert_allclose(merged.corr, tiny_result.corr, atol=1e-14)
    np.testing.assert_allclose(merged.energy_per_spin, tiny_result.energy_per_spin, rtol=1e-14)


def test_quench_is_reproducible_from_seeds(tiny, tiny_result):
    again = run_group(tiny, 0)
    first = run_group(tiny, 0)
    np.testing.assert_array_equal(again.energy_sum, first.energy_sum)
    other = run_group(tiny.__class__(**{**tiny.__dict__, "llg": LLGConfig(seed=4)}), 0)
    assert not np.array_equal(other.energy_sum, first.energy_sum)


def test_trajectory_round_trip_with_snapshots(tmp_path, tiny):
    qc = QuenchConfig(**{**tiny.__dict__, "snapshots": True, "configs": 1})
    traj = to_trajectory(run_quench(qc))
    write_trajectory(tmp_path / "t.h5", traj)
    back = read_trajectory(tmp_path / "t.h5")
    np.testing.assert_array_equal(back.corr, traj.corr)
    assert back.snapshots.shape == (len(traj.times), 1, 2, 20, 3)
    norms = np.linalg.norm(back.snapshots, axis=-1)
    np.testing.assert_allclose(norms, 1, atol=1e-6)
    assert back.attrs["engine"] == "ed" and back.attrs["J"] == 6.0


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(configs=0),
        dict(replicas=0),
        dict(t_max=0.001),
        dict(engine="magic"),
        dict(bin_width=0),
        dict(pack=0),
        dict(ed_method="lanczos"),
        dict(ed_method="purification", electrons=ElectronConfig(kT_e=0.1)),
    ],
)
def test_invalid_quench_config(kwargs):
    with pytest.raises(ConfigError):
        QuenchConfig(**kwargs)


def test_ml_engine_quench_runs_the_same_pipeline(tiny, tiny_model_file):
    qc = QuenchConfig(**{**tiny.__dict__, "engine": "ml", "model_path": str(tiny_model_file)})
    result = run_quench(qc)
    assert result.corr.shape == tiny_result_shape(tiny)
    assert np.all(np.isfinite(result.energy_per_spin))
    assert to_trajectory(result).attrs["model"] == str(tiny_model_file)


def tiny_result_shape(qc):
    return (len(qc.record_steps()), len(qc.edges()) - 1)


def test_ml_engine_refuses_other_electrons_and_warns_about_another_density(tiny, tiny_model_file):
    ml = {**tiny.__dict__, "engine": "ml", "model_path": str(tiny_model_file), "configs": 1}
    for other in (ElectronConfig(J=1.0), ElectronConfig(filling=0.4), ElectronConfig(kT_e=0.1)):
        with pytest.raises(ConfigError, match=r"model was trained for .* the ML engine simulates"):
            run_quench(QuenchConfig(**{**ml, "electrons": other}))
    sparser = SystemConfig(n=tiny.system.n, box=tiny.system.side * 1.1)
    with pytest.warns(UserWarning, match="density = 0.8 but is used with density = 0.6"):
        run_quench(QuenchConfig(**{**ml, "system": sparser}))


def test_packed_configurations_give_the_unpacked_quench(tiny, tiny_model_file):
    # 3 configurations in groups (2, 1) against one by one: same seeds, same numbers up to
    # the round-off of the batched float32 model
    ml = {**tiny.__dict__, "engine": "ml", "model_path": str(tiny_model_file), "configs": 3}
    ml["snapshots"] = True
    one = run_quench(QuenchConfig(**ml))
    packed = run_quench(QuenchConfig(**{**ml, "pack": 2}))
    np.testing.assert_allclose(packed.snapshots, one.snapshots, atol=1e-5)
    np.testing.assert_allclose(packed.corr, one.corr, atol=1e-5)
    np.testing.assert_allclose(packed.energy_per_spin, one.energy_per_spin, rtol=1e-6)
    np.testing.assert_allclose(packed.magnetisation, one.magnetisation, atol=1e-6)
    np.testing.assert_array_equal(packed.positions, one.positions)
    assert packed.snapshots.shape == (len(packed.times), 3, 2, 20, 3)
    assert not np.allclose(packed.snapshots[-1, 0], packed.snapshots[-1, 1])  # own seeds


@pytest.mark.parametrize("method", ["eigh", "purification"])
def test_packed_ed_gives_the_unpacked_quench(tiny, method):
    # 3 configurations in groups (2, 1): each keeps its Hamiltonian, seeds and noise stream
    ed = {**tiny.__dict__, "configs": 3, "snapshots": True, "ed_method": method}
    one = run_quench(QuenchConfig(**ed))
    packed = run_quench(QuenchConfig(**{**ed, "pack": 2}))
    np.testing.assert_allclose(packed.snapshots, one.snapshots, rtol=0, atol=1e-12)
    np.testing.assert_allclose(packed.corr, one.corr, rtol=0, atol=1e-12)
    np.testing.assert_allclose(packed.energy_per_spin, one.energy_per_spin, rtol=1e-12)
    np.testing.assert_array_equal(packed.positions, one.positions)


def test_packed_ed_refuses_mixed_sizes_and_wrong_shapes():
    from core.electrons import PackedEDSolver
    from core.errors import StateError
    from core.system import generate_positions, random_spins

    small, large = (generate_positions(SystemConfig(n=n, seed=1)) for n in (8, 10))
    with pytest.raises(ValueError, match="one size"):
        PackedEDSolver([small, large])
    with pytest.raises(StateError, match=r"\(B, 16, 3\) for 2 packed configurations"):
        PackedEDSolver([small, small]).fields(random_spins(1, 8))


def test_ml_engine_needs_a_model():
    with pytest.raises(ConfigError, match="model"):
        QuenchConfig(engine="ml")


def test_a_purified_ed_quench_follows_the_diagonalized_one(tiny, tiny_result):
    from core.quench import run_identity

    qc = QuenchConfig(**{**tiny.__dict__, "ed_method": "purification"})
    assert tiny.attributes()["ed_method"] == "eigh"  # auto on the CPU
    assert qc.attributes()["ed_method"] == "purification"
    assert run_identity(qc, 0) == run_identity(tiny, 0)  # a resume may switch methods
    purified = to_trajectory(run_quench(qc))
    exact = to_trajectory(tiny_result)
    np.testing.assert_allclose(purified.corr, exact.corr, rtol=0, atol=1e-9)
    np.testing.assert_allclose(purified.energy_per_spin, exact.energy_per_spin, rtol=0, atol=1e-10)

import signal

import h5py
import numpy as np
import pytest
import torch

import core.quench
from core.checkpoint import Checkpoints, deferred_interrupt
from core.config import ConfigError, LLGConfig, SystemConfig
from core.errors import FileFormatError
from core.quench import QuenchConfig, run_quench


@pytest.fixture(scope="module")
def qc():
    """Two ED configurations of 15 steps each, snapshots on: every saved array is checked."""
    return QuenchConfig(
        system=SystemConfig(n=20, seed=5), llg=LLGConfig(dt=0.02, seed=3), configs=2,
        replicas=2, t_max=0.3, n_records=6, bin_width=0.2, snapshots=True,
    )  # fmt: skip


@pytest.fixture(scope="module")
def reference(qc):
    return run_quench(qc)


def assert_same_numbers(a, b):
    np.testing.assert_array_equal(a.correlations.sums, b.correlations.sums)
    np.testing.assert_array_equal(a.correlations.counts, b.correlations.counts)
    np.testing.assert_array_equal(a.energy_per_spin, b.energy_per_spin)
    np.testing.assert_array_equal(a.magnetisation, b.magnetisation)
    np.testing.assert_array_equal(a.snapshots, b.snapshots)
    np.testing.assert_array_equal(a.positions, b.positions)


class StopAt:
    """on_steps callback: counts configuration-steps and acts once the count reaches `at`."""

    def __init__(self, at, action):
        self.at, self.action, self.done = at, action, 0

    def __call__(self, k):
        self.done += k
        if self.done >= self.at and self.action is not None:
            action, self.action = self.action, None
            action()


def test_ctrl_c_saves_and_the_rerun_gives_the_uninterrupted_numbers(tmp_path, qc, reference):
    ck = Checkpoints(tmp_path / "ck", every=1e9)  # no timed saves: only the interrupt's
    # Ctrl-C in group 1 after 5 of its steps: the step finishes, progress is saved
    stop = StopAt(qc.n_steps + 5, lambda: signal.raise_signal(signal.SIGINT))
    with pytest.raises(KeyboardInterrupt):
        run_quench(qc, on_steps=stop, checkpoints=ck)
    with h5py.File(ck.path(0)) as f:
        assert bool(f.attrs["done"]) and f.attrs["step"] == qc.n_steps
    with h5py.File(ck.path(1)) as f:
        assert not f.attrs["done"] and f.attrs["step"] == 5
    count = StopAt(0, None)
    resumed = run_quench(qc, on_steps=count, checkpoints=ck)
    assert count.done == qc.configs * qc.n_steps  # progress bars count the saved steps too
    assert resumed.resumed_steps == qc.n_steps + 5 and reference.resumed_steps == 0
    assert_same_numbers(resumed, reference)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_timed_saves_survive_a_crash(tmp_path, qc, reference):
    ck = Checkpoints(tmp_path / "ck", every=0)  # save after every step

    def crash():
        raise RuntimeError("worker lost")

    with pytest.raises(RuntimeError, match="worker lost"):
        run_quench(qc, on_steps=StopAt(7, crash), checkpoints=ck)
    with h5py.File(ck.path(0)) as f:
        assert f.attrs["step"] == 6  # the crash came before step 7's save
    assert not ck.path(1).exists()
    assert_same_numbers(run_quench(qc, checkpoints=ck), reference)


def test_finished_groups_are_read_back_not_recomputed(tmp_path, qc, reference, monkeypatch):
    ck = Checkpoints(tmp_path / "ck")
    assert_same_numbers(run_quench(qc, checkpoints=ck), reference)

    def no_fields(*args):
        raise AssertionError("a finished group was computed again")

    monkeypatch.setattr(core.quench, "field_provider", no_fields)
    assert_same_numbers(run_quench(qc, checkpoints=ck), reference)


@pytest.mark.parametrize("every", [0, 1e9])  # a save after every step; saves at the end only
def test_nan_from_an_unchecked_step_stops_the_quench_and_is_never_saved(
    tmp_path, qc, monkeypatch, every
):
    from dataclasses import replace

    from core import llg
    from core.errors import StateError

    step, calls = llg.LLG._step, []

    def nan_at_the_third_step(self, spins):
        result = step(self, spins)
        calls.append(1)
        return replace(result, spins=result.spins * np.nan) if len(calls) == 3 else result

    monkeypatch.setattr(llg.LLG, "_step", nan_at_the_third_step)
    ck = Checkpoints(tmp_path / "ck", every=every)
    with pytest.raises(StateError, match="NaN"):
        run_quench(qc, checkpoints=ck)
    assert len(calls) < qc.n_steps  # stopped within group 0
    if ck.path(0).exists():
        with h5py.File(ck.path(0)) as f:
            assert f.attrs["step"] == 2 and np.isfinite(f["spins"][()]).all()
    assert ck.path(0).exists() == (every == 0)


def test_the_trajectory_names_every_ed_method_that_advanced_the_quench(tmp_path, qc):
    from dataclasses import replace

    from core.quench import to_trajectory

    ck = Checkpoints(tmp_path / "ck", every=1e9)
    with pytest.raises(KeyboardInterrupt):  # diagonalized, stopped in group 1
        run_quench(qc, on_steps=StopAt(qc.n_steps + 5, lambda: signal.raise_signal(signal.SIGINT)),
                   checkpoints=ck)  # fmt: skip
    with h5py.File(ck.path(1), "r") as f:
        assert f.attrs["ed_methods"] == '["eigh"]'
    purified = replace(qc, ed_method="purification")  # resumed, as on a GPU
    assert to_trajectory(run_quench(purified, checkpoints=ck)).attrs["ed_method"] == (
        "eigh, purification"
    )
    with h5py.File(ck.path(1), "r") as f:
        assert f.attrs["ed_methods"] == '["eigh", "purification"]'
    # read back on another device: the methods that ran, not the one it would use
    assert to_trajectory(run_quench(qc, checkpoints=ck)).attrs["ed_method"] == (
        "eigh, purification"
    )
    for group in (0, 1):  # progress saved before checkpoints recorded the method
        with h5py.File(ck.path(group), "a") as f:
            del f.attrs["ed_methods"]
    assert to_trajectory(run_quench(qc, checkpoints=ck)).attrs["ed_method"] == "not recorded"
    assert to_trajectory(run_quench(qc)).attrs["ed_method"] == "eigh"


def test_packed_ml_quench_resumes_bit_for_bit(tmp_path, qc, tiny_model_file):
    ml = QuenchConfig(
        **{**qc.__dict__, "engine": "ml", "model_path": str(tiny_model_file), "pack": 2}
    )
    whole = run_quench(ml)
    ck = Checkpoints(tmp_path / "ck", every=1e9)
    with pytest.raises(KeyboardInterrupt):  # 2 configurations per step: stop after step 4
        run_quench(ml, on_steps=StopAt(8, lambda: signal.raise_signal(signal.SIGINT)),
                   checkpoints=ck)  # fmt: skip
    with h5py.File(ck.path(0)) as f:
        assert f.attrs["step"] == 4 and len(f["noise"]) == 2  # a noise stream per configuration
    assert_same_numbers(run_quench(ml, checkpoints=ck), whole)


def test_checkpoint_of_another_quench_is_refused(tmp_path, qc):
    ck = Checkpoints(tmp_path / "ck")
    run_quench(qc, checkpoints=ck)
    longer = QuenchConfig(**{**qc.__dict__, "t_max": 0.4})
    with pytest.raises(FileFormatError, match=r"group-00000\.h5 was saved by a run with"):
        run_quench(longer, checkpoints=ck)
    with pytest.raises(FileFormatError, match=r"t_max 0\.4 here, 0\.3 there"):
        run_quench(longer, checkpoints=ck)


def test_damaged_checkpoint_is_named(tmp_path, qc):
    ck = Checkpoints(tmp_path / "ck")
    ck.directory.mkdir()
    ck.path(0).write_bytes(b"not hdf5")
    with pytest.raises(FileFormatError, match=r"group-00000\.h5 is not an HDF5 file"):
        run_quench(qc, checkpoints=ck)
    run_quench(qc, checkpoints=Checkpoints(tmp_path / "ok"))
    with h5py.File(tmp_path / "ok" / "group-00001.h5", "a") as f:
        del f["corr_sums"]
    with pytest.raises(FileFormatError, match="missing datasets: corr_sums"):
        run_quench(qc, checkpoints=Checkpoints(tmp_path / "ok"))


def test_invalid_checkpoint_settings(tmp_path):
    with pytest.raises(ConfigError, match="interval must be >= 0"):
        Checkpoints(tmp_path, every=-1)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="is not a directory"):
        Checkpoints(tmp_path / "file")


@pytest.mark.parametrize("first", [signal.SIGINT, signal.SIGTERM])
def test_second_ctrl_c_or_sigterm_stops_at_once(first):
    with deferred_interrupt() as interrupt:
        signal.raise_signal(first)
        assert interrupt.requested
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    with pytest.raises(KeyboardInterrupt), deferred_interrupt(enabled=False):
        signal.raise_signal(signal.SIGINT)


class NoField:
    """A field provider without fields: steps move spins by their noise alone."""

    def fields(self, spins):
        return torch.zeros_like(spins), torch.zeros(spins.shape[0], dtype=spins.dtype)


def test_noise_streams_continue_from_a_saved_state():
    from core.llg import LLG
    from core.system import random_spins

    config, spins = (
        LLGConfig(temperature=0.5, seed=9),
        random_spins(2, 6, torch.Generator().manual_seed(0)),
    )
    first = LLG(NoField(), config, blocks=[3, 3])
    spins = first.step(spins).spins
    second = LLG(NoField(), config, blocks=[3, 3])
    second.set_noise_state(first.noise_state())
    torch.testing.assert_close(second.step(spins).spins, first.step(spins).spins, rtol=0, atol=0)
    with pytest.raises(Exception, match="2 noise generator states for 1 noise blocks"):
        LLG(NoField(), config).set_noise_state(first.noise_state())


def test_a_noise_state_from_another_kind_of_device_seeds_a_fresh_stream():
    from core.errors import StateError
    from core.llg import LLG
    from core.system import random_spins

    config, spins = (
        LLGConfig(temperature=0.5, seed=9),
        random_spins(2, 6, torch.Generator().manual_seed(0)),
    )
    cuda_state = torch.arange(16, dtype=torch.uint8)  # CUDA's Philox: seed and offset
    a, b = LLG(NoField(), config), LLG(NoField(), config)
    with pytest.warns(UserWarning, match=r"another kind of device \(not cpu\): the noise goes on"):
        a.set_noise_state([cuda_state])
        b.set_noise_state([cuda_state.clone()])
    moved = a.step(spins).spins
    torch.testing.assert_close(b.step(spins).spins, moved, rtol=0, atol=0)  # deterministic
    fresh = LLG(NoField(), config).step(spins).spins
    assert (moved - fresh).abs().max() > 1e-3  # not the seed's stream started over
    with pytest.raises(StateError, match="state of 7 bytes is neither a CPU nor a CUDA"):
        a.set_noise_state([torch.zeros(7, dtype=torch.uint8)])


def test_a_quench_saved_on_a_gpu_continues_on_a_cpu(tmp_path, qc, reference):
    ck = Checkpoints(tmp_path / "ck", every=1e9)
    with pytest.raises(KeyboardInterrupt):  # group 0 stops after 8 of its 15 steps
        run_quench(qc, on_steps=StopAt(8, lambda: signal.raise_signal(signal.SIGINT)),
                   checkpoints=ck)  # fmt: skip
    with h5py.File(ck.path(0), "a") as f:  # the noise state as a CUDA generator saves it
        del f["noise/0"]
        f["noise/0"] = np.arange(16, dtype=np.uint8)
    with pytest.warns(UserWarning, match="comes from another kind of device"):
        resumed = run_quench(qc, checkpoints=ck)
    # records at steps 0, 3, 6 (and the whole group 1) are the uninterrupted run's; later
    # ones follow other noise
    np.testing.assert_array_equal(resumed.snapshots[:3], reference.snapshots[:3])
    np.testing.assert_array_equal(resumed.snapshots[:, 1], reference.snapshots[:, 1])
    assert np.abs(resumed.snapshots[3:, 0] - reference.snapshots[3:, 0]).max() > 1e-6
    norms = np.linalg.norm(resumed.snapshots, axis=-1)
    np.testing.assert_allclose(norms, 1.0, atol=1e-6)


def test_saved_progress_reads_as_the_run_so_far(tmp_path, qc, reference):
    from dataclasses import replace

    from core.quench import saved_trajectory, to_trajectory

    ck = Checkpoints(tmp_path / "ck", every=1e9)
    with pytest.raises(FileFormatError, match="holds no saved quench progress"):
        saved_trajectory(ck)
    with pytest.raises(KeyboardInterrupt):  # group 1 stops after 5 of its 15 steps
        run_quench(qc, on_steps=StopAt(qc.n_steps + 5, lambda: signal.raise_signal(signal.SIGINT)),
                   checkpoints=ck)  # fmt: skip
    with pytest.raises(
        FileFormatError, match=r"holds no saved quench progress .*; its folders ck do"
    ):
        saved_trajectory(Checkpoints(tmp_path))  # a reproduction's checkpoints/, say
    so_far, whole = saved_trajectory(ck), to_trajectory(reference)
    # records at steps 0, 1, 2, 4 of both configurations: the uninterrupted run's
    np.testing.assert_array_equal(so_far.times, whole.times[:4])
    for name in ("energy_per_spin", "magnetisation", "corr", "xi"):
        np.testing.assert_array_equal(getattr(so_far, name), getattr(whole, name)[:4])
    np.testing.assert_array_equal(so_far.positions, whole.positions)
    assert so_far.attrs["partial"] == (
        "saved progress: 2 of 2 configurations, records to t = 0.08 of 0.3 "
        "(20 of 30 configuration-steps)"
    )
    ck.path(1).unlink()  # only the first configuration saved: it alone, to its end
    alone = to_trajectory(run_quench(replace(qc, configs=1)))
    np.testing.assert_array_equal(saved_trajectory(ck).corr, alone.corr)


def test_a_checkpoints_run_record_gives_back_its_quench(tiny_model_file):
    from dataclasses import replace

    from core.config import ElectronConfig
    from core.quench import config_of_run, run_identity

    qc = QuenchConfig(
        system=SystemConfig(n=30, box=4.0, r_min=0.6, seed=11),
        electrons=ElectronConfig(J=2.0, kT_e=0.05, r_hop=1.9),
        llg=LLGConfig(temperature=0.01, alpha=0.2, dt=0.01, integrator="heun", seed=23),
        configs=4, replicas=3, t_max=0.5, n_records=7, bin_width=0.15, pack=2,
    )  # fmt: skip
    for group in (0, 1):
        assert config_of_run(run_identity(qc, group)) == qc
    ml = replace(qc, engine="ml", model_path=str(tiny_model_file))
    assert config_of_run(run_identity(ml, 0)) == ml

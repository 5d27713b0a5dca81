from dataclasses import replace

import numpy as np
import pytest
import torch

from core.config import ConfigError, ElectronConfig, LLGConfig, SystemConfig
from core.dataset import (
    RANDOM,
    RELAXATION,
    DatasetConfig,
    configuration_index,
    generate_dataset,
    read_dataset_attrs,
    write_dataset,
)
from core.electrons import EDSolver
from core.io import Frames, read_frames
from core.system import AtomicSystem

TINY = DatasetConfig(
    system=SystemConfig(n=20, seed=3),
    configs=2,
    spins_per_config=10,
    random_fraction=0.3,
    replicas=3,
    relax=LLGConfig(temperature=0.001, alpha=1.0, dt=0.5, seed=5),
    t_first=0.5,
    t_max=4.0,
)


@pytest.fixture(scope="module")
def frames():
    return generate_dataset(TINY)


def test_frames_are_ed_consistent(frames):
    for c in range(TINY.configs):
        rows = slice(c * 10, (c + 1) * 10)
        system = AtomicSystem(frames.positions[rows][0], float(frames.box[rows][0]))
        h, e = EDSolver(system, ElectronConfig()).fields(torch.as_tensor(frames.spins[rows]))
        np.testing.assert_allclose(frames.fields[rows], h.numpy(), atol=1e-10)
        np.testing.assert_allclose(frames.energy[rows], e.numpy(), rtol=0, atol=1e-9)


def test_sources_recorded_random_first_then_relaxation(frames):
    assert frames.n_frames == TINY.configs * TINY.spins_per_config
    per_config = [RANDOM] * 3 + [RELAXATION] * 7
    np.testing.assert_array_equal(frames.source, per_config * TINY.configs)
    assert frames.source_labels == ("random", "relaxation")
    # relaxation lowers the energy: later samples sit below random states on average
    e = frames.energy.reshape(TINY.configs, -1)
    assert (e[:, 3:].mean(1) < e[:, :3].mean(1)).all()


def test_relaxation_samples_are_distinct_states(frames):
    spins = frames.spins[3:10].reshape(7, -1)
    assert np.linalg.matrix_rank(spins) == 7


def test_generation_is_reproducible(frames):
    again = generate_dataset(replace(TINY, configs=1))
    np.testing.assert_array_equal(again.spins, frames.spins[:10])


def test_configuration_index_groups_frames_by_positions(frames):
    ids = configuration_index(frames)
    np.testing.assert_array_equal(ids, [0] * 10 + [1] * 10)
    order = np.random.default_rng(0).permutation(frames.n_frames)
    shuffled = configuration_index(
        Frames(positions=frames.positions[order], box=frames.box[order], spins=frames.spins[order])
    )
    # same grouping, ids renumbered by first appearance
    for c in range(2):
        assert len(set(shuffled[ids[order] == c])) == 1


def test_written_file_holds_electron_and_generation_attributes(frames, tmp_path):
    path = write_dataset(tmp_path / "d.h5", frames, TINY.attributes())
    back = read_frames(path)
    np.testing.assert_array_equal(back.source, frames.source)
    assert back.attrs["J"] == 6.0 and back.attrs["filling"] == 0.5
    attrs = read_dataset_attrs(path)
    assert attrs["relax_alpha"] == 1.0 and attrs["relax_dt"] == 0.5
    assert attrs["configs"] == 2 and attrs["relax_integrator"] == "sib"


def test_sample_steps_strictly_increasing():
    steps = DatasetConfig(spins_per_config=100, replicas=2, t_max=30.0).sample_steps()
    assert len(steps) == 40 and (np.diff(steps) >= 1).all()
    assert steps[0] == 2 and steps[-1] == 60


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"t_max": 2.0, "spins_per_config": 200}, "fewer than"),
        ({"random_fraction": 1.5}, "random_fraction"),
        ({"electrons": ElectronConfig(filling=0.01)}, "electrons for N = 20"),
    ],
)
def test_bad_settings_fail_early(changes, match):
    with pytest.raises(ConfigError, match=match):
        replace(TINY, **changes)


def test_checkpointed_dataset_saves_each_configuration_and_reads_it_back(
    frames, tmp_path, monkeypatch
):
    import core.dataset
    from core.checkpoint import Checkpoints
    from core.errors import FileFormatError

    ck = Checkpoints(tmp_path / "ck")
    calls = []
    made = core.dataset._configuration

    def second_interrupted(cfg, c, on_progress=None):  # Ctrl-C in configuration 1
        calls.append(c)
        if c == 1:
            raise KeyboardInterrupt
        return made(cfg, c, on_progress)

    monkeypatch.setattr(core.dataset, "_configuration", second_interrupted)
    with pytest.raises(KeyboardInterrupt):
        generate_dataset(TINY, checkpoints=ck)
    assert [p.name for p in ck.directory.iterdir()] == ["config-00000.h5"]
    monkeypatch.setattr(core.dataset, "_configuration", made)
    units = []
    resumed = generate_dataset(TINY, on_progress=units.append, checkpoints=ck)
    assert sum(units) == TINY.configs * TINY.work_per_config
    for name in ("positions", "spins", "fields", "energy", "source"):
        np.testing.assert_array_equal(getattr(resumed, name), getattr(frames, name), err_msg=name)
    other = replace(TINY, spins_per_config=12)
    with pytest.raises(FileFormatError, match="spins_per_config 12 here, 10 there"):
        generate_dataset(other, checkpoints=ck)

import numpy as np
import pytest
import torch

from core.config import LLGConfig, SystemConfig
from core.dataset import DatasetConfig, generate_dataset
from core.descriptor import DescriptorSpec
from core.errors import FileFormatError, StateError
from core.evaluation import METRIC_KEYS, evaluate
from core.io import Frames
from core.model import Architecture, EnergyModel, MLFieldProvider
from core.system import AtomicSystem

N = 24
SPEC = DescriptorSpec(
    rc=1.5, w=0.15, radii=tuple(np.linspace(0.5, 1.4, 8)), lambdas=(1.0, -1.0), d_prime=(1.0,)
)


@pytest.fixture(scope="module")
def frames():
    cfg = DatasetConfig(
        system=SystemConfig(n=N, seed=21),
        configs=2,
        spins_per_config=6,
        random_fraction=0.5,
        replicas=3,
        relax=LLGConfig(alpha=1.0, dt=0.5, seed=4),
        t_first=0.5,
        t_max=2.0,
    )
    return generate_dataset(cfg)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = EnergyModel(SPEC, Architecture(hidden=(8,), activation="silu"))
    with torch.no_grad():
        for p in m.net.parameters():
            p.normal_(0, 0.05)
    m.energy_offset.fill_(-6.05)
    return m


def test_metrics_match_hand_computed_numpy(frames, model):
    result = evaluate(model, frames)
    assert tuple(result)[: len(METRIC_KEYS)] == METRIC_KEYS
    ml_fields, ml_energy = [], []
    for c in range(2):  # independent path: the model's own field provider
        rows = slice(6 * c, 6 * c + 6)
        system = AtomicSystem(frames.positions[rows][0], float(frames.box[rows][0]))
        provider = MLFieldProvider(model, system)
        h, e = provider.fields(torch.as_tensor(frames.spins[rows]))
        ml_fields.append(h.numpy())
        ml_energy.append(e.numpy())
    s = frames.spins
    err = np.cross(s, np.concatenate(ml_fields)) - np.cross(s, frames.fields)
    ref = np.sqrt(np.mean(np.cross(s, frames.fields) ** 2))
    de = (np.concatenate(ml_energy) - frames.energy) / N
    assert result["rmse_hperp"] == pytest.approx(np.sqrt(np.mean(err**2)), rel=1e-5)
    assert result["mae_hperp"] == pytest.approx(np.mean(np.abs(err)), rel=1e-5)
    assert result["max_abs_hperp"] == pytest.approx(np.max(np.abs(err)), rel=1e-5)
    assert result["rel_rmse_hperp"] == pytest.approx(np.sqrt(np.mean(err**2)) / ref, rel=1e-5)
    assert result["rmse_energy_per_atom"] == pytest.approx(np.sqrt(np.mean(de**2)), rel=1e-4)
    assert result["n_frames"] == 12 and result["n_atoms"] == N
    for code, label in enumerate(frames.source_labels):  # random and relaxation separately
        sel = frames.source == code
        part = result["by_source"][label]
        assert part["n_frames"] == sel.sum() == 6
        assert part["rmse_hperp"] == pytest.approx(np.sqrt(np.mean(err[sel] ** 2)), rel=1e-5)


def test_zero_model_scores_the_spread_of_the_ed_fields(frames):
    zero = EnergyModel(SPEC, Architecture(hidden=(4,)))  # last layer starts at zero: H = 0
    result = evaluate(zero, frames)
    assert result["rel_rmse_hperp"] == pytest.approx(1.0)


def test_warns_when_physical_parameters_differ(frames, model):
    physical = {"t0": 1.0, "ell": 1.0, "J": 5.0, "filling": 0.5, "kT_e": 0.0, "density": 0.8}
    with pytest.warns(UserWarning, match="J = 5 but is used with J = 6"):
        evaluate(model, frames, physical=physical)


def test_parity_plot_is_written(frames, model, tmp_path):
    evaluate(model, frames, plot=tmp_path / "parity.png")
    assert (tmp_path / "parity.png").stat().st_size > 1000


def test_frames_without_fields_give_a_clear_error(frames, model):
    bare = Frames(positions=frames.positions, box=frames.box, spins=frames.spins)
    with pytest.raises(FileFormatError, match="no ED fields or energy"):
        evaluate(model, bare)


def test_nan_in_data_gives_a_clear_error(frames, model):
    bad = Frames(positions=frames.positions, box=frames.box, spins=frames.spins,
                 fields=frames.fields, energy=frames.energy.copy())  # fmt: skip
    bad.energy[2] = np.nan
    with pytest.raises(StateError, match="energy contain NaN"):
        evaluate(model, bad)

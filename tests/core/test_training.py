import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from core.config import ConfigError, LLGConfig, SystemConfig
from core.dataset import DatasetConfig, configuration_index, generate_dataset
from core.descriptor import DescriptorSpec, cutoff_function
from core.errors import FileFormatError, StateError
from core.io import Frames
from core.model import Architecture
from core.modelfile import load_model
from core.system import generate_positions, pairs_within, random_spins
from core.training import (
    TrainConfig,
    fit_network,
    new_model,
    prepare,
    save_trained,
    split_configurations,
    standardise,
    time_reversal_augment,
    train,
    validate,
)

N = 24  # L = 3.1 at the paper's density: rc <= L/2 = 1.55
SPEC = DescriptorSpec(
    rc=1.5, w=0.15, radii=tuple(np.linspace(0.5, 1.4, 8)), lambdas=(1.0, -1.0), d_prime=(1.0,)
)
G2M = SPEC.replace(include_g3m=False, include_chi=False)


@pytest.fixture(scope="module")
def frames():
    cfg = DatasetConfig(
        system=SystemConfig(n=N, seed=11),
        configs=4,
        spins_per_config=8,
        random_fraction=0.25,
        replicas=3,
        relax=LLGConfig(alpha=1.0, dt=0.5, seed=2),
        t_first=0.5,
        t_max=3.0,
    )
    return generate_dataset(cfg)


# --------------------------------------------------------------------------- splits


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize(("folds", "test"), [(1, None), (3, 2), (2, 1)])
def test_split_never_shares_a_configuration(seed, folds, test):
    ids = list(range(7))
    test_ids, parts = split_configurations(ids, test, folds, None, seed)
    seen = [*test_ids, *(i for p in parts for i in p)]
    assert sorted(seen) == ids  # every configuration exactly once
    assert all(parts) and test_ids


def test_training_runs_validate_on_unseen_configurations(frames):
    result = train(frames, TrainConfig(arch=Architecture.parse("pairwise"), spec=SPEC, folds=3,
                                       test_configs=1))  # fmt: skip
    assert len(result.folds) == 3 and len(result.test_ids) == 1
    for k, fold in enumerate(result.folds):
        others = {i for j, f in enumerate(result.folds) if j != k for i in f}
        assert not others & set(fold) and not others & set(result.test_ids)
        assert result.cv[k]["val_configs"] == fold
    assert result.test["all"]["n_frames"] == 8  # one configuration x 8 frames


def test_prepare_groups_frames_by_configuration(frames):
    order = np.random.default_rng(1).permutation(frames.n_frames)
    shuffled = Frames(
        positions=frames.positions[order], box=frames.box[order], spins=frames.spins[order],
        fields=frames.fields[order], energy=frames.energy[order], source=frames.source[order],
    )  # fmt: skip
    data = prepare(shuffled, G2M, torch.float64)
    ids = configuration_index(shuffled)
    for d in data:
        members = np.flatnonzero(ids == d.config_id)
        np.testing.assert_array_equal(d.spins.numpy(), shuffled.spins[members])
        pos = shuffled.positions[members]
        assert (pos == pos[0]).all()


# --------------------------------------------------------------------------- pairwise identity


def heisenberg_frames(coeff: np.ndarray, offset: float, configs: int = 3, frames: int = 6):
    """E = sum_{i<j} J(R_ij) S_i.S_j + N offset, J(R) = 2 sum_m c_m F2(R; d_m, w); H = -dE/dS."""
    radii = np.asarray(SPEC.radii)
    out = {k: [] for k in ("positions", "box", "spins", "fields", "energy")}
    for c in range(configs):
        system = generate_positions(SystemConfig(n=N, seed=40 + c))
        pairs, r = pairs_within(system, SPEC.rc)
        f2 = np.exp(-(((r[:, None] - radii) / SPEC.w) ** 2)) * cutoff_function(r, SPEC.rc)[:, None]
        jr = 2 * f2 @ coeff
        s = random_spins(frames, N, torch.Generator().manual_seed(c)).numpy()
        i, j = pairs[:, 0], pairs[:, 1]
        bonds = np.einsum("fpa,fpa->fp", s[:, i], s[:, j])
        h = np.zeros_like(s)
        np.add.at(h, (slice(None), i), -jr[None, :, None] * s[:, j])
        np.add.at(h, (slice(None), j), -jr[None, :, None] * s[:, i])
        out["positions"].append(np.repeat(system.positions[None], frames, 0))
        out["box"].append(np.full(frames, system.box))
        out["spins"].append(s)
        out["fields"].append(h)
        out["energy"].append(bonds @ jr + N * offset)
    return Frames(**{k: np.concatenate(v) for k, v in out.items()})


def test_pairwise_least_squares_recovers_known_exchange():
    coeff = np.array([0.08, -0.05, 0.03, 0.0, -0.02, 0.015, 0.01, -0.005])
    data = heisenberg_frames(coeff, offset=-6.0)
    cfg = TrainConfig(arch=Architecture.parse("pairwise"), spec=SPEC, folds=1, test_configs=1,
                      val_configs=1, dtype="float64")  # fmt: skip
    result = train(data, cfg)
    r = np.linspace(0.45, 1.5, 200)
    radii = np.asarray(SPEC.radii)
    expected = (
        2
        * (np.exp(-(((r[:, None] - radii) / SPEC.w) ** 2)) * cutoff_function(r, 1.5)[:, None])
        @ coeff
    )
    np.testing.assert_allclose(result.model.exchange(r), expected, atol=1e-9)
    assert result.test["all"]["rmse_hperp"] < 1e-10
    assert result.test["all"]["rmse_energy_per_atom"] < 1e-10
    assert result.cv[0]["rmse_hperp"] < 1e-10


def test_pairwise_fit_without_energy_term_sets_offset_from_energies():
    coeff = np.array([0.05, 0.0, -0.03, 0.02, 0.0, 0.0, 0.01, 0.0])
    data = heisenberg_frames(coeff, offset=-3.0)
    cfg = TrainConfig(arch=Architecture.parse("pairwise"), spec=SPEC, folds=2, test_configs=1,
                      mu_e=0.0, dtype="float64")  # fmt: skip
    result = train(data, cfg)
    assert result.test["all"]["rmse_energy_per_atom"] < 1e-9


# --------------------------------------------------------------------------- network


def test_training_reduces_the_loss(frames):
    cfg = TrainConfig(arch=Architecture.parse("16,16"), spec=SPEC, epochs=3, patience=5,
                      batch_size=4, lr=3e-3, folds=1, test_configs=1, val_configs=1)  # fmt: skip
    data = prepare(frames, SPEC)
    model = new_model(cfg, 0)
    standardise(model, data[:2], 0)
    before, _ = validate(model, data[:2], cfg.mu_h, cfg.mu_e)
    history = fit_network(model, data[:2], data[2:3], cfg, "test", cfg.epochs, 0)
    after, _ = validate(model, data[:2], cfg.mu_h, cfg.mu_e)
    assert len(history) == 3
    assert after < 0.8 * before
    assert history[-1].train_loss < history[0].train_loss


def test_early_stopping_keeps_the_best_weights(frames):
    cfg = TrainConfig(arch=Architecture.parse("16"), spec=SPEC, epochs=4, patience=1,
                      batch_size=2, lr=0.05, folds=1)  # fmt: skip
    data = prepare(frames, SPEC)
    model = new_model(cfg, 0)
    standardise(model, data[:2], 0)
    history = fit_network(model, data[:2], data[2:], cfg, "test", cfg.epochs, 0)
    best = min(h.val_loss for h in history)
    assert math.isclose(validate(model, data[2:], cfg.mu_h, cfg.mu_e)[0], best, rel_tol=1e-5)


def test_time_limit_stops_a_run_at_an_epoch_end_keeping_the_best_weights(frames):
    cfg = TrainConfig(arch=Architecture.parse("16"), spec=SPEC, epochs=50, patience=50,
                      batch_size=2, folds=1, time_limit=1e-6)  # fmt: skip
    data = prepare(frames, SPEC)
    model = new_model(cfg, 0)
    standardise(model, data[:2], 0)
    history = fit_network(model, data[:2], data[2:], cfg, "test", cfg.epochs, 0)
    assert len(history) == 1  # the limit was spent during the first epoch
    assert math.isclose(
        validate(model, data[2:], cfg.mu_h, cfg.mu_e)[0], history[0].val_loss, rel_tol=1e-5
    )
    with pytest.raises(ConfigError, match="time_limit must be > 0"):
        TrainConfig(time_limit=0)


def test_time_reversal_augmentation_doubles_frames_with_flipped_fields(frames):
    doubled = time_reversal_augment(frames)
    f = frames.n_frames
    assert doubled.n_frames == 2 * f
    np.testing.assert_array_equal(doubled.spins[f:], -frames.spins)
    np.testing.assert_array_equal(doubled.fields[f:], -frames.fields)
    np.testing.assert_array_equal(doubled.energy[f:], frames.energy)
    np.testing.assert_array_equal(doubled.source[f:], frames.source)
    # H_perp = S x H is even under time reversal
    d = prepare(frames, G2M, torch.float64)[0].time_reversed()
    half = d.n_frames // 2
    np.testing.assert_array_equal(d.spins[half:].numpy(), -d.spins[:half].numpy())
    np.testing.assert_array_equal(d.hperp[half:].numpy(), d.hperp[:half].numpy())


def test_saved_model_carries_card_and_report(frames, tmp_path):
    dataset = tmp_path / "d.h5"
    dataset.write_bytes(b"stand-in for the dataset file")
    cfg = TrainConfig(arch=Architecture.parse("pairwise"), spec=SPEC, folds=2, test_configs=1)
    result = train(frames, cfg)
    model_path, report = save_trained(result, frames, [dataset], tmp_path / "m.safetensors")
    assert report.name == "m.report.png" and report.stat().st_size > 1000
    model, card = load_model(model_path)
    assert card.physical["J"] == 6.0 and card.physical["density"] == pytest.approx(0.8)
    assert len(card.training["dataset_sha256"][0]) == 64 and card.training["folds"] == 2
    assert card.metrics["rmse_hperp"] == pytest.approx(result.test["all"]["rmse_hperp"])
    assert {"random", "relaxation", "cross_validation", "exchange"} <= set(card.metrics)
    np.testing.assert_allclose(model.exchange(np.array([0.7, 1.1])),
                               result.model.exchange(np.array([0.7, 1.1])), rtol=1e-6)  # fmt: skip


# --------------------------------------------------------------------------- bad input


def test_frames_without_fields_are_refused(frames):
    bare = Frames(positions=frames.positions, box=frames.box, spins=frames.spins)
    with pytest.raises(FileFormatError, match="no ED fields"):
        train(bare, TrainConfig(spec=SPEC))


def test_nan_in_training_data_is_refused(frames):
    bad = replace(frames)
    bad.fields = frames.fields.copy()
    bad.fields[3, 2, 1] = np.nan
    with pytest.raises(StateError, match="fields contain NaN"):
        train(bad, TrainConfig(spec=SPEC))


def test_interrupted_training_resumes_to_the_same_network(frames, tmp_path):
    import signal

    from core.checkpoint import Checkpoints

    cfg = TrainConfig(arch=Architecture.parse("16,16"), spec=SPEC, epochs=6, patience=2,
                      batch_size=4, lr=3e-3, folds=2, test_configs=1)  # fmt: skip
    whole = train(frames, cfg)
    ck = Checkpoints(tmp_path / "ck", every=1e9)
    seen = []

    def ctrl_c_in_epoch_3_of_fold_2(log):
        seen.append((log.run, log.epoch))
        if (log.run, log.epoch) == ("fold 2/2", 2):
            signal.raise_signal(signal.SIGINT)  # arrives in the next epoch's work

    with pytest.raises(KeyboardInterrupt):
        train(frames, cfg, on_epoch=ctrl_c_in_epoch_3_of_fold_2, checkpoints=ck)
    assert sorted(p.name for p in ck.directory.iterdir()) == [
        "network-1.safetensors", "network-2.safetensors"
    ]  # fmt: skip
    resumed_logs = []
    resumed = train(frames, cfg, on_epoch=lambda log: resumed_logs.append(log), checkpoints=ck)
    assert resumed_logs[0].run == "fold 2/2" and resumed_logs[0].epoch == 4  # 3 was saved
    for a, b in zip(whole.model.state_dict().values(), resumed.model.state_dict().values(),
                    strict=True):  # fmt: skip
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    strip = lambda hist: [(h.run, h.epoch, h.train_loss, h.val_loss) for h in hist]  # noqa: E731
    assert [strip(h) for h in resumed.histories] == [strip(h) for h in whole.histories]
    assert resumed.test == whole.test
    other = replace(cfg, lr=1e-3)
    with pytest.raises(FileFormatError, match=r"lr 0\.001 here, 0\.003 there"):
        train(frames, other, checkpoints=ck)

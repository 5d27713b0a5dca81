import json

import h5py
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from core import cli
from core.io import Frames, read_frames, write_frames
from core.modelfile import load_model
from tests.core.cli_helpers import error_line, run

TINY_DESCRIPTOR = ["--rc", "1.5", "--width", "0.15", "--radii", "0.5", "1.4", "8"]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("ml")


@pytest.fixture(scope="module")
def dataset(workdir):
    path = workdir / "train.h5"
    argv = ["dataset", "-n", 24, "--seed", 5, "--configs", 3, "--spins-per-config", 6,
            "--replicas", 2, "--t-first", 0.5, "--t-max", 3, "-o", path]  # fmt: skip
    assert cli.main([str(a) for a in argv]) == 0
    return path


@pytest.fixture(scope="module")
def model_file(workdir, dataset):
    path = workdir / "pair.safetensors"
    argv = ["train", dataset, "-o", path, "--arch", "pairwise", "--folds", 2, *TINY_DESCRIPTOR]
    assert cli.main([str(a) for a in argv]) == 0
    return path


@pytest.mark.parametrize("sub", ["dataset", "train", "eval"])
def test_help_shows_defaults(capsys, sub):
    with pytest.raises(SystemExit) as exc:
        cli.main([sub, "--help"])
    assert exc.value.code == 0
    assert "default" in capsys.readouterr().out


def test_dataset_writes_labelled_frames_with_sources(dataset):
    frames = read_frames(dataset)
    assert frames.n_frames == 18 and frames.n_atoms == 24
    assert frames.fields is not None and frames.energy is not None
    np.testing.assert_array_equal(np.bincount(frames.source), [3, 15])
    with h5py.File(dataset) as f:
        assert f.attrs["dataset_relax_alpha"] == 1.0


def test_train_writes_model_and_report(model_file, capsys):
    assert model_file.exists()
    assert model_file.with_suffix(".report.png").exists()


def test_eval_json_is_one_line_with_exactly_the_metric_keys(capsys, model_file, dataset):
    code, out, _ = run(capsys, "eval", model_file, dataset, "--json")
    assert code == 0
    lines = out.splitlines()
    assert len(lines) == 1
    metrics = json.loads(lines[0])
    assert list(metrics) == [
        "rmse_hperp", "mae_hperp", "max_abs_hperp", "rel_rmse_hperp",
        "rmse_energy_per_atom", "n_frames", "n_atoms",
    ]  # fmt: skip
    assert metrics["n_frames"] == 18 and 0 < metrics["rel_rmse_hperp"] < 1


def test_eval_table_and_plot(capsys, model_file, dataset, workdir):
    code, out, _ = run(capsys, "eval", model_file, dataset, "--plot", workdir / "p.png")
    assert code == 0 and "rmse_hperp" in out and (workdir / "p.png").exists()


def test_eval_warns_when_the_file_has_other_physics(capsys, model_file, dataset, workdir):
    frames = read_frames(dataset)
    frames.attrs["J"] = 4.0
    other = write_frames(workdir / "j4.h5", frames, force=True)
    code, _, err = run(capsys, "eval", model_file, other, "--json")
    assert code == 0
    assert "sdglass: warning: model was trained for J = 6 but is used with J = 4" in err


def test_train_takes_the_third_side_shells(workdir, dataset):
    path = workdir / "dprime.safetensors"
    argv = ["train", dataset, "-o", path, "--arch", "8", "--folds", 1, "--epochs", 1,
            *TINY_DESCRIPTOR, "--d-prime", 0.8, "--w-prime", 0.5]  # fmt: skip
    assert cli.main([str(a) for a in argv]) == 0
    model, _ = load_model(path)
    assert model.spec.d_prime == (0.8,) and model.spec.w_prime == 0.5
    assert model.n_inputs == 8 * (1 + 2 * 2 * 1)


def test_train_refuses_to_overwrite(capsys, model_file, dataset):
    code, _, err = run(capsys, "train", dataset, "-o", model_file, "--arch", "pairwise")
    assert code == 2 and "--force" in error_line(err)


def test_train_rejects_a_cutoff_beyond_half_the_box(capsys, dataset, workdir):
    code, _, err = run(capsys, "train", dataset, "-o", workdir / "x.safetensors", "--arch",
                       "pairwise", "--folds", 2)  # fmt: skip
    assert code == 2 and "L/2" in error_line(err)


def test_frames_without_fields_give_one_line(capsys, model_file, dataset, workdir):
    frames = read_frames(dataset)
    bare = write_frames(
        workdir / "bare.h5", Frames(positions=frames.positions, box=frames.box,
                                    spins=frames.spins), force=True,
    )  # fmt: skip
    code, _, err = run(capsys, "eval", model_file, bare)
    assert code == 2 and "no ED fields" in error_line(err)
    code, _, err = run(capsys, "train", bare, "-o", workdir / "y.safetensors", *TINY_DESCRIPTOR)
    assert code == 2 and "no ED fields" in error_line(err)


def test_nan_in_data_gives_one_line(capsys, model_file, dataset, workdir):
    path = workdir / "nan.h5"
    path.write_bytes(dataset.read_bytes())
    with h5py.File(path, "a") as f:
        f["fields"][1, 2, 0] = np.nan
    code, _, err = run(capsys, "eval", model_file, path)
    assert code == 2 and "NaN" in error_line(err)
    code, _, err = run(capsys, "train", path, "-o", workdir / "z.safetensors", *TINY_DESCRIPTOR)
    assert code == 2 and "NaN" in error_line(err)


def test_model_file_from_another_program_gives_one_line(capsys, dataset, workdir):
    foreign = workdir / "foreign.safetensors"
    save_file({"weight": torch.zeros(3)}, str(foreign), metadata={"producer": "other"})
    code, _, err = run(capsys, "eval", foreign, dataset)
    assert code == 2 and "not an sdglass model" in error_line(err)
    junk = workdir / "junk.safetensors"
    junk.write_bytes(b"\x00" * 64)
    code, _, err = run(capsys, "eval", junk, dataset)
    assert code == 2 and "safetensors" in error_line(err)


def test_train_joins_several_files_and_records_each(workdir, dataset, capsys):
    second = workdir / "second.h5"
    argv = ["dataset", "-n", 24, "--seed", 50, "--configs", 2, "--spins-per-config", 6,
            "--replicas", 2, "--t-first", 0.5, "--t-max", 3, "-o", second]  # fmt: skip
    assert cli.main([str(a) for a in argv]) == 0
    path = workdir / "joined.safetensors"
    argv = ["train", dataset, second, "-o", path, "--arch", "pairwise", "--folds", 2,
            *TINY_DESCRIPTOR]  # fmt: skip
    assert cli.main([str(a) for a in argv]) == 0
    _, card = load_model(path)
    assert card.training["dataset"] == [str(dataset), str(second)]
    assert card.training["configurations"] == 5 and card.training["frames"] == 30
    relabelled = workdir / "j3.h5"
    assert cli.main(["label", str(second), "--J", "3", "-o", str(relabelled)]) == 0
    capsys.readouterr()
    argv = ["train", dataset, relabelled, "-o", workdir / "x.safetensors", "--arch", "pairwise"]
    assert cli.main([str(a) for a in argv]) == 2
    assert "other electron parameters" in capsys.readouterr().err


def test_reproduce_passes_resume_and_workers_and_says_how_to_continue(tmp_path, capsys,
                                                                      monkeypatch):  # fmt: skip
    import core.reproduce

    seen = {}

    def interrupted(scale, out, model, force, log, device, resume, cluster, steps):
        seen.update(
            scale=scale.name, resume=resume, workers=cluster and cluster.workers, steps=steps
        )
        raise KeyboardInterrupt

    monkeypatch.setattr(core.reproduce, "reproduce", interrupted)
    code, _, err = run(capsys, "reproduce", "-o", tmp_path / "r", "--resume", "--workers", 3)
    assert code == 130
    assert seen == {
        "scale": "quick",
        "resume": True,
        "workers": 3,
        "steps": list(core.reproduce.TASKS),
    }
    run(capsys, "reproduce", "-o", tmp_path / "r", "--steps", "fig5", "fig2")
    assert seen["steps"] == ["fig5", "fig2"]  # reproduce runs them in TASKS's order
    assert f"progress saved in {tmp_path / 'r' / 'checkpoints'}; add --resume to continue" in err


def test_dataset_checkpoint_reads_finished_configurations_back(tmp_path, capsys, monkeypatch):
    import core.dataset

    argv = ["dataset", "-n", 20, "--configs", 2, "--spins-per-config", 4, "--replicas", 2,
            "--t-first", 0.5, "--t-max", 2, "--checkpoint", tmp_path / "ck"]  # fmt: skip
    assert run(capsys, *argv, "-o", tmp_path / "a.h5")[0] == 0
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == [
        "config-00000.h5", "config-00001.h5"
    ]  # fmt: skip

    def not_again(*args, **kwargs):
        raise AssertionError("a saved configuration was labelled again")

    monkeypatch.setattr(core.dataset, "_configuration", not_again)
    assert run(capsys, *argv, "-o", tmp_path / "b.h5")[0] == 0
    a, b = read_frames(tmp_path / "a.h5"), read_frames(tmp_path / "b.h5")
    np.testing.assert_array_equal(a.fields, b.fields)


def test_train_checkpoint_reads_finished_networks_back(capsys, dataset, workdir, monkeypatch):
    import core.training

    argv = ["train", dataset, "--arch", "8", "--epochs", 2, "--folds", 1, *TINY_DESCRIPTOR,
            "--checkpoint", workdir / "train-ck"]  # fmt: skip
    assert run(capsys, *argv, "-o", workdir / "a.safetensors")[0] == 0
    assert [p.name for p in (workdir / "train-ck").iterdir()] == ["network-0.safetensors"]

    def not_again(*args, **kwargs):
        raise AssertionError("a finished network was trained again")

    monkeypatch.setattr(core.training, "_epoch", not_again)
    assert run(capsys, *argv, "-o", workdir / "b.safetensors")[0] == 0
    a, b = load_model(workdir / "a.safetensors")[0], load_model(workdir / "b.safetensors")[0]
    for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=0)

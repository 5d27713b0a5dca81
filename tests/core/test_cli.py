import argparse
import json
import sys

import h5py
import numpy as np
import pytest
import torch

from core import cli
from core.config import ElectronConfig
from core.electrons import EDSolver
from core.errors import DisplayError
from core.io import read_frames, read_trajectory
from core.paths import DEFAULT_MODEL
from core.system import AtomicSystem
from tests.core.cli_helpers import error_line, run


@pytest.fixture
def system_file(tmp_path, capsys):
    path = tmp_path / "system.h5"
    code, out, _ = run(capsys, "generate", "-n", 12, "--seed", 1, "--frames", 3, "-o", path)
    assert code == 0 and "wrote" in out
    return path


def test_help_lists_every_subcommand(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for name in (
        "generate",
        "label",
        "quench",
        "dos",
        "compare",
        "summary",
        "bench",
        "dataset",
        "train",
        "eval",
    ):
        assert name in out


@pytest.mark.parametrize(
    "sub", ["generate", "label", "quench", "dos", "bench", "dataset", "train", "eval", "reproduce"]
)
def test_subcommand_help_shows_units_and_defaults(capsys, sub):
    with pytest.raises(SystemExit):
        cli.main([sub, "--help"])
    out = capsys.readouterr().out
    assert "default" in out


def test_generate_then_label_matches_ed(tmp_path, capsys, system_file):
    out_path = tmp_path / "labelled.h5"
    code, _, _ = run(capsys, "label", system_file, "-o", out_path)
    assert code == 0
    frames = read_frames(out_path)
    assert frames.attrs["J"] == 6.0 and frames.attrs["filling"] == 0.5
    ed = EDSolver(AtomicSystem(frames.positions[0], float(frames.box[0])), ElectronConfig())
    h, e = ed.fields(torch.as_tensor(frames.spins))
    np.testing.assert_allclose(frames.fields, h.numpy(), atol=1e-12)
    np.testing.assert_allclose(frames.energy, e.numpy(), rtol=1e-12)


def test_label_parameters_default_to_the_input_file(tmp_path, capsys, system_file):
    first, second = tmp_path / "j3.h5", tmp_path / "again.h5"
    assert run(capsys, "label", system_file, "--J", 3, "-o", first)[0] == 0
    assert run(capsys, "label", first, "-o", second)[0] == 0
    assert read_frames(second).attrs["J"] == 3.0
    np.testing.assert_allclose(read_frames(second).fields, read_frames(first).fields)


def test_quench_writes_trajectory_and_figure(tmp_path, capsys):
    traj_path, png = tmp_path / "run.h5", tmp_path / "run.png"
    code, out, _ = run(
        capsys, "quench", "-n", 16, "--configs", 1, "--replicas", 2, "--t-max", 0.1,
        "--records", 4, "-o", traj_path, "--plot", png,
    )  # fmt: skip
    assert code == 0, out
    traj = read_trajectory(traj_path)
    assert traj.attrs["replicas"] == 2 and traj.attrs["temperature"] == 0.001
    assert png.stat().st_size > 10_000
    assert "steps/s" in out
    assert traj.attrs["ed_method"] == "eigh"  # auto, on the CPU
    code, out, _ = run(
        capsys, "quench", "-n", 16, "--configs", 1, "--replicas", 2, "--t-max", 0.1,
        "--records", 4, "--ed-method", "purification", "-o", tmp_path / "pur.h5",
    )  # fmt: skip
    purified = read_trajectory(tmp_path / "pur.h5")
    assert code == 0 and purified.attrs["ed_method"] == "purification"
    np.testing.assert_allclose(purified.corr, traj.corr, rtol=0, atol=1e-9)


def test_dos_writes_figure(tmp_path, capsys):
    code, out, _ = run(capsys, "dos", "-n", 30, "--configs", 2, "-o", tmp_path / "dos.png")
    assert code == 0 and "Fermi level" in out
    assert (tmp_path / "dos.png").stat().st_size > 10_000


def test_bench_json_is_one_object(capsys):
    code, out, _ = run(
        capsys, "bench", "ed", "--sizes", 10, 20, "--repeats", 1, "--min-time", 0, "--json"
    )
    assert code == 0
    data = json.loads(out)
    assert [r["n"] for r in data["results"]] == [10, 20]
    assert all(r["seconds_per_eval"] > 0 for r in data["results"])


def test_refuses_to_overwrite_without_force(capsys, system_file):
    code, _, err = run(capsys, "generate", "-n", 12, "-o", system_file)
    assert code == 2 and "--force" in error_line(err)
    assert run(capsys, "generate", "-n", 12, "-o", system_file, "--force")[0] == 0


def corrupt(path, mutate):
    with h5py.File(path, "a") as f:
        mutate(f)


def _nan_spins(f):
    s = f["spins"][...]
    s[0, 0, 0] = np.nan
    f["spins"][...] = s


def _long_spins(f):
    f["spins"][...] = 2 * f["spins"][...]


def _drop_box(f):
    del f["box"]


def _bad_shape(f):
    del f["box"]
    f["box"] = np.ones(7)


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [(_nan_spins, "NaN"), (_long_spins, "unit"), (_drop_box, "missing"), (_bad_shape, "shape")],
)
def test_label_rejects_bad_frames(tmp_path, capsys, system_file, mutate, needle):
    corrupt(system_file, mutate)
    code, _, err = run(capsys, "label", system_file, "-o", tmp_path / "x.h5")
    assert code == 2 and needle in error_line(err)
    assert not (tmp_path / "x.h5").exists()


def test_label_rejects_missing_and_non_hdf5_files(tmp_path, capsys):
    code, _, err = run(capsys, "label", tmp_path / "nope.h5", "-o", tmp_path / "x.h5")
    assert code == 2 and "no such file" in error_line(err)
    text = tmp_path / "notes.h5"
    text.write_text("not hdf5")
    code, _, err = run(capsys, "label", text, "-o", tmp_path / "x.h5")
    assert code == 2 and "not an HDF5 file" in error_line(err)


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--temperature", "-1"], "temperature"),
        (["--dt", "-0.01"], "dt"),
        (["--alpha", "nan"], "alpha"),
        (["-n", "2000", "--box", "5"], "cannot pack"),
    ],
)
def test_quench_rejects_bad_parameters(tmp_path, capsys, argv, needle):
    code, _, err = run(capsys, "quench", *argv, "-o", tmp_path / "q.h5")
    assert code == 2 and needle in error_line(err)
    assert not (tmp_path / "q.h5").exists()


def test_interrupted_quench_leaves_no_output(tmp_path, capsys, monkeypatch):
    from core import llg

    calls = {"n": 0}
    original = llg.LLG.step

    def interrupted(self, spins, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return original(self, spins, **kwargs)

    monkeypatch.setattr(llg.LLG, "step", interrupted)
    code, _, err = run(capsys, "quench", "-n", 12, "--configs", 1, "--replicas", 1, "--t-max", 0.2,
                       "-o", tmp_path / "q.h5", "--plot", tmp_path / "q.png")  # fmt: skip
    assert code == 130 and "interrupted" in err
    assert list(tmp_path.iterdir()) == []


def test_quench_checkpoint_continues_after_ctrl_c(tmp_path, capsys, monkeypatch):
    import signal

    from core import llg

    calls = {"n": 0}
    original = llg.LLG.step

    def ctrl_c_in_step_3(self, spins, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            signal.raise_signal(signal.SIGINT)
        return original(self, spins, **kwargs)

    quench = ["quench", "-n", 12, "--configs", 2, "--replicas", 1, "--t-max", 0.2]
    ck = ["--checkpoint", tmp_path / "ck"]
    assert run(capsys, *quench, "-o", tmp_path / "whole.h5")[0] == 0
    monkeypatch.setattr(llg.LLG, "step", ctrl_c_in_step_3)
    code, _, err = run(capsys, *quench, *ck, "-o", tmp_path / "q.h5")
    assert code == 130 and f"progress saved in {tmp_path / 'ck'}" in err
    assert not (tmp_path / "q.h5").exists() and (tmp_path / "ck" / "group-00000.h5").exists()
    code, out, _ = run(capsys, "summary", tmp_path / "ck")  # what it has recorded so far
    assert code == 0 and "t = 0..0.04" in out
    assert "unfinished: saved progress: 1 of 2 configurations, records to t = 0.04 of 0.2 (3 of 20 configuration-steps)" in out  # fmt: skip
    monkeypatch.setattr(llg.LLG, "step", original)
    code, out, _ = run(capsys, *quench, *ck, "-o", tmp_path / "q.h5")
    # 2 configurations x 10 steps; the Ctrl-C let step 3 finish before the save
    assert code == 0 and "17 steps (and 3 read back)" in out
    np.testing.assert_array_equal(
        read_trajectory(tmp_path / "q.h5").corr, read_trajectory(tmp_path / "whole.h5").corr
    )
    code, out, _ = run(capsys, "compare", tmp_path / "whole.h5", tmp_path / "ck")
    assert code == 0 and "max |delta C(r, t)| over bins for t <= 100: 0.0000" in out
    code, _, err = run(capsys, *quench[:-1], 0.3, *ck, "-o", tmp_path / "longer.h5")
    assert code == 2 and "t_max 0.3 here, 0.2 there" in error_line(err)


def test_interrupted_label_leaves_no_output(tmp_path, capsys, monkeypatch, system_file):
    def interrupted(self, spins):
        raise KeyboardInterrupt

    monkeypatch.setattr(EDSolver, "fields", interrupted)
    code, _, _ = run(capsys, "label", system_file, "-o", tmp_path / "x.h5")
    assert code == 130
    assert sorted(p.name for p in tmp_path.iterdir()) == ["system.h5"]


def test_ml_quench_and_bench_with_a_model_file(tmp_path, capsys, tiny_model_file):
    model = tiny_model_file
    code, out, err = run(
        capsys, "quench", "--engine", "ml", "--model", model, "-n", 20, "--configs", 1,
        "--replicas", 2, "--t-max", 0.1, "--records", 3, "-o", tmp_path / "ml.h5",
    )  # fmt: skip
    assert code == 0, err
    assert read_trajectory(tmp_path / "ml.h5").attrs["engine"] == "ml"
    code, out, _ = run(
        capsys, "bench", "ml", "--model", model, "--sizes", 20, 30, "--ed-max", 20,
        "--repeats", 1, "--min-time", 0, "--batch", 1, 3, "--json",
    )  # fmt: skip
    assert code == 0
    record = json.loads(out)
    rows = [r for r in record["results"] if r["batch"] == 1]
    assert [(r["engine"], r["n"]) for r in rows] == [("ml", 20), ("ml", 30), ("ed", 20)]
    assert [(g["n"], g["batch"]) for g in record["batch_gains"]] == [(20, 3), (30, 3)]
    assert all(r["seconds_per_step"] > 0 for r in rows)
    (speedup,) = record["speedups"]
    ml, ed = rows[0], rows[2]
    assert speedup["n"] == 20
    assert speedup["eval"] == pytest.approx(ed["seconds_per_eval"] / ml["seconds_per_eval"])


def test_bench_rounds_alternate_ml_and_ed_and_summarise_the_speedups(capsys, tiny_model_file):
    argv = ["bench", "ml", "--model", tiny_model_file, "--sizes", 20, "--ed-max", 20,
            "--repeats", 1, "--min-time", 0, "--rounds", 2]  # fmt: skip
    code, out, _ = run(capsys, *argv, "--json")
    assert code == 0
    record = json.loads(out)
    order = [(r["round"], r["engine"]) for r in record["results"]]
    assert order == [(1, "ml"), (1, "ed"), (2, "ml"), (2, "ed")]
    steps = [s["step"] for s in record["speedups"]]
    (summary,) = record["speedup_summary"]
    assert summary["n"] == 20 and summary["rounds"] == 2
    assert summary["step_min"] == min(steps) and summary["step_max"] == max(steps)
    assert summary["step_median"] == pytest.approx(sum(steps) / 2)
    code, out, _ = run(capsys, *argv)
    assert code == 0 and "round 2 of 2:" in out
    assert "over 2 rounds at N = 20: ML is" in out


def test_bench_names_each_batch_too_large_for_memory_once(capsys, tiny_model_file, monkeypatch):
    from core import memory
    from core.bench import paper_systems
    from core.model import MLFieldProvider
    from core.modelfile import load_model

    [(_, system)] = paper_systems([20])
    need = MLFieldProvider(load_model(tiny_model_file)[0], system).working_bytes
    monkeypatch.setattr(memory, "available_bytes", lambda device: 0.5 * (need(4) + need(400)))
    argv = ["bench", "ml", "--model", tiny_model_file, "--sizes", 20, "--ed-max", 0,
            "--repeats", 1, "--min-time", 0, "--rounds", 2, "--batch", 1, 400]  # fmt: skip
    code, out, _ = run(capsys, *argv)
    assert code == 0 and out.count("N = 20, B = 400 skipped: ML fields of 400 replicas") == 1
    code, out, _ = run(capsys, *argv, "--json")
    record = json.loads(out)
    assert [(r["round"], r["batch"]) for r in record["results"]] == [(1, 1), (2, 1)]
    (skip,) = record["skipped"]
    assert skip.startswith("N = 20, B = 400 skipped") and "use fewer replicas per call" in skip


def test_ml_quench_with_missing_model_fails_clearly(tmp_path, capsys):
    code, _, err = run(
        capsys, "quench", "--engine", "ml", "--model", tmp_path / "none.safetensors",
        "-n", 20, "-o", tmp_path / "ml.h5",
    )  # fmt: skip
    assert code == 2 and "no such model file" in error_line(err)
    assert "quench (ml)" not in err  # refused before a progress bar starts


def test_ml_quench_with_a_corrupted_model_fails_before_its_progress_bar(tmp_path, capsys):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(DEFAULT_MODEL.read_bytes()[:100])
    code, _, err = run(
        capsys, "quench", "--engine", "ml", "--model", bad, "-n", 20, "-o", tmp_path / "ml.h5"
    )
    assert code == 2 and "not a readable safetensors model file" in error_line(err)
    assert "quench (ml)" not in err and not (tmp_path / "ml.h5").exists()


def test_compare_reports_largest_difference_and_plots(tmp_path, capsys):
    common = ["quench", "-n", 16, "--configs", 1, "--replicas", 2, "--t-max", 0.1, "--records", 4]
    a, b, c = tmp_path / "a.h5", tmp_path / "b.h5", tmp_path / "c.h5"
    assert run(capsys, *common, "-o", a)[0] == 0
    assert run(capsys, *common, "-o", b)[0] == 0
    assert run(capsys, *common, "--noise-seed", 5, "-o", c)[0] == 0
    code, out, _ = run(capsys, "compare", a, b, c, "--plot", tmp_path / "cmp.png")
    assert code == 0
    same, other = out.splitlines()[:2]
    assert same.split("over bins for t <= 100: ")[1].startswith("0.0000")
    ref, new = read_trajectory(a), read_trajectory(c)
    expected = np.abs(new.corr - ref.corr).max()
    assert f"{expected:.4f}" in other and expected > 0
    assert (tmp_path / "cmp.png").stat().st_size > 10_000
    # the run with other noise is named as such; the identical one gets no note
    notes = [line for line in out.splitlines() if "note:" in line]
    assert notes == [f"  note: other run parameters than {a}: noise_seed 5 vs 0"]


def test_compare_interpolates_runs_with_other_record_times(tmp_path, capsys):
    a, b = tmp_path / "a.h5", tmp_path / "b.h5"
    base = ["quench", "-n", 16, "--configs", 1, "--replicas", 1, "--t-max", 0.2]
    assert run(capsys, *base, "--records", 6, "-o", a)[0] == 0
    assert run(capsys, *base, "--records", 4, "-o", b)[0] == 0
    code, out, _ = run(capsys, "compare", a, b)
    assert code == 0 and "interpolated" in out
    # b's record times are a subset of a's and the dynamics are identical (same seeds)
    code, out, _ = run(capsys, "compare", b, a)
    assert code == 0 and "t <= 100: 0.0000 " in out


def test_summary_lists_parameters_changed_during_the_run(tmp_path, capsys):
    path = tmp_path / "q.h5"
    quench = ["quench", "-n", 16, "--configs", 1, "--replicas", 1, "--t-max", 0.2]
    assert run(capsys, *quench, "-o", path)[0] == 0
    changes = [
        {"t": 0.1, "step": 5, "temperature": [0.001, 0.25], "alpha": [0.05, 0.5]},
        {"t": 0.15, "step": 8, "engine": ["ed", "ml"]},
    ]
    with h5py.File(path, "r+") as f:  # as the app writes a run whose knobs were turned
        f.attrs["parameter_changes"] = json.dumps(changes)
        f.attrs["state_file"] = "saved.frames.h5"  # ... from a state it opened
    code, out, _ = run(capsys, "summary", path)
    assert code == 0 and "started from the saved state saved.frames.h5" in out
    assert "changed during the run: from t = 0.1 (step 5): temperature 0.001 -> 0.25, " in out
    assert "alpha 0.05 -> 0.5" in out and "from t = 0.15 (step 8): engine ed -> ml" in out
    code, out, _ = run(capsys, "summary", path, "--json")
    assert code == 0 and json.loads(out)["parameter_changes"] == changes
    plain = tmp_path / "plain.h5"
    assert run(capsys, *quench, "-o", plain)[0] == 0
    code, out, _ = run(capsys, "compare", plain, path)
    assert code == 0 and "state_file saved.frames.h5 vs unset" in out
    assert out.count("changed during its run") == 1 and f"parameters of {path} changed" in out
    with h5py.File(path, "r+") as f:
        f.attrs["parameter_changes"] = "[{'t': 1"
    code, _, err = run(capsys, "summary", path)
    assert code == 2 and f"{path}: attribute parameter_changes is not JSON" in error_line(err)


def test_compare_rejects_other_bins(tmp_path, capsys):
    a, b = tmp_path / "a.h5", tmp_path / "b.h5"
    base = ["quench", "-n", 16, "--configs", 1, "--replicas", 1, "--t-max", 0.1]
    assert run(capsys, *base, "-o", a)[0] == 0
    assert run(capsys, *base, "--bin-width", 0.2, "-o", b)[0] == 0
    code, _, err = run(capsys, "compare", a, b)
    assert code == 2 and "other distance bins" in error_line(err)


def test_summary_quotes_the_papers_quantities_of_a_run(tmp_path, capsys):
    from core.observables import correlation_length, fit_droplet
    from core.reproduce import correlation_features, correlation_history

    path, fig = tmp_path / "q.h5", tmp_path / "q.png"
    quench = ["quench", "-n", 16, "--configs", 1, "--replicas", 2, "--t-max", 4, "--records", 24]
    assert run(capsys, *quench, "-o", path)[0] == 0
    code, out, _ = run(capsys, "summary", path, "--json")
    assert code == 0
    values = json.loads(out)
    traj = read_trajectory(path)
    expected = correlation_features(traj)
    assert values["c_first_bin"] == pytest.approx(expected["c_first_bin"])
    assert values["noise"] == pytest.approx(expected["noise"]) and values["noise"] > 0
    assert values["history"] == json.loads(json.dumps(correlation_history(traj)))
    assert values["psi"] == pytest.approx(fit_droplet(traj.times, traj.xi).psi)
    assert values["magnetisation_last"] == pytest.approx(traj.magnetisation[-1])
    assert values["random_magnetisation"] == pytest.approx(0.25)  # 1 / sqrt(16)
    floor_xi = correlation_length(traj.r_edges, traj.corr, floor=values["noise"])
    assert values["floor_xi_last"] == pytest.approx(floor_xi[-1])
    assert values["floor_xi_min"] == pytest.approx(np.nanmin(floor_xi[1:]))
    code, out, _ = run(capsys, "summary", path, "--plot", fig)
    assert code == 0 and "ED-LLG, N = 16, 1 configurations x 2 replicas, t = 0..4" in out
    assert "droplet fit (log t)^(1/psi)" in out and "against the paper's 1.02" in out
    assert "reaches the paper's -0.4: not by t = 4" in out and "sampling noise of C" in out
    assert f"xi with the noise ({values['noise']:.4f} per bin) taken off |C|: " in out
    assert fig.stat().st_size > 10_000
    code, _, err = run(capsys, "summary", path, "--plot", fig)
    assert code == 2 and "refusing to overwrite" in error_line(err)


def test_summary_fits_psi_on_a_chosen_window(tmp_path, capsys):
    from core.observables import fit_droplet

    path = tmp_path / "q.h5"
    quench = ["quench", "-n", 16, "--configs", 1, "--replicas", 2, "--t-max", 4, "--records", 60]
    assert run(capsys, *quench, "-o", path)[0] == 0
    traj = read_trajectory(path)
    code, out, _ = run(capsys, "summary", path, "--json", "--fit-from", 2, "--fit-to", 3.5)
    values = json.loads(out)
    expected = fit_droplet(traj.times, traj.xi, t_min=2, t_max=3.5)
    assert code == 0 and values["psi"] == pytest.approx(expected.psi)
    assert 2 <= values["fit_range"][0] < values["fit_range"][1] <= 3.5
    smallest = 1 + int(np.argmin(traj.xi[1:]))
    assert values["xi_min"] == traj.xi[smallest] and values["xi_min_t"] == traj.times[smallest]
    try:
        growth = fit_droplet(traj.times, traj.xi, t_min=values["xi_min_t"])
    except ValueError:  # fewer than 3 records from the smallest xi on
        growth = None
    assert values["growth_psi"] == (None if growth is None else pytest.approx(growth.psi))
    code, out, _ = run(capsys, "summary", path, "--fit-from", 3.9)
    assert code == 0 and "droplet fit: fewer than 3 records with t > 1 in t = 3.9..end" in out


def test_a_model_for_other_electrons_is_refused_and_another_density_warned(
    tmp_path, capsys, tiny_model_file
):
    ml = ("quench", "--engine", "ml", "--model", tiny_model_file, "-n", 20, "--configs", 1,
          "--replicas", 1, "--t-max", 0.04)  # fmt: skip
    # the ML engine simulates the model's J = 6: a file saying J = 1 would be wrong
    code, _, err = run(capsys, *ml, "--J", 1, "-o", tmp_path / "j1.h5")
    assert code == 2 and not (tmp_path / "j1.h5").exists()
    line = error_line(err)
    assert "model was trained for J = 6 but is used with J = 1" in line
    assert "use the ED engine" in line
    # another density: the system is really that dense; the model extrapolates, one warning
    code, _, err = run(capsys, *ml, "--box", 3, "-o", tmp_path / "dense.h5")
    assert code == 0 and (tmp_path / "dense.h5").exists()
    warning = "sdglass: warning: model was trained for density = 0.8 but is used with density"
    assert err.count(warning) == 1
    assert "UserWarning" not in err and "check_physical_parameters" not in err  # no source line


def test_app_refuses_bad_steps_and_an_existing_screenshot_before_opening(tmp_path, capsys):
    code, _, err = run(capsys, "app", "--steps", 0)
    assert code == 2 and "--steps must be >= 1, got 0" in error_line(err)
    shot = tmp_path / "shot.png"
    shot.write_bytes(b"a picture the user keeps")
    code, _, err = run(capsys, "app", "--steps", 2, "--screenshot", shot)
    assert code == 2 and "refusing to overwrite" in error_line(err)
    assert shot.read_bytes() == b"a picture the user keeps"
    code, _, err = run(capsys, "app", "--steps", 2, "--screenshot", tmp_path / "no" / "s.png")
    assert code == 2 and "no such directory" in error_line(err)
    code, _, err = run(capsys, "app", "--steps", 2, "--screenshot", tmp_path / "s.jpg")
    assert code == 2 and "--screenshot writes a PNG image: name a .png file" in error_line(err)
    code, _, err = run(capsys, "app", "--compare")
    assert code == 2 and "--compare needs --steps K" in error_line(err)


def test_app_refuses_a_movie_it_cannot_film_before_opening(tmp_path, capsys):
    code, _, err = run(capsys, "app", "--movie", tmp_path / "m.mp4")
    assert code == 2 and "--movie needs --steps K" in error_line(err)
    code, _, err = run(capsys, "app", "--steps", 2, "--movie", tmp_path / "m.gif")
    assert code == 2 and "--movie writes an MP4 video: name a .mp4 file" in error_line(err)
    kept = tmp_path / "m.mp4"
    kept.write_bytes(b"a movie the user keeps")
    code, _, err = run(capsys, "app", "--steps", 2, "--movie", kept)
    assert code == 2 and "refusing to overwrite" in error_line(err)
    assert kept.read_bytes() == b"a movie the user keeps"


def test_ed_beyond_the_available_memory_is_one_error_line(tmp_path, capsys, monkeypatch):
    from core import memory

    monkeypatch.setattr(memory, "available_bytes", lambda device: 2**19)
    code, _, err = run(capsys, "quench", "-n", 60, "--t-max", 0.04, "-o", tmp_path / "q.h5")
    assert code == 2 and "ED at N = 60 (a 120 x 120 complex diagonalization)" in error_line(err)
    assert "use the ML engine, or a smaller N" in error_line(err)
    assert not (tmp_path / "q.h5").exists()


def test_app_refuses_an_unreadable_model_before_opening(tmp_path, capsys):
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"not a model")
    code, _, err = run(capsys, "app", "--model", broken)
    assert code == 2 and "broken.safetensors is not a readable safetensors model" in error_line(err)
    code, _, err = run(capsys, "app", "--model", tmp_path / "missing.safetensors")
    assert code == 2 and "no such model file" in error_line(err)


def test_app_refuses_an_unreadable_state_before_opening(tmp_path, capsys):
    code, _, err = run(capsys, "app", "--state", tmp_path / "missing.h5")
    assert code == 2 and "no such file" in error_line(err)
    other = tmp_path / "not-frames.h5"
    with h5py.File(other, "w") as f:
        f.attrs["format"] = "sdglass-checkpoint"
    code, _, err = run(capsys, "app", "--state", other)
    assert code == 2 and "not an sdglass-frames file" in error_line(err)
    plain = tmp_path / "plain.h5"  # a trajectory without spin snapshots
    assert run(capsys, "quench", "-n", 16, "--t-max", 0.04, "-o", plain)[0] == 0
    code, _, err = run(capsys, "app", "--state", plain)
    assert code == 2 and "has no spin snapshots to continue from" in error_line(err)


@pytest.mark.parametrize(
    ("environ", "platform", "refused"),
    [
        ({}, "linux", True),
        ({"DISPLAY": ""}, "linux", True),
        ({"DISPLAY": ":99"}, "linux", False),
        ({"WAYLAND_DISPLAY": "wayland-0"}, "linux", False),
        ({"QT_QPA_PLATFORM": "offscreen"}, "linux", False),
        ({}, "darwin", False),
        ({}, "win32", False),
    ],
)
def test_app_without_a_display_is_one_error_line_not_a_qt_abort(environ, platform, refused):
    if refused:
        with pytest.raises(DisplayError, match="xvfb-run -a sdglass app"):
            cli._require_display(environ, platform)
    else:
        cli._require_display(environ, platform)


def test_app_command_checks_the_display(monkeypatch, capsys):
    for name in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(sys, "platform", "linux")
    code, _, err = run(capsys, "app", "--steps", 1)
    assert code == 2 and "neither DISPLAY nor WAYLAND_DISPLAY is set" in error_line(err)


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--batch", 1, 0], "--batch must be >= 1, got 0"),
        (["--sizes", 1], "--sizes must be >= 2, got 1"),
        (["--repeats", 0], "--repeats must be >= 1, got 0"),
        (["--min-time", "nan"], "--min-time must be >= 0 s, got nan"),
        (["--rounds", 0], "--rounds must be >= 1, got 0"),
        (["--rounds", 2], "--rounds applies to bench ml (ML against ED), not to bench ed"),
    ],
)
def test_bench_refuses_impossible_sizes_and_counts(capsys, option, message):
    code, _, err = run(capsys, "bench", "ed", *option)
    assert code == 2 and message in error_line(err)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["dos", "--configs", 0], "--configs must be >= 1, got 0"),
        (["dos", "--bins", 0], "--bins must be >= 1, got 0"),
        (["label", "in.h5", "--batch", 0], "--batch must be >= 1, got 0"),
        (["generate", "--frames", 0], "--frames must be >= 1, got 0"),
    ],
)
def test_dos_label_and_generate_refuse_empty_counts(capsys, tmp_path, argv, message):
    code, _, err = run(capsys, *argv, "-o", tmp_path / "out.h5")
    assert code == 2 and message in error_line(err)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["compare", "a.h5"], "compare needs two or more runs, got 1"),
        (
            ["summary", "a.h5", "--fit-from", 5, "--fit-to", 1],
            "--fit-from (5) must be below --fit-to (1)",
        ),
        (["summary", "a.h5", "--fit-from", "nan"], "--fit-from and --fit-to must be finite times"),
    ],
)
def test_compare_and_summary_refuse_what_cannot_be_done(capsys, argv, message):
    code, _, err = run(capsys, *argv)
    assert code == 2 and message in error_line(err)


def test_options_are_not_abbreviated(capsys):
    # `--kT` for the bath temperature must not silently set the electron temperature --kT-e
    with pytest.raises(SystemExit) as exc:
        cli.main(["quench", "--kT", "0.01", "-o", "q.h5"])
    assert exc.value.code == 2
    assert "unrecognized arguments: --kT 0.01" in capsys.readouterr().err


def test_help_states_each_default_once_and_never_none(monkeypatch):
    import re

    monkeypatch.setenv("COLUMNS", "2000")  # one line per option
    sub = next(a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for name, parser in sub.choices.items():
        text = parser.format_help()
        assert "(default: None)" not in text and "(default: False)" not in text, name
        for line in text.splitlines():
            assert len(re.findall(r"\(default", line)) <= 1, line
    quench = sub.choices["quench"].format_help()
    assert "cube side L in ell (default: the paper's density 0.8, L = 5 (N/100)^(1/3))" in quench
    assert "seed of the atomic configuration(s) (default: 0)" in quench


@pytest.mark.parametrize(
    "argv",
    [
        ["quench", "-n", 20, "--t-max", 0.04, "-o", "{tmp}/q.h5", "--plot", "{tmp}/q.txt"],
        ["dos", "-n", 20, "--configs", 1, "-o", "{tmp}/dos.csv"],
        ["summary", "{tmp}/a.h5", "--plot", "{tmp}/s.h5"],  # before the run is read
        ["compare", "{tmp}/a.h5", "{tmp}/b.h5", "--plot", "{tmp}/c.dat"],
        ["eval", "{tmp}/m.safetensors", "{tmp}/a.h5", "--plot", "{tmp}/e.txt"],
    ],
)
def test_a_figure_with_a_suffix_matplotlib_cannot_write_is_refused_first(tmp_path, capsys, argv):
    argv = [str(a).format(tmp=tmp_path) for a in argv]
    code, _, err = run(capsys, *argv)
    assert code == 2 and "is not an image format; use one of" in error_line(err)
    assert "png" in error_line(err) and "Traceback" not in err
    assert not (tmp_path / "q.h5").exists()  # refused before the quench ran

"""`sdglass reproduce` on a tiny scale: every step runs, every file is written, the report
holds the statement table; the C(r, t) features it quotes are measured correctly."""

import json
import re
from types import SimpleNamespace

import numpy as np
import pytest

from core.bench import hardware
from core.errors import FileFormatError, OutputExistsError
from core.io import read_trajectory
from core.reproduce import (
    OUTPUTS,
    SCALES,
    Scale,
    correlation_features,
    correlation_history,
    history_table,
    machines,
    reproduce,
)

TINY = Scale(
    "tiny", dos_configs=2, train_configs=3, test_configs=1, frames_per_config=6,
    relax_replicas=2, epochs=2, patience=2, fig4_configs=1, fig4_replicas=2, fig4_t_max=0.4,
    late_t_max=0.8, fig5_n=100, fig5_configs=1, fig5_replicas=2, fig5_t_max=0.4, records=5, relax_t_max=2.0,
)  # fmt: skip


def test_tiny_reproduction_writes_every_figure_data_file_and_the_report(tmp_path, tiny_model_file):
    lines = []
    report = reproduce(TINY, tmp_path / "run", tiny_model_file, log=lines.append)
    for name in OUTPUTS:
        assert (tmp_path / "run" / name).stat().st_size > 0, name
    text = report.read_text()
    assert "| paper | paper value | measured here | verdict |" in text
    for statement in (
        "C(r_min) ~ -0.4",
        "crosses zero near r ~ 1.4",
        "psi ~ 1.02",
        "magnetisation ~ 0",
        "H_perp error width",
        "weak positive peak",
        "DOS peak at the Fermi level",
        "Criterion here: the Fermi level lies within the peak's half maximum.",
    ):
        assert statement in text, statement
    assert "not reached: the run ends at t = 0.8" in text  # t >= 150 is beyond this scale
    # every row of the statement table has its 4 cells: a | inside one (|m|, |C|) is escaped
    table = text.split("| paper | paper value | measured here | verdict |")[1].split("\n\n")[0]
    rows = table.strip().splitlines()[1:]
    assert len(rows) >= 10 and all(len(re.split(r"(?<!\\)\|", r)) == 6 for r in rows), rows
    assert "\\|m\\| = " in text and "noise taken off every \\|C\\|" in text
    assert "## Fig. 4 continued: ML-LLG to t = 0.8" in text
    values = json.loads((tmp_path / "run" / "report.json").read_text())
    assert set(values) == {"fig2", "fig3", "fig4", "fig4late", "fig5"}
    # the continuation replays Fig. 4's ML run (same configurations and seeds) and goes on
    late = read_trajectory(tmp_path / "run" / "fig4-ml-late.h5")
    short = read_trajectory(tmp_path / "run" / "fig4-ml.h5")
    assert late.times[-1] == pytest.approx(0.8) and short.times[-1] == pytest.approx(0.4)
    common = np.intersect1d(np.round(late.times, 9), np.round(short.times, 9))
    assert len(common) >= 3
    for t in common:
        a, b = (np.argmin(abs(x.times - t)) for x in (late, short))
        np.testing.assert_allclose(late.corr[a], short.corr[b], rtol=0, atol=1e-12)
    fig4 = values["fig4"]
    assert (
        f"Largest |C_ED - C_ML| over all bins and record times: {fig4['max_abs_diff']:.4f} "
        f"(the sampling noise of C per bin: {fig4['ed']['noise']:.4f})." in text
    )
    history = values["fig4late"]["history"]
    assert history["at"][-1]["t"] == pytest.approx(0.8)
    assert f"| {history['at'][-1]['t']:.3g} | {history['at'][-1]['c_first_bin']:+.3f} |" in text
    assert set(values["fig3"]) == {
        "shipped model",
        "trained here, with G3chi",
        "trained here, without G3chi",
    }
    # the J = 0 DOS puts half of the 2N states below the Fermi level
    for n in ("100", "500"):
        dos = values["fig2"][n]
        assert dos["band"][0] < dos["fermi_level"] < dos["band"][1]
    assert any(line.startswith("Fig. 4") for line in lines)
    with pytest.raises(OutputExistsError):  # refused before any work
        reproduce(TINY, tmp_path / "run", tiny_model_file, log=lines.append)


@pytest.fixture(scope="module")
def whole_run(tmp_path_factory, tiny_model_file):
    """report.json of an uninterrupted tiny reproduction."""
    out = tmp_path_factory.mktemp("whole")
    reproduce(TINY, out, tiny_model_file, log=lambda line: None)
    assert not (out / "checkpoints").exists()  # removed once complete
    return (out / "report.json").read_text()


def not_again(*args, **kwargs):
    raise AssertionError("finished work ran again")


def ctrl_c_in_llg_step(monkeypatch, key: str, nth: int = 5) -> None:
    """Ctrl-C in the nth LLG step of reproduction step `key` (in its first run only)."""
    import signal

    import core.reproduce
    from core import llg

    calls, step, task = {"n": None}, llg.LLG.step, core.reproduce.TASKS[key]

    def counting(self, spins, **kwargs):
        if calls["n"] is not None:
            calls["n"] += 1
            if calls["n"] == nth:
                signal.raise_signal(signal.SIGINT)
        return step(self, spins, **kwargs)

    def armed(*args, **kwargs):
        calls["n"] = 0
        monkeypatch.setitem(core.reproduce.TASKS, key, task)  # once
        return task(*args, **kwargs)

    monkeypatch.setattr(llg.LLG, "step", counting)
    monkeypatch.setitem(core.reproduce.TASKS, key, armed)


def test_interrupted_reproduction_resumes_to_the_same_report(
    tmp_path, tiny_model_file, monkeypatch, whole_run
):
    import core.reproduce

    ctrl_c_in_llg_step(monkeypatch, "fig5")
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        reproduce(TINY, run, tiny_model_file, log=lambda line: None)
    saved = {p.name for p in (run / "checkpoints").iterdir()}
    assert {"run.json", "fig2.json", "fig3.json", "fig4.json", "fig4late.json", "fig4-ed",
            "fig5-ml"} <= saved  # fmt: skip
    assert "fig5.json" not in saved
    with pytest.raises(OutputExistsError):  # a plain rerun still refuses
        reproduce(TINY, run, tiny_model_file, log=lambda line: None)
    for key in ("fig2", "fig3", "fig4", "fig4late"):
        monkeypatch.setitem(core.reproduce.TASKS, key, not_again)
    lines = []
    report = reproduce(TINY, run, tiny_model_file, log=lines.append, resume=True)
    assert sum("read back" in line for line in lines) == 4
    assert (run / "report.json").read_text() == whole_run
    assert not (run / "checkpoints").exists()
    lines = []  # asked again (a time-limited loop): nothing to do, the report stays
    assert reproduce(TINY, run, tiny_model_file, log=lines.append, resume=True) == report
    assert lines == [f"{run} holds a finished run: nothing to resume (--force redoes it)"]
    (run / "report.md").unlink()
    with pytest.raises(FileFormatError, match="holds files of a run but not its saved progress"):
        reproduce(TINY, run, tiny_model_file, log=lambda line: None, resume=True)


def test_a_run_of_some_steps_reports_them_and_a_resume_runs_the_rest(
    tmp_path, tiny_model_file, monkeypatch, whole_run
):
    import core.reproduce
    from core.bench import hardware
    from core.config import ConfigError

    run, lines = tmp_path / "run", []
    report = reproduce(TINY, run, tiny_model_file, log=lines.append, steps=["fig3", "fig2"])
    text = report.read_text()
    assert "**Partial run.** Still to run: Fig. 4, Fig. 4 continued, Fig. 5." in text
    assert (
        "| Fig. 5 | N = 100, 1 configurations x 2 replicas, t <= 0.4, ML-LLG | not run yet |"
        in text
    )
    assert f"| {hardware('cpu')} |" in text  # where Figs. 2 and 3 ran
    assert "DOS peak at the Fermi level" in text and "H_perp error width" in text
    assert "C(r_min) ~ -0.4" not in text and "psi ~ 1.02" not in text
    assert "## Fig. 3" in text and "## Fig. 4" not in text
    assert set(json.loads((run / "report.json").read_text())) == {"fig2", "fig3"}
    assert lines[-1].startswith("steps still to run: fig4, fig4late, fig5; the progress stays")
    assert {"fig2.json", "fig3.json"} <= {p.name for p in (run / "checkpoints").iterdir()}
    with pytest.raises(OutputExistsError):  # without --resume the files are not touched
        reproduce(TINY, run, tiny_model_file, log=lines.append)
    for key in ("fig2", "fig3"):
        monkeypatch.setitem(core.reproduce.TASKS, key, not_again)
    saved = run / "checkpoints" / "fig2.json"  # as written before steps named their machine
    saved.write_text(
        json.dumps({k: v for k, v in json.loads(saved.read_text()).items() if k != "machine"})
    )
    report = reproduce(TINY, run, tiny_model_file, log=lines.append, resume=True)
    assert (run / "report.json").read_text() == whole_run  # as one uninterrupted run
    assert "Partial run" not in report.read_text()
    assert "| not recorded |" in report.read_text()
    assert not (run / "checkpoints").exists()
    with pytest.raises(ConfigError, match="unknown reproduction steps"):
        reproduce(TINY, tmp_path / "other", tiny_model_file, steps=["fig6"])


def test_fig_3_resumes_after_its_frames_and_first_network(
    tmp_path, tiny_model_file, monkeypatch, whole_run
):
    import core.dataset
    import core.training

    train, calls = core.training.train, []

    def second_interrupted(*args, **kwargs):  # Ctrl-C as the second network starts
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return train(*args, **kwargs)

    monkeypatch.setattr(core.training, "train", second_interrupted)
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        reproduce(TINY, run, tiny_model_file, log=lambda line: None)
    saved = {p.name for p in (run / "checkpoints").iterdir()}
    # the frames per configuration, the first network and its training state, the call
    assert saved == {"run.json", "fig2.json", "fig3-test", "fig3-train", "fig3-chi.safetensors",
                     "fig3-chi", "fig3-calls.json"}  # fmt: skip
    assert len(list((run / "checkpoints" / "fig3-train").iterdir())) == TINY.train_configs
    monkeypatch.setattr(core.dataset, "_configuration", not_again)
    monkeypatch.setattr(core.training, "train", train)  # trains the second network only
    lines = []
    reproduce(TINY, run, tiny_model_file, log=lines.append, resume=True)
    read = [line for line in lines if "read back" in line]
    assert len(read) == 4 and "the network with G3chi" in read[3]  # fig2, 2 frame sets, 1 net
    assert "(3 read back)" in read[2]  # the training frames, one file per configuration
    assert (run / "report.json").read_text() == whole_run


def test_progress_of_another_run_is_refused(tmp_path, tiny_model_file):
    import dataclasses

    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    (tmp_path / "run" / "checkpoints" / "run.json").write_text('{"scale": {}}')
    with pytest.raises(FileFormatError, match="progress of a run of another scale"):
        reproduce(TINY, tmp_path / "run", tiny_model_file, resume=True)
    other = dataclasses.replace(TINY, epochs=3)
    reproduce(TINY, tmp_path / "run", tiny_model_file, force=True, log=lambda line: None)
    assert not (tmp_path / "run" / "checkpoints").exists()
    with pytest.raises(OutputExistsError):
        reproduce(other, tmp_path / "run", tiny_model_file)


def test_dos_peak_of_tied_bins_does_not_follow_round_off():
    from core.reproduce import dos_peak

    centres = np.array([-0.65, -0.628, -0.605, -0.594])
    # two bins of equal counts, their heights apart by the round-off of their widths
    for rho in ([5.14, 5.317086613820357, 4.79, 5.31708661382041],
                [5.14, 5.317086613820410, 4.79, 5.31708661382035]):  # fmt: skip
        assert dos_peak(centres, np.array(rho)) == -0.628
    assert dos_peak(centres, np.array([5.14, 5.0, 4.79, 5.3])) == -0.594


def test_dos_verdict_says_which_of_the_caption_and_the_text_matches():
    from core.reproduce import dos_rows, dos_verdict

    on = {"rho_at_fermi": 3.9, "rho_peak": 4.9, "peak_minus_fermi": -0.17}
    nearer = {"rho_at_fermi": 4.1, "rho_peak": 6.2, "peak_minus_fermi": -0.08}
    off = {"rho_at_fermi": 1.0, "rho_peak": 6.0, "peak_minus_fermi": -0.6}
    both = dos_verdict({100: on, 500: nearer})
    assert both.startswith("Both") and "nearer eps_F for N = 500" in both
    assert "higher on the peak for N = 100" in both
    assert dos_verdict({100: on, 500: off}) == "Only N = 100 (its caption) matches the description."
    assert dos_verdict({100: off, 500: off}).startswith("Neither")
    rows = dos_rows({100: on, 500: off})
    assert [r[3] for r in rows] == ["agrees", "disagrees"]
    assert "its caption: N = 100" in rows[0][0] and "0.80 of the peak" in rows[0][2]


def test_states_quantile_of_a_histogram():
    from core.electrons import DensityOfStates, states_quantile

    edges = np.linspace(0.0, 10.0, 11)
    rho = np.array([5.0, 4.0, 1.0, 0, 0, 0, 0, 0, 0, 1e-6])  # 10 states, one far-out trace
    dos = DensityOfStates(edges=edges, rho=rho, fermi_level=1.0, n_configs=1)
    assert states_quantile(dos, 0.4) == 1.0  # the first bin holds half
    assert states_quantile(dos, 0.95) == 3.0


def test_correlation_features_measure_first_bin_zero_crossing_and_late_peak():
    r = np.array([0.55, 0.65, 0.75, 0.85, 1.25, 1.35, 1.45, 1.55])
    times = np.array([0.0, 10.0, 30.0, 200.0])
    corr = np.zeros((4, len(r)))
    corr[2] = [-0.4, -0.3, -0.2, -0.1, -0.05, 0.05, 0.1, 0.0]  # crosses zero at r = 1.30
    corr[3] = [-0.4, -0.3, -0.2, -0.1, -0.05, 0.02, 0.08, 0.03]  # peak 0.08 at r = 1.45
    corr[1] = -0.35
    traj = SimpleNamespace(times=times, corr=corr, r_centres=r)
    f = correlation_features(traj)
    assert f["c_first_bin"] == {"10": -0.35, "30": -0.4}
    assert f["zero_crossing_t"] == 30.0
    assert f["zero_crossing_r"] == pytest.approx(1.30)
    assert f["late_peak"] == {"t": 200.0, "r": 1.45, "c": pytest.approx(0.08), "c_t0": 0.0}
    assert f["noise"] == 0.0  # C(r, 0) = 0 in every bin
    # a small box (L/2 below r = 1.2): no bin where the late peak could be, and no crash
    small = SimpleNamespace(times=times, corr=corr[:, :4], r_centres=r[:4])
    assert "late_peak" not in correlation_features(small)
    history = correlation_history(small)
    assert [row["peak"] for row in history["at"]] == [None] * len(history["at"])
    assert history_table(history)[2].endswith("| no bin there |")


def test_late_peak_verdict_needs_a_peak_above_the_sampling_noise():
    from core.reproduce import peak_verdict

    def peak(r, c, c_t0=0.0):
        return {"r": r, "c": c, "c_t0": c_t0}

    assert peak_verdict(peak(1.45, 0.08), noise=0.02) == "agrees"
    assert peak_verdict(peak(1.45, 0.03), noise=0.02) == "within noise"
    # large, but mostly there from the start: the random spins' noise that the bin kept
    assert peak_verdict(peak(1.45, 0.08, c_t0=0.05), noise=0.02) == "within noise"
    assert peak_verdict(peak(1.9, 0.08), noise=0.02) == "disagrees"  # too far out
    assert peak_verdict(peak(1.45, -0.01), noise=0.02) == "disagrees"


def test_correlation_history_follows_the_paper_times_and_finds_when_c_reaches_minus_0_4():
    from core.reproduce import correlation_history

    r = np.array([0.55, 0.65, 0.75, 0.85, 1.25, 1.35, 1.45, 1.55])
    times = np.array([0.0, 0.9, 2.0, 3.2, 10.0, 31.0, 120.0, 290.0, 400.0])
    corr = np.zeros((len(times), len(r)))
    corr[:, 0] = [0.0, -0.01, -0.02, -0.05, -0.1, -0.2, -0.3, -0.41, -0.45]
    corr[:, 1] = 0.01  # every curve crosses zero between the first two bins
    corr[-2, 5] = 0.07  # the far peak at t = 290
    history = correlation_history(SimpleNamespace(times=times, corr=corr, r_centres=r))
    # nearest records of t = 1, 3, 10, 30, 100, 300, and the last one
    assert [row["t"] for row in history["at"]] == [0.9, 3.2, 10.0, 31.0, 120.0, 290.0, 400.0]
    assert history["reaches_paper_value_at"] == 290.0
    assert history["at"][5]["peak"] == {"r": 1.35, "c": pytest.approx(0.07), "c_t0": 0.0}
    # linear between bins: -0.41 at 0.55 and 0.01 at 0.65 -> zero at 0.55 + 0.1 * 0.41 / 0.42
    assert history["at"][5]["zero_crossing_r"] == pytest.approx(0.55 + 0.1 * 0.41 / 0.42)
    corr[:, 0] = -0.1  # never down to -0.4
    history = correlation_history(SimpleNamespace(times=times, corr=corr, r_centres=r))
    assert history["reaches_paper_value_at"] is None


def test_scales_are_valid_and_quick_is_smaller_than_paper():
    quick, paper = SCALES["quick"], SCALES["paper"]
    assert paper.fig5_n == 500 and paper.fig5_configs * paper.fig5_replicas == 200
    assert quick.fig5_t_max < paper.fig5_t_max and quick.dos_configs < paper.dos_configs
    with pytest.raises(Exception, match="epochs must be > 0"):
        Scale(**{**TINY.__dict__, "epochs": 0})
    with pytest.raises(Exception, match="late_t_max must be >= fig4_t_max"):
        Scale(**{**TINY.__dict__, "late_t_max": 0.2})


def test_psi_verdict_calls_an_ill_determined_fit_inconclusive():
    from core.reproduce import psi_verdict

    assert psi_verdict(1.05, 0.05) == "agrees"
    assert psi_verdict(2.0, 0.1) == "disagrees"
    assert psi_verdict(-61.2, 116.5) == "inconclusive"
    assert psi_verdict(3.0, 2.0) == "inconclusive"
    assert psi_verdict(-2.8, 0.2) == "disagrees (xi falls)"
    assert psi_verdict(None, None) == "no fit"


def test_psi_reason_says_whether_xi_grew_or_fell():
    from core.reproduce import psi_reason

    reached = {"reaches_paper_value_at": 300.0, "at": [{"t": 300.0}]}
    never = {"reaches_paper_value_at": None, "at": [{"t": 60.0}]}
    falls = psi_reason({"xi_first": 1.55, "xi_last": 1.32}, reached)
    assert "falls here, from 1.55 to 1.32" in falls and "takes until t ~ 300 here" in falls
    assert "has not happened by t = 60 here" in psi_reason(
        {"xi_first": 1.55, "xi_last": 1.32}, never
    )
    assert "grows only from 1.20 to 1.25" in psi_reason({"xi_first": 1.2, "xi_last": 1.25}, never)
    assert "noise taken off" not in falls  # a report of an older version: no such check
    floor = {"xi_first": 1.55, "xi_last": 1.32, "floor_xi_first": 0.72, "floor_xi_last": 0.79}
    assert "taken off every |C| first" in psi_reason(floor, reached)
    assert "xi goes from 0.72 to 0.79." in psi_reason(floor, reached)


def test_ed_configurations_share_one_batch_on_a_gpu_only():
    from core.reproduce import ed_pack

    assert ed_pack(10, "cuda", None) == 10
    assert ed_pack(10, "cuda:1", None) == 10
    assert ed_pack(10, "cpu", None) == 1
    assert ed_pack(10, "cuda", SimpleNamespace(workers=4)) == 1  # a task per configuration


def test_growth_row_fits_from_the_smallest_xi_or_says_why_not():
    from core.reproduce import growth_fit, growth_rows

    base = {"psi": -2.8, "psi_err": 0.2, "fit_range": (1.5, 1000.0), "t_max": 1000.0,
            "magnetisation_last": 0.02, "random_magnetisation": 0.045}  # fmt: skip
    grows = {**base, "xi_min": 0.85, "xi_min_t": 150.0, "growth_psi": 1.1,
             "growth_psi_err": 0.05, "growth_fit_range": (150.0, 1000.0)}  # fmt: skip
    measured, verdict = growth_fit(grows)
    assert measured == "1.10 +- 0.05 (t in 150..1e+03; xi smallest (0.850) at t = 150)"
    assert verdict == "agrees"
    falls = {**grows, "xi_min_t": 1000.0, "growth_psi": None, "growth_psi_err": None,
             "growth_fit_range": None}  # fmt: skip
    assert growth_fit(falls) == (
        "xi smallest (0.850) at t = 1e+03: fewer than 3 records after it, no growth to fit",
        "no fit",
    )
    assert growth_fit(base)[1] == "n/a"  # report.json of an older version
    rows = growth_rows(grows, 500)
    assert [r[0] for r in rows][-1].startswith("droplet exponent psi ~ 1.02, growth alone")


def test_an_output_folder_that_is_a_file_is_refused_before_any_work(tmp_path, tiny_model_file):
    from core.config import ConfigError

    report = tmp_path / "report.h5"
    report.write_bytes(b"a file the user keeps")
    for resume in (False, True):
        with pytest.raises(
            ConfigError, match=r"output folder .*report\.h5 exists and is not a dir"
        ):
            reproduce(TINY, report, tiny_model_file, resume=resume, log=lambda line: None)
    assert report.read_bytes() == b"a file the user keeps"


def test_a_model_for_other_electrons_is_refused_before_any_work(tmp_path):
    from core.config import ConfigError
    from core.model import Architecture, DescriptorSpec, EnergyModel
    from core.modelfile import ModelCard, save_model
    from tests.conftest import PAPER_PHYSICAL

    spec = DescriptorSpec(rc=1.4, radii=(0.6, 0.9, 1.2), w=0.2, d_prime=(1.0,))
    weak = ModelCard({**PAPER_PHYSICAL, "J": 1.0})
    path = save_model(tmp_path / "j1.safetensors", EnergyModel(spec, Architecture.parse("8")), weak)
    with pytest.raises(ConfigError, match="model was trained for J = 1 but is used with J = 6"):
        reproduce(TINY, tmp_path / "run", path, log=lambda line: None)
    assert not (tmp_path / "run").exists()


def test_a_resume_keeps_the_grouping_of_the_saved_progress(tmp_path):
    """Progress of Fig. 4's ED quench packed as on a GPU, resumed where ED runs one
    configuration at a time (a CPU): the saved groups are continued, not refused."""
    import signal
    from dataclasses import replace

    from core.checkpoint import Checkpoints
    from core.config import LLGConfig, SystemConfig
    from core.quench import QuenchConfig, run_quench, to_trajectory
    from core.reproduce import _quench

    packed = QuenchConfig(
        system=SystemConfig(n=20, seed=5), llg=LLGConfig(seed=3), configs=2, replicas=2,
        t_max=0.2, n_records=4, bin_width=0.2, pack=2,
    )  # fmt: skip
    path = tmp_path / "fig4-ed.h5"
    ck = Checkpoints(tmp_path / "checkpoints" / "fig4-ed", every=1e9)
    done = []

    def stop_after_3_steps(k):
        done.append(k)
        if len(done) == 3:
            signal.raise_signal(signal.SIGINT)

    with pytest.raises(KeyboardInterrupt):
        run_quench(packed, on_steps=stop_after_3_steps, checkpoints=ck)
    assert ck.saved_pack() == 2
    lines = []
    traj = _quench(replace(packed, pack=1), path, False, lines.append, "Fig. 4")
    assert lines[0] == "Fig. 4: the saved progress packs 2 configuration(s) per batch; kept"
    np.testing.assert_array_equal(traj.corr, to_trajectory(run_quench(packed)).corr)
    assert Checkpoints(tmp_path / "none").saved_pack() is None


def test_steps_run_by_two_processes_at_once_end_in_the_whole_report(
    tmp_path, tiny_model_file, monkeypatch, whole_run
):
    """`--steps` in two processes on one folder (say, Fig. 5's quench beside the others on a
    GPU): the one that finishes last sees the other's steps and writes the whole report."""
    import core.reproduce

    run, growth = tmp_path / "run", core.reproduce.TASKS["fig5"]

    def growth_while_the_other_process_runs_the_rest(setting):
        other = reproduce(TINY, run, tiny_model_file, log=lambda line: None, resume=True,
                          steps=["fig2", "fig3", "fig4", "fig4late"])  # fmt: skip
        assert "Still to run: Fig. 5." in other.read_text()  # it finished first
        return growth(setting)

    monkeypatch.setitem(core.reproduce.TASKS, "fig5", growth_while_the_other_process_runs_the_rest)
    report = reproduce(TINY, run, tiny_model_file, log=lambda line: None, resume=True,
                       steps=["fig5"])  # fmt: skip
    assert "Partial run" not in report.read_text()
    assert (run / "report.json").read_text() == whole_run
    assert not (run / "checkpoints").exists()


def test_a_report_of_some_steps_says_how_far_an_interrupted_quench_got(
    tmp_path, tiny_model_file, monkeypatch
):
    ctrl_c_in_llg_step(monkeypatch, "fig4")  # the 5th of the 20 steps of its ED-LLG quench
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        reproduce(TINY, run, tiny_model_file, log=lambda line: None, steps=["fig2", "fig4"])
    lines = []
    text = reproduce(
        TINY, run, tiny_model_file, log=lines.append, resume=True, steps=["fig2"]
    ).read_text()
    assert "Still to run: Fig. 3, Fig. 4 (saved: ED-LLG 25 %), Fig. 4 continued, Fig. 5." in text
    assert "| in progress (saved: ED-LLG 25 %) |" in text
    assert (
        "| Fig. 5 | N = 100, 1 configurations x 2 replicas, t <= 0.4, ML-LLG | not run yet |"
        in text
    )
    assert lines[-1].startswith("steps still to run: fig3, fig4 (saved: ED-LLG 25 %), fig4late")
    # a picture of what the quench has recorded so far
    assert "## Fig. 4: the saved progress so far" in text
    assert (
        "ED-LLG so far (saved progress: 1 of 1 configurations, records to t = 0.06 of 0.4 "
        "(5 of 20 configuration-steps)):" in text
    )
    assert "![ED-LLG](fig4-ed-so-far.png)" in text
    assert (run / "fig4-ed-so-far.png").stat().st_size > 0
    # the interrupted call's time is kept for the step
    ledger = run / "checkpoints" / "fig4-calls.json"
    (interrupted,) = json.loads(ledger.read_text())
    assert interrupted["machine"] == hardware("cpu") and interrupted["seconds"] > 0
    assert interrupted["device"] == "cpu"
    ledger.write_text(json.dumps([{**interrupted, "device": "cuda:0"}]))  # as if on a GPU
    (run / "mine-so-far.png").write_bytes(b"a user's file")
    text = reproduce(TINY, run, tiny_model_file, log=lambda line: None, resume=True).read_text()
    assert [p.name for p in run.glob("*-so-far.png")] == ["mine-so-far.png"]  # ours are gone
    (row,) = [line for line in text.splitlines() if line.startswith("| Fig. 4 | N = 100")]
    seconds, machine = row.split(" | ")[-2:]
    total = float(machine.rsplit(", ", 1)[1].removesuffix(" s) |"))
    assert machine.startswith(hardware("cpu") + " (2 calls, ")
    assert float(seconds) == pytest.approx(total, abs=1) and total >= interrupted["seconds"] - 0.5
    assert "Fig. 4 ran on more than one kind of device. A quench resumed on another" in text
    assert text.count("more than one kind of device") == 1


def test_a_step_of_several_calls_names_each_machine_with_its_calls_and_seconds():
    assert machines([{"machine": "cpu box", "seconds": 12.4}]) == "cpu box"
    calls = [{"machine": "gpu", "seconds": 500.2}, {"machine": "cpu box", "seconds": 30.0},
             {"machine": "gpu", "seconds": 20.1}]  # fmt: skip
    assert machines(calls) == "gpu (2 calls, 520 s); cpu box (1 call, 30 s)"


def test_the_paper_scale_on_a_cpu_says_its_dynamics_are_meant_for_a_gpu(
    tmp_path, tiny_model_file, monkeypatch
):
    from dataclasses import replace

    import core.reproduce

    for key in ("fig4", "fig4late", "fig5"):
        monkeypatch.setitem(core.reproduce.TASKS, key, not_again)
    paper_named = replace(TINY, name="paper")
    lines = []
    reproduce(paper_named, tmp_path / "a", tiny_model_file, log=lines.append, steps=["fig2"])
    assert not any(line.startswith("note:") for line in lines)  # no dynamics asked for
    with pytest.raises(AssertionError, match="ran again"):
        reproduce(paper_named, tmp_path / "b", tiny_model_file, log=lines.append, steps=["fig5"])
    assert lines[-1].startswith(
        "note: the paper scale's dynamics (fig5) are meant for a GPU and take hours to days on a CPU"
    )

"""GUI tests driving the real widgets (pytest-qt, napari's make_napari_viewer; run under Xvfb)."""

import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib import colormaps
from napari.utils.notifications import notification_manager
from qtpy.QtWidgets import QSizePolicy

from core.config import LLGConfig, SystemConfig
from core.paths import DEFAULT_MODEL
from tests.app.conftest import slow_steps

TIMEOUT = 60_000  # ms


def wait_stopped(qtbot, session):
    qtbot.waitUntil(lambda: session.worker is None, timeout=TIMEOUT)


def test_launch_builds_layers_and_panels(app_viewer):
    viewer, session = app_viewer
    names = [layer.name for layer in viewer.layers]
    assert {"Atoms", "Spins", "Box"} <= set(names)
    assert any(n.startswith("Fields") for n in names)
    assert viewer.dims.ndisplay == 3
    assert viewer.layers["Atoms"].data.shape == (30, 3)
    assert viewer.layers["Spins"].data.shape == (30, 2, 3)
    assert viewer.layers["Box"].data.shape == (12, 2, 3)
    assert set(session.panels) == {"System", "Dynamics", "Fields", "Model", "Export"}
    for panel in session.panels.values():
        for widget in panel:
            if hasattr(widget, "tooltip") and widget.widget_type not in ("Label", "Container"):
                assert widget.tooltip, f"{widget.label} has no tooltip"


def test_generate_from_system_panel(app_viewer, generate):
    viewer, session = app_viewer
    panel = session.panels["System"]
    layers = list(viewer.layers)
    panel.n.value = 40
    panel.seed.value = 3
    assert generate(panel)
    assert viewer.layers["Atoms"].data.shape == (40, 3)
    assert viewer.layers["Spins"].data.shape == (40, 2, 3)
    assert len(viewer.layers["Spins"].edge_color) == 40
    assert list(viewer.layers) == layers  # new data in the same layers (no removal cost)
    np.testing.assert_allclose(viewer.layers["Box"].data[:, 1].max(), session.sim.system.box)
    assert session.sim.system_config == SystemConfig(n=40, seed=3)


def test_a_saved_state_opens_again_with_its_atoms_spins_replicas_and_electrons(
    app_viewer, qtbot, tmp_path, generate
):
    from core.io import read_trajectory

    viewer, session = app_viewer
    system, dyn = session.panels["System"], session.panels["Dynamics"]
    dyn.replicas.value = 2
    system.J.value, system.seed.value = 4.0, 7
    assert generate(system)
    dyn.start(max_steps=5)
    wait_stopped(qtbot, session)
    saved, positions = session.sim.snapshot().spins, session.sim.system.positions.copy()
    export = session.panels["Export"]
    export.path.value = tmp_path / "state"
    (path,) = export.save_frames()
    # elsewhere: another system, one replica, J = 6
    dyn.replicas.value = 1
    system.n.value, system.J.value, system.seed.value = 40, 6.0, 1
    assert generate(system)
    assert system.summary.value.endswith("; seed 1")
    assert Path(system.state_path.value) == path  # offered to open again
    system.open_button.clicked.emit()
    qtbot.waitUntil(lambda: system.job is None, timeout=TIMEOUT)
    assert system.message.value == f"Opened {path.name} in " + system.message.value.split(" in ")[1]
    np.testing.assert_array_equal(session.sim.system.positions, positions)
    np.testing.assert_array_equal(session.sim.snapshot().spins, saved)
    assert session.sim.replicas == 2 and dyn.replicas.value == 2 and session.sim.step_count == 0
    assert (system.n.value, system.J.value, session.sim.electrons.J) == (30, 4.0, 4.0)
    assert not system.keep_density.value and system.preset.value == "Custom"
    assert system.summary.value.startswith("N = 30, ") and "J = 4 t0" in system.summary.value
    assert system.summary.value.endswith(f"; atoms of {path.name}")  # not the seed shown
    np.testing.assert_allclose(viewer.layers["Atoms"].data, positions)
    dyn.start(max_steps=3)  # the quench goes on from the saved spins
    wait_stopped(qtbot, session)
    assert session.sim.step_count == 3
    # its trajectory names the file the atoms came from, not the seed of other atoms
    export.path.value = tmp_path / "again"
    attrs = read_trajectory(export.save_trajectory()[0]).attrs
    assert attrs["state_file"] == str(path) and "seed" not in attrs and attrs["J"] == 4.0


def test_the_shipped_example_state_opens_quenched(app_viewer, qtbot):
    from core.paths import EXAMPLE_STATE

    _, session = app_viewer
    system = session.panels["System"]
    assert Path(system.state_path.value) == EXAMPLE_STATE  # ready to open
    assert system.open_state()
    qtbot.waitUntil(lambda: system.job is None, timeout=TIMEOUT)
    assert system.message.value.startswith(f"Opened {EXAMPLE_STATE.name}")
    snap = session.sim.snapshot()
    assert snap.spins.shape == (8, 100, 3) and session.panels["Dynamics"].replicas.value == 8
    assert (system.n.value, system.J.value) == (100, 6.0)
    # its C(r) at t = 0 already has the quench's anticorrelation at the smallest distances
    session.panels["Dynamics"].start(max_steps=1)
    wait_stopped(qtbot, session)
    snap = session.sim.snapshot()
    assert snap.record_times[0] == 0 and snap.corr[0, 0] < -0.3


def test_a_file_that_is_not_a_state_is_reported_and_the_state_stays(app_viewer, qtbot, tmp_path):
    _, session = app_viewer
    system = session.panels["System"]
    spins = session.sim.snapshot().spins
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"not hdf5")
    for path, problem in ((bad, "is not an HDF5 file"), (tmp_path / "none.h5", "no such file")):
        assert system.open_state(path)
        qtbot.waitUntil(lambda: system.job is None, timeout=TIMEOUT)
        assert system.message.value.startswith("⚠") and problem in system.message.value
        np.testing.assert_array_equal(session.sim.snapshot().spins, spins)


def test_preset_names_the_values_the_system_panel_holds(app_viewer):
    _, session = app_viewer
    panel = session.panels["System"]
    assert panel.preset.value == "Custom"  # N = 30
    panel.preset.value = "Larger quench (N = 500)"
    assert (panel.n.value, panel.J.value, panel.preset.value) == (
        500,
        6.0,
        "Larger quench (N = 500)",
    )
    panel.n.value = 100
    assert panel.preset.value == "Paper (N = 100)"
    panel.J.value = 1.0
    assert panel.preset.value == "Weak coupling (J = 1)"
    panel.r_min.value = 0.6
    assert panel.preset.value == "Custom"
    panel.preset.value = "Paper (N = 100)"
    assert (panel.r_min.value, panel.J.value, panel.n.value) == (0.5, 6.0, 100)


def test_the_dynamics_presets_set_the_running_stepper(app_viewer, qtbot):
    _, session = app_viewer
    panel = session.panels["Dynamics"]
    assert panel.preset.value == "Paper quench (alpha = 0.05)"  # the app's defaults
    panel.start()
    panel.preset.value = "Fast demo (alpha = 1)"
    assert (panel.alpha.value, panel.steps_per_frame.value) == (1.0, 5)
    assert session.sim.llg_config.alpha == 1.0 and session.steps_per_frame == 5
    steps = session.sim.step_count
    qtbot.waitUntil(lambda: session.sim.step_count >= steps + 10, timeout=TIMEOUT)
    assert session.sim.stepper.config.alpha == 1.0  # the run took it at its next step
    session.stop(wait=True)
    panel.temperature.value = 0.01
    assert panel.preset.value == "Custom"
    panel.preset.value = "Paper quench (alpha = 0.05)"
    assert (panel.temperature.value, panel.alpha.value, panel.steps_per_frame.value) == (
        0.001,
        0.05,
        1,
    )
    assert session.sim.llg_config == LLGConfig()


def test_launch_in_demo_mode_chooses_the_fast_demo_preset(make_napari_viewer):
    from app.launcher import launch, session_of

    session = session_of(launch(viewer=make_napari_viewer(), return_viewer=True, n=30, demo=True))
    assert session.panels["Dynamics"].preset.value == "Fast demo (alpha = 1)"
    assert session.sim.llg_config.alpha == 1.0 and session.steps_per_frame == 5


def test_invalid_system_shows_inline_message(app_viewer, generate):
    viewer, session = app_viewer
    panel = session.panels["System"]
    panel.keep_density.value = False
    panel.n.value = 2000
    panel.box.value = 5.0
    assert not generate(panel)
    assert "cannot pack" in panel.message.value
    assert viewer.layers["Atoms"].data.shape == (30, 3)


def test_no_model_disables_ml(make_napari_viewer, monkeypatch, tmp_path, choose_engine):
    import app.session
    from app.launcher import launch, session_of

    monkeypatch.setattr(app.session, "DEFAULT_MODEL", tmp_path / DEFAULT_MODEL.name)
    session = session_of(launch(viewer=make_napari_viewer(), return_viewer=True, n=30))
    assert session.model is None
    assert "No ML model available" in session.panels["Model"].card.value
    dyn = session.panels["Dynamics"]
    choose_engine(dyn, "ML (machine-learned)")
    assert dyn.engine.value.startswith("ED")
    assert not session.panels["Fields"].ml_button.enabled


def test_run_ed_steps_through_dynamics_panel(app_viewer, qtbot):
    viewer, session = app_viewer
    dyn = session.panels["Dynamics"]
    dyn.steps_per_frame.value = 3
    before = viewer.layers["Spins"].data.copy()
    dyn.start(max_steps=12)
    wait_stopped(qtbot, session)
    snap = session.sim.snapshot()
    assert snap.step == 12
    np.testing.assert_allclose(np.linalg.norm(snap.spins, axis=-1), 1.0, atol=1e-10)
    assert not np.allclose(viewer.layers["Spins"].data, before)
    session.plots.flush()
    assert len(session.plots.energy_line.get_xdata()) == 12 // 3
    assert len(session.plots.xi_line.get_xdata()) >= 5
    assert "step 12" in dyn.readout.value


def test_pause_resume_stop(app_viewer, qtbot):
    _, session = app_viewer
    dyn = session.panels["Dynamics"]
    dyn.steps_per_frame.value = 1
    dyn.start()
    qtbot.waitUntil(lambda: session.sim.step_count >= 2, timeout=TIMEOUT)
    dyn.pause_button.clicked.emit()
    assert session.state in ("pausing", "paused") and dyn.pause_button.text == "Resume"
    qtbot.waitUntil(lambda: session.state == "paused", timeout=TIMEOUT)  # the step has ended
    paused_at = session.sim.step_count
    qtbot.wait(300)
    assert session.sim.step_count <= paused_at + 1
    dyn.pause_button.clicked.emit()
    assert session.state == "running"
    qtbot.waitUntil(lambda: session.sim.step_count > paused_at + 1, timeout=TIMEOUT)
    dyn.stop_button.clicked.emit()
    wait_stopped(qtbot, session)
    assert session.state == "stopped" and dyn.start_button.enabled


@pytest.fixture
def slow_readout(app_viewer, monkeypatch):
    """The Dynamics panel with steps of 0.8 s, counted in its readout from 0.2 s on."""
    from app.panels import dynamics

    monkeypatch.setattr(dynamics, "SLOW_STEP_S", 0.2)
    _, session = app_viewer
    dyn = session.panels["Dynamics"]
    dyn._ticker.setInterval(50)
    slow_steps(session, 0.4)
    return session, dyn


def test_a_slow_step_counts_its_seconds_and_stop_says_it_waits_for_it(slow_readout, qtbot):
    session, dyn = slow_readout
    dyn.start()
    qtbot.waitUntil(lambda: "computing step 1: " in dyn.readout.value, timeout=TIMEOUT)
    assert dyn.readout.value.endswith("[running]")
    dyn.stop_button.clicked.emit()  # mid-step: the run ends after it
    assert session.state == "stopping" and dyn.readout.value.endswith("[stopping]")
    assert not (dyn.start_button.enabled or dyn.stop_button.enabled or dyn.pause_button.enabled)
    wait_stopped(qtbot, session)
    assert session.state == "stopped" and dyn.start_button.enabled
    assert session.sim.step_count == 1
    assert "steps/s   [stopped]" in dyn.readout.value and "computing" not in dyn.readout.value


def test_pause_during_a_slow_step_says_pausing_until_the_step_has_ended(slow_readout, qtbot):
    session, dyn = slow_readout
    dyn.start()
    qtbot.waitUntil(lambda: "computing step 1: " in dyn.readout.value, timeout=TIMEOUT)
    dyn.pause_button.clicked.emit()  # mid-step: the CPU is still busy with it
    assert session.state == "pausing" and dyn.pause_button.text == "Resume"
    qtbot.waitUntil(lambda: dyn.readout.value.endswith("[pausing]"), timeout=TIMEOUT)
    assert "computing step 1: " in dyn.readout.value
    assert dyn.pause_button.enabled and dyn.stop_button.enabled
    qtbot.waitUntil(lambda: session.state == "paused", timeout=TIMEOUT)
    assert session.sim.step_count == 1 and dyn.readout.value.endswith("[paused]")
    assert "computing" not in dyn.readout.value
    qtbot.wait(1200)  # no step while paused
    assert session.sim.step_count == 1 and session.state == "paused"
    dyn.stop_button.clicked.emit()
    wait_stopped(qtbot, session)
    assert session.sim.step_count == 1


def test_an_engine_chosen_during_a_slow_step_is_taken_after_it_while_the_window_goes_on(
    app_viewer, qtbot, tiny_model_file, choose_model
):
    from qtpy.QtCore import QTimer

    _, session = app_viewer
    dyn = session.panels["Dynamics"]
    assert choose_model(session.panels["Model"], tiny_model_file)  # one for N = 30
    begun = slow_steps(session, 0.4)
    dyn.start()
    qtbot.waitUntil(begun.is_set, timeout=TIMEOUT)  # step 1 in progress
    seen = []
    dyn.engine.value = "ML (machine-learned)"  # ready at once, taken when step 1 ends
    QTimer.singleShot(100, lambda: seen.append(session.sim.engine))
    qtbot.waitUntil(lambda: bool(seen), timeout=TIMEOUT)
    # the window went on meanwhile: the switch waits for the step in a worker thread
    assert seen == ["ed"] and session.sim.step_count == 0
    qtbot.waitUntil(lambda: dyn.job is None, timeout=TIMEOUT)
    assert session.sim.engine == "ml" and session.sim.step_count >= 1
    session.stop(wait=True)


def test_saving_mid_step_saves_the_state_shown_without_waiting_for_the_step(
    app_viewer, qtbot, tmp_path
):
    import time

    from core.io import read_frames, read_trajectory

    _, session = app_viewer
    export = session.panels["Export"]
    export.path.value = tmp_path / "mid"
    session.panels["Dynamics"].steps_per_frame.value = 1
    begun = slow_steps(session, 0.5)  # a step of 1 s
    session.start()
    qtbot.waitUntil(lambda: session.sim.step_count >= 1, timeout=TIMEOUT)
    qtbot.waitUntil(lambda: session.last_snapshot.step >= 1, timeout=TIMEOUT)
    begun.clear()
    qtbot.waitUntil(begun.is_set, timeout=TIMEOUT)  # the next step is in progress
    shown = session.last_snapshot
    start = time.perf_counter()
    frames = read_frames(export.save_frames()[0])
    traj = read_trajectory(export.save_trajectory()[0])
    assert time.perf_counter() - start < 0.4  # the step holds the simulation for ~1 s
    np.testing.assert_array_equal(frames.spins, shown.spins)
    np.testing.assert_array_equal(traj.times, shown.record_times)
    session.stop(wait=True)


def test_pause_and_resume_within_one_long_step_keep_the_run_going(app_viewer, qtbot):
    _, session = app_viewer
    dyn = session.panels["Dynamics"]
    begun = slow_steps(session, 0.3)  # a step of 0.6 s: both clicks land within it
    dyn.start()
    qtbot.waitUntil(begun.is_set, timeout=TIMEOUT)  # step 1 in progress
    dyn.pause_button.clicked.emit()
    assert session.state == "pausing"
    dyn.pause_button.clicked.emit()  # Resume before step 1 has ended
    assert session.state == "running"
    # the run goes on (the worker used to pause later, on its own, under "running")
    qtbot.waitUntil(lambda: session.sim.step_count >= 4, timeout=TIMEOUT)
    dyn.stop_button.clicked.emit()
    wait_stopped(qtbot, session)


def configs_of_each_step(session, qtbot, change) -> list:
    """The LLG config each step of a run used; change(dyn) turns the panel's knobs mid-run."""
    dyn = session.panels["Dynamics"]
    seen = []
    stepper = session.sim.stepper
    original = stepper.step

    def spy(spins):
        seen.append(stepper.config)
        return original(spins)

    stepper.step = spy
    dyn.steps_per_frame.value = 1
    dyn.start()
    qtbot.waitUntil(lambda: len(seen) >= 2, timeout=TIMEOUT)
    change(dyn)
    n = len(seen)
    qtbot.waitUntil(lambda: len(seen) >= n + 2, timeout=TIMEOUT)
    session.stop(wait=True)
    return seen


def test_temperature_change_mid_run_reaches_stepper_and_the_exported_run(
    app_viewer, qtbot, tmp_path
):
    from core.io import parameter_changes, read_trajectory

    _, session = app_viewer

    def warm(dyn):
        dyn.temperature.value = 0.25

    seen = configs_of_each_step(session, qtbot, warm)
    assert seen[0].temperature == pytest.approx(0.001)
    assert seen[-1].temperature == pytest.approx(0.25)
    # the trajectory file says when the run was warmed, not only the final temperature
    export = session.panels["Export"]
    export.path.value = tmp_path / "run"
    traj = read_trajectory(export.save_trajectory()[0])
    warmed = next(k for k, c in enumerate(seen) if c.temperature == pytest.approx(0.25))
    (change,) = parameter_changes(traj)
    assert change["step"] == warmed and change["temperature"] == [0.001, 0.25]
    assert change["t"] == pytest.approx(warmed * seen[0].dt)
    assert traj.attrs["temperature"] == pytest.approx(0.25)


def test_worker_error_stops_cleanly(app_viewer, qtbot, monkeypatch):
    _, session = app_viewer

    def broken(n_steps):
        raise RuntimeError("boom")

    monkeypatch.setattr(session.sim, "advance", broken)
    notification_manager.records.clear()
    session.panels["Dynamics"].start()
    wait_stopped(qtbot, session)
    assert session.state == "stopped"
    assert any("boom" in e for e in session.errors)
    assert any("boom" in str(r.message) for r in notification_manager.records)


def test_model_card_fits_the_dock(app_viewer, choose_model):
    from core.paths import PAIRWISE_MODEL

    _, session = app_viewer
    panel = session.panels["Model"]
    assert choose_model(panel, PAIRWISE_MODEL)  # its card names a dataset by its sha256
    sha = session.card.training["dataset_sha256"]
    assert sha[:12] in panel.card.value and sha not in panel.card.value
    # no unbreakable word widens the panel: its labels wrap within a dock's width
    assert panel.native.minimumSizeHint().width() < 400
    assert panel.exchange_label.native.sizePolicy().horizontalPolicy() == QSizePolicy.Expanding


def test_a_shipped_model_loads_from_the_model_panels_list(app_viewer, qtbot, tiny_model_file,
                                                          choose_model):  # fmt: skip
    _, session = app_viewer
    panel = session.panels["Model"]
    assert {"default.safetensors", "fast.safetensors"} <= set(panel.shipped.choices)
    assert panel.shipped.value == "fast.safetensors"  # the model in use: the default
    assert "Rc = 2.5 ell (triplets 1.8 ell)" in panel.card.value
    panel.shipped.value = "default.safetensors"
    qtbot.waitUntil(lambda: panel.job is None, timeout=60_000)
    assert session.model_path.name == "default.safetensors"
    assert "triplets" not in panel.card.value
    assert str(panel.path.value).endswith("default.safetensors")
    # a model from elsewhere: the list names no shipped model
    assert choose_model(panel, tiny_model_file)
    assert panel.shipped.value is None


def test_model_panel_draws_the_pairwise_baselines_exchange(
    app_viewer, tmp_path, generate, choose_model
):
    from core.modelfile import load_model, save_model
    from core.paths import PAIRWISE_MODEL

    _, session = app_viewer
    panel = session.panels["Model"]
    assert session.model.arch.kind == "mlp"  # the shipped MLP is loaded ...
    line = panel.exchange.figure.axes[0].lines[0]  # ... and J(R) is the shipped baseline's
    baseline, card = load_model(PAIRWISE_MODEL)
    np.testing.assert_allclose(line.get_ydata(), baseline.exchange(line.get_xdata()))
    assert "pairwise baseline pairwise.safetensors" in panel.exchange_label.value
    assert "⚠" not in panel.exchange_label.value
    assert str(panel.path.value).endswith("fast.safetensors")
    # a system the baseline was not trained for: the note says what differs
    session.panels["System"].preset.value = "Weak coupling (J = 1)"
    assert generate(session.panels["System"])
    assert "J = 6 but is used with J = 1" in panel.exchange_label.value
    # a loaded pairwise model draws its own J(R)
    baseline.net[-1].weight.data *= 2
    mine = save_model(tmp_path / "mine.safetensors", baseline, card)
    assert choose_model(panel, mine)
    line = panel.exchange.figure.axes[0].lines[0]
    np.testing.assert_allclose(line.get_ydata(), baseline.exchange(line.get_xdata()))
    assert "mine.safetensors" in panel.exchange_label.value


def test_corrupted_model_file_notifies(app_viewer, tmp_path, choose_model):
    _, session = app_viewer
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00\x01 not a model")
    notification_manager.records.clear()
    before = session.model
    assert not choose_model(session.panels["Model"], bad)
    assert session.model is before
    messages = [str(r.message) for r in notification_manager.records]
    assert any("Could not load model" in m for m in messages)
    assert "Could not load model" in session.panels["Model"].card.value


def test_ml_model_load_run_and_compare(
    app_viewer, qtbot, tiny_model_file, choose_engine, choose_model
):
    _, session = app_viewer
    assert choose_model(session.panels["Model"], tiny_model_file)
    assert "MLP 8" in session.panels["Model"].card.value
    dyn = session.panels["Dynamics"]
    choose_engine(dyn, "ML (machine-learned)")
    assert session.sim.engine == "ml"
    dyn.steps_per_frame.value = 2
    dyn.start(max_steps=6)
    wait_stopped(qtbot, session)
    snap = session.sim.snapshot()
    assert snap.step == 6
    np.testing.assert_allclose(np.linalg.norm(snap.spins, axis=-1), 1.0, atol=1e-5)
    session.plots.flush()
    assert len(session.plots.energy_line.get_xdata()) == 3
    fields = session.panels["Fields"]
    fields.compare()
    qtbot.waitUntil(lambda: fields.last_comparison is not None, timeout=TIMEOUT)
    stats = fields.last_comparison
    state = session.sim.compute_fields("ed", "ml")
    (h_ed, _), (h_ml, _) = state.fields["ed"], state.fields["ml"]
    s = snap.spins
    np.testing.assert_array_equal(state.spins, s)
    expected = np.sqrt(np.mean((np.cross(s, h_ml) - np.cross(s, h_ed)) ** 2))
    assert stats["rmse_hperp"] == pytest.approx(expected, rel=1e-6)
    assert "RMSE" in fields.result.value
    assert session.scene.quantity == "ML-ED field error"
    assert fields.parity.points == 30 * 3
    # loading a model while the ML engine is selected swaps the provider's model too
    assert choose_model(session.panels["Model"], tiny_model_file)
    assert session.sim.provider.model is session.model


def test_fields_panel_computes_ed_fields(app_viewer, qtbot):
    _, session = app_viewer
    fields = session.panels["Fields"]
    fields.compute("ed")
    assert fields.result.value == "Computing ED fields..."  # while the worker runs
    assert not fields.ed_button.enabled
    qtbot.waitUntil(lambda: session.scene.fields is not None, timeout=TIMEOUT)
    qtbot.waitUntil(lambda: fields.job is None, timeout=TIMEOUT)
    assert fields.result.value.startswith("ED at step 0: E/N = ") and fields.ed_button.enabled
    assert session.scene.fields.shape == (30, 3)
    fields.colour_by.value = "|H_perp|"
    assert np.all(session.scene.quantity_values() > 0)


def test_export_frames_trajectory_plots(app_viewer, qtbot, tmp_path):
    from core.io import read_frames, read_trajectory

    _, session = app_viewer
    session.panels["Dynamics"].start(max_steps=8)
    wait_stopped(qtbot, session)
    export = session.panels["Export"]
    export.path.value = tmp_path / "run"
    frames = read_frames(export.save_frames()[0])
    assert frames.spins.shape == (1, 30, 3)
    traj = read_trajectory(export.save_trajectory()[0])
    assert traj.n_times == len(session.sim.snapshot().record_times)
    paths = export.save_plots()
    assert all(Path(p).stat().st_size > 0 for p in paths) and len(paths) == 6
    assert sorted(p.suffix for p in paths) == [".csv"] * 3 + [".png"] * 3
    # existing files are kept unless Overwrite is ticked
    before = paths[0].read_bytes()
    export._do(export.save_plots)
    assert "exists" in export.message.value and paths[0].read_bytes() == before
    assert "ff6b6b" in export.message.native.styleSheet()  # an error reads red
    assert str(notification_manager.records[-1].message).startswith(str(paths[0]))
    export.overwrite.value = True
    export._do(export.save_plots)
    assert export.message.value.startswith("wrote ") and not export.message.native.styleSheet()
    # a path typed with ~ means the home folder
    export.path.value = "~/run"
    assert export._base() == Path.home() / "run"
    export.path.value = tmp_path  # a folder: the files go inside it
    (frame,) = export.save_frames()
    assert frame == tmp_path / "sdglass-export.frames.h5" and frame.is_file()


def test_a_movie_of_the_run_is_filmed_while_running(make_napari_viewer, qtbot, tmp_path):
    import imageio_ffmpeg

    from app.launcher import launch, session_of

    # shown: a hidden window's canvas renders black
    viewer = launch(viewer=make_napari_viewer(show=True), return_viewer=True, n=30)
    session = session_of(viewer)
    export, dyn = session.panels["Export"], session.panels["Dynamics"]
    export.path.value = tmp_path / "run"
    export.movie.value = True  # stopped: filming starts with the run
    assert (
        export.filming is None and export.message.value == "filming starts with the run -> run.mp4"
    )
    slow_steps(session, 0.02)
    dyn.start(max_steps=40)  # ~1 s: about 10 frames at MOVIE_FPS
    qtbot.waitUntil(lambda: export.filming is not None, timeout=TIMEOUT)
    movie = export.filming.recorder
    wait_stopped(qtbot, session)
    path = tmp_path / "run.mp4"
    assert export.filming is None and path.is_file() and movie.frames >= 3
    frames, _seconds = imageio_ffmpeg.count_frames_and_secs(str(path))
    assert frames == movie.frames
    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    assert meta["codec"] == "h264" and meta["fps"] == 10
    width, height = meta["size"]
    assert width % 16 == 0 and height % 16 == 0
    image = np.frombuffer(next(reader), np.uint8).reshape(height, width, 3)
    assert image.std() > 0  # the scene, not a blank frame
    reader.close()
    assert [p.name for p in tmp_path.iterdir()] == ["run.mp4"]  # no partial file left
    # the next run would overwrite it: refused, the box unticks and the movie stays
    before = path.read_bytes()
    dyn.start(max_steps=2)
    wait_stopped(qtbot, session)
    assert not export.movie.value and "run.mp4 exists" in export.message.value
    assert path.read_bytes() == before
    session.stop(wait=True)


def test_fit_psi_button(app_viewer, qtbot):
    _, session = app_viewer
    session.panels["Dynamics"].steps_per_frame.value = 10
    session.panels["Dynamics"].dt.value = 0.1  # t = 10: records from t = 1.5 on to fit
    session.panels["Dynamics"].start(max_steps=100)
    wait_stopped(qtbot, session)
    session.plots.fit_button.click()
    assert "psi" in session.plots.fit_label.text()
    fit = session.plots.fit
    assert fit is not None and fit.t_min >= 1.5
    later = float(session.plots.snapshot.record_times[-4])  # the last 4 records
    session.plots.fit_from.setValue(later - 0.05)
    session.plots.fit_button.click()
    assert session.plots.fit.n_points == 4 and session.plots.fit.t_min >= later - 0.05
    assert f"t in [{session.plots.fit.t_min:.3g}" in session.plots.fit_label.text()
    session.plots.fit_from.setValue(1e5)  # after the run: no records to fit
    session.plots.fit_button.click()
    assert session.plots.fit is None and "at least 3 points" in session.plots.fit_label.text()


def test_screenshot_and_movie_cli_produce_nonblank_pictures(tmp_path):
    import imageio_ffmpeg
    import matplotlib.image as mpimg

    out, movie = tmp_path / "shot.png", tmp_path / "run.mp4"
    cmd = [sys.executable, "-m", "app", "--steps", "6", "--screenshot", str(out)]
    cmd += ["--demo", "--movie", str(movie)]  # the fast demo preset: 5 steps per frame
    cmd += ["--compare"]  # exit status 1 without a comparison of the final spins
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    img = mpimg.imread(out)
    assert img.shape[0] > 500 and img.shape[1] > 800
    assert img[..., :3].std() > 0.05
    reader = imageio_ffmpeg.read_frames(str(movie))
    width, height = next(reader)["size"]
    first = np.frombuffer(next(reader), np.uint8).reshape(height, width, 3)
    reader.close()
    assert width > 400 and height > 300 and first.std() > 5  # the 3D view, not black


def test_window_fits_a_laptop_screen_with_every_panel_reachable(make_napari_viewer, qtbot):
    from qtpy.QtWidgets import QScrollArea

    from app.launcher import fit_to_screen, launch, session_of

    viewer = launch(viewer=make_napari_viewer(show=True), return_viewer=True, n=30)
    session, window = session_of(viewer), viewer.window._qt_window
    for name, panel in session.panels.items():  # a dock may be shorter than its panel: it scrolls
        assert isinstance(panel.native.parent().parent(), QScrollArea), name
    assert window.minimumSizeHint().height() <= 900  # the panels stacked are taller than that
    screen = window.screen().availableGeometry()
    assert window.width() <= screen.width() and window.height() <= screen.height()
    fit_to_screen(window, (10**5, 10**5))
    assert (window.width(), window.height()) == (screen.width(), screen.height())
    # Dynamics (Start, readout) is shown whole; System gives way
    dynamics = session.panels["Dynamics"].native
    viewport = dynamics.parent()
    qtbot.waitUntil(lambda: viewport.height() >= dynamics.sizeHint().height(), timeout=5000)


def test_launch_with_steps_runs_them_on_a_viewer_that_is_not_shown(make_napari_viewer, qtbot):
    from app.launcher import launch, session_of

    session = session_of(launch(viewer=make_napari_viewer(), return_viewer=True, n=30, steps=5))
    qtbot.waitUntil(lambda: session.sim.step_count == 5 and session.worker is None, timeout=TIMEOUT)


def test_launch_with_compare_shows_the_ml_error_of_the_final_spins(
    make_napari_viewer, qtbot, tmp_path
):
    from app.launcher import launch, session_of

    shot = tmp_path / "compare.png"
    viewer = launch(
        viewer=make_napari_viewer(show=True), return_viewer=True, steps=10, engine="ml",
        compare=True, screenshot=shot,
    )  # fmt: skip
    session = session_of(viewer)
    fields, docks = session.panels["Fields"], session.docks
    assert fields.track.value  # "Compare during runs"
    qtbot.waitUntil(shot.is_file, timeout=TIMEOUT)
    assert fields.last_comparison["step"] == session.sim.step_count == 10
    assert fields.history[-1][1] == 10 and fields.parity.points > 0
    assert fields.colour_by.value == "ML-ED field error"
    assert docks["Dynamics"].visibleRegion().isEmpty()  # behind the Fields tab, raised
    assert not docks["Fields"].visibleRegion().isEmpty()
    bar = fields.native.parent().parent().verticalScrollBar()
    assert bar.value() == bar.maximum()  # scrolled down to the parity plot and error history


def test_measure_cli_starts_once_the_window_is_drawn_and_writes_the_report(tmp_path):
    import json

    out = tmp_path / "m.json"
    cmd = [sys.executable, "-m", "app", "-n", "60", "--steps", "40", "--measure", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["steps"] == 40 and report["n"] == 60 and report["engine"] == "ed"
    assert report["snapshots_per_second"] * report["wall_seconds"] >= 2  # frames were shown
    assert report["max_stall_ms"] >= report["p99_stall_ms"] >= 0
    assert "steps=40" in proc.stdout
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "refusing to overwrite" in proc.stderr


def test_compare_rmse_equals_sdglass_eval_on_the_same_frame(
    app_viewer, qtbot, tiny_model_file, tmp_path, capsys, choose_model
):
    import json

    from core import cli

    _, session = app_viewer
    assert choose_model(session.panels["Model"], tiny_model_file)
    fields = session.panels["Fields"]
    fields.compare()
    qtbot.waitUntil(lambda: fields.last_comparison is not None, timeout=TIMEOUT)
    export = session.panels["Export"]
    export.path.value = tmp_path / "state"
    (frame,) = export.save_frames()
    labelled = tmp_path / "labelled.h5"
    assert cli.main(["label", str(frame), "-o", str(labelled)]) == 0
    capsys.readouterr()
    assert cli.main(["eval", str(tiny_model_file), str(labelled), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    app = fields.last_comparison
    assert report["n_frames"] == 1 and report["n_atoms"] == 30
    assert app["rmse_hperp"] == pytest.approx(report["rmse_hperp"], rel=1e-5)
    assert app["mae_hperp"] == pytest.approx(report["mae_hperp"], rel=1e-5)


def test_compare_during_a_run_takes_both_fields_of_one_state(
    app_viewer, qtbot, tiny_model_file, choose_model
):
    from core.electrons import EDSolver
    from core.model import MLFieldProvider

    viewer, session = app_viewer
    assert choose_model(session.panels["Model"], tiny_model_file)
    session.panels["Dynamics"].start()
    qtbot.waitUntil(lambda: session.sim.step_count >= 3, timeout=TIMEOUT)
    fields = session.panels["Fields"]
    fields.compare()
    qtbot.waitUntil(lambda: fields.last_comparison is not None, timeout=TIMEOUT)
    session.stop(wait=True)
    stats = fields.last_comparison
    assert 3 <= stats["step"] <= session.sim.step_count
    s = stats["spins"]
    spins = torch.from_numpy(s)
    h_ed = EDSolver(session.sim.system, session.sim.electrons).fields(spins)[0].numpy()
    h_ml = MLFieldProvider(session.model, session.sim.system).fields(spins)[0].numpy()
    error = np.linalg.norm(np.cross(s, h_ml) - np.cross(s, h_ed), axis=-1)
    np.testing.assert_allclose(stats["per_atom"], error, rtol=1e-4, atol=1e-9)
    assert fields.result.value.startswith(f"ML vs ED at step {stats['step']}\nH_perp RMSE")
    legend = viewer.canvas.overlays.text.text
    assert legend.startswith(f"Colour: ML-ED field error at step {stats['step']} from ")


def test_the_engine_is_prepared_in_the_background_while_the_run_goes_on(
    app_viewer, qtbot, tiny_model_file, choose_model
):

    from core.model import MLFieldProvider

    _, session = app_viewer
    assert choose_model(session.panels["Model"], tiny_model_file)
    prepare, release = session.sim.prepare_engine, threading.Event()

    def held(engine):  # a descriptor set-up that takes until the test releases it
        release.wait(timeout=30)
        return prepare(engine)

    session.sim.prepare_engine = held
    dyn = session.panels["Dynamics"]
    dyn.start()
    dyn.engine.value = "ML (machine-learned)"
    assert dyn.message.value == "Preparing ML (machine-learned)..." and not dyn.engine.enabled
    steps = session.sim.step_count
    qtbot.waitUntil(lambda: session.sim.step_count >= steps + 3, timeout=TIMEOUT)
    assert session.sim.engine == "ed" and session.running  # ED steps on meanwhile
    release.set()
    qtbot.waitUntil(lambda: dyn.job is None, timeout=TIMEOUT)
    assert session.sim.engine == "ml" and isinstance(session.sim.provider, MLFieldProvider)
    assert session.running and dyn.engine.enabled and dyn.message.value == ""
    steps = session.sim.step_count
    qtbot.waitUntil(lambda: session.sim.step_count >= steps + 3, timeout=TIMEOUT)  # ML steps
    session.stop(wait=True)
    (change,) = session.sim.snapshot().changes  # marked on the plots, kept in an export
    assert change["engine"] == ["ed", "ml"] and 0 < change["step"] <= steps


def test_a_model_is_read_in_the_background_while_the_run_goes_on(
    app_viewer, qtbot, tiny_model_file, choose_model, choose_engine
):

    _, session = app_viewer
    panel, dyn = session.panels["Model"], session.panels["Dynamics"]
    assert choose_model(panel, tiny_model_file)
    choose_engine(dyn, "ML (machine-learned)")
    first = session.sim.provider
    read, release = session.read_model, threading.Event()

    def held(path):  # a descriptor set-up that takes until the test releases it
        release.wait(timeout=30)
        return read(path)

    session.read_model = held
    dyn.start()
    assert panel.load(tiny_model_file) and not panel.load(tiny_model_file)  # one at a time
    assert panel.message.value == f"Loading {tiny_model_file.name}..."
    assert not panel.load_button.enabled
    steps = session.sim.step_count
    qtbot.waitUntil(lambda: session.sim.step_count >= steps + 3, timeout=TIMEOUT)
    assert session.sim.provider is first and session.running  # the old model steps on
    release.set()
    qtbot.waitUntil(lambda: panel.job is None, timeout=TIMEOUT)
    assert session.sim.provider is not first and session.sim.provider.model is session.model
    assert session.running and panel.load_button.enabled
    assert panel.message.value.startswith(f"Loaded {tiny_model_file.name} in ")
    steps = session.sim.step_count
    qtbot.waitUntil(lambda: session.sim.step_count >= steps + 3, timeout=TIMEOUT)  # new model
    session.stop(wait=True)


def test_an_engine_prepared_while_a_model_loads_takes_the_new_model(
    app_viewer, qtbot, tiny_model_file, choose_model
):

    _, session = app_viewer
    panel, dyn = session.panels["Model"], session.panels["Dynamics"]
    assert choose_model(panel, tiny_model_file)
    prepare, release = session.sim.prepare_engine, threading.Event()

    def held(engine):
        release.wait(timeout=30)
        return prepare(engine)

    session.sim.prepare_engine = held
    dyn.engine.value = "ML (machine-learned)"  # prepared for the first model, held
    session.sim.prepare_engine = prepare
    assert choose_model(panel, tiny_model_file)  # under ED: no provider to build
    release.set()
    qtbot.waitUntil(lambda: dyn.job is None, timeout=TIMEOUT)
    assert session.sim.engine == "ml"
    assert session.sim.model is session.model and session.sim.provider.model is session.model


def test_the_3d_view_shows_the_replica_chosen(app_viewer, qtbot, tiny_model_file, choose_model):
    viewer, session = app_viewer
    assert choose_model(session.panels["Model"], tiny_model_file)
    fields, dyn = session.panels["Fields"], session.panels["Dynamics"]
    dyn.replicas.value = 3
    assert fields.replica.max == 2
    dyn.start(max_steps=4)
    wait_stopped(qtbot, session)
    fields.replica.value = 2
    snap = session.sim.snapshot()
    np.testing.assert_array_equal(session.scene.spins, snap.spins[2])
    assert viewer.canvas.overlays.text.text.endswith("(coolwarm), replica 2 of 0-2")
    np.testing.assert_allclose(np.asarray(viewer.layers["Atoms"].face_color)[:, :3],
                               colormaps["coolwarm"]((snap.spins[2, :, 2] + 1) / 2)[:, :3],
                               atol=1e-6)  # fmt: skip
    fields.colour_by.value = "local energy (ML)"
    np.testing.assert_allclose(session.scene.local_energy, session.sim.local_energies()[2])
    fields.compute("ed")
    qtbot.waitUntil(lambda: fields.job is None, timeout=TIMEOUT)
    assert fields.result.value.startswith("ED at step 4, replica 2: ")
    h = session.sim.compute_fields("ed").fields["ed"][0]
    np.testing.assert_allclose(session.scene.fields, h[2])
    fields.compare()
    qtbot.waitUntil(lambda: fields.job is None, timeout=TIMEOUT)
    np.testing.assert_array_equal(session.scene.error, fields.last_comparison["per_atom"][2])
    fields.replica.value = 1  # the last comparison's errors of that replica
    np.testing.assert_array_equal(session.scene.error, fields.last_comparison["per_atom"][1])
    np.testing.assert_array_equal(session.scene.spins, snap.spins[1])
    dyn.replicas.value = 1  # fewer replicas: the only one is shown
    qtbot.waitUntil(lambda: fields.replica.max == 0, timeout=TIMEOUT)
    assert fields.replica.value == 0
    np.testing.assert_array_equal(session.scene.spins, session.sim.snapshot().spins[0])
    assert "replica" not in viewer.canvas.overlays.text.text


def test_a_new_system_clears_the_results_of_the_old(
    app_viewer, qtbot, tiny_model_file, generate, choose_model
):
    _, session = app_viewer
    assert choose_model(session.panels["Model"], tiny_model_file)
    fields = session.panels["Fields"]
    fields.compare()
    qtbot.waitUntil(lambda: fields.last_comparison is not None, timeout=TIMEOUT)
    assert fields.parity.points == 90 and fields.result.value.startswith("ML vs ED")
    assert generate(session.panels["System"])
    assert fields.last_comparison is None and fields.result.value == ""
    assert fields.parity.points == 0 and not fields.parity.ax.lines
    assert fields.parity.ax.get_title() == "Compare ML vs ED to fill"
    assert fields.history == [] and not fields.error_history.ax.lines


def test_compare_during_runs_follows_the_ml_error_along_the_quench(
    app_viewer, qtbot, tiny_model_file, choose_model, monkeypatch, tmp_path
):
    import app.panels.fields as fields_module

    monkeypatch.setattr(fields_module, "TRACK_MIN_S", 0.0)
    _, session = app_viewer
    assert choose_model(session.panels["Model"], tiny_model_file)
    fields, dyn = session.panels["Fields"], session.panels["Dynamics"]
    fields.colour_by.value = "S_z"
    fields.track.value = True
    slow_steps(session, 0.01)  # a run long enough for several comparisons
    dyn.start(max_steps=300)
    qtbot.waitUntil(lambda: len(fields.history) >= 3, timeout=TIMEOUT)
    session.stop(wait=True)
    # one more comparison of the spins the run stopped at
    qtbot.waitUntil(lambda: fields.history[-1][1] == session.sim.step_count, timeout=TIMEOUT)
    qtbot.waitUntil(lambda: fields.job is None, timeout=TIMEOUT)
    t, steps, rmse = (list(column) for column in zip(*fields.history, strict=True))
    assert steps == sorted(steps) and len(set(steps)) == len(steps)  # fresh spins each time
    assert t == pytest.approx([k * session.sim.llg_config.dt for k in steps])
    last = fields.last_comparison
    assert (t[-1], steps[-1], rmse[-1]) == (last["t"], last["step"], last["rmse_hperp"])
    assert all(r > 0 for r in rmse)
    # the plot shows every comparison; the colouring chosen stays
    (line,) = fields.error_history.ax.lines
    np.testing.assert_allclose(line.get_xdata(), t)
    np.testing.assert_allclose(line.get_ydata(), rmse)
    assert fields.colour_by.value == "S_z"
    # Save plots writes both plots of the Fields panel with their data too
    export = session.panels["Export"]
    export.path.value = tmp_path / "run"
    paths = export.save_plots()
    assert len(paths) == 10 and all(p.stat().st_size > 0 for p in paths)
    history = np.loadtxt(tmp_path / "run-ml-error.csv", delimiter=",", skiprows=1, ndmin=2)
    np.testing.assert_allclose(history, fields.history)
    parity = np.loadtxt(tmp_path / "run-parity.csv", delimiter=",", skiprows=1)
    replica, atom, component = parity[:, :3].astype(int).T
    np.testing.assert_allclose(parity[:, 3], last["hperp_ed"][replica, atom, component])
    np.testing.assert_allclose(parity[:, 4], last["hperp_ml"][replica, atom, component])
    # new spins (a new quench) start the history again, from their comparison at t = 0
    dyn.reset()
    qtbot.waitUntil(lambda: [step for _, step, _ in fields.history] == [0], timeout=TIMEOUT)
    qtbot.waitUntil(lambda: fields.job is None, timeout=TIMEOUT)
    assert len(fields.history) == 1


def test_fields_of_a_system_replaced_meanwhile_are_dropped(app_viewer, qtbot, generate):

    viewer, session = app_viewer
    compute, release = session.sim.compute_fields, threading.Event()

    def held(*engines):  # takes its state at once, returns when the test lets it
        state = compute(*engines)
        release.wait(timeout=30)
        return state

    session.sim.compute_fields = held
    fields, system = session.panels["Fields"], session.panels["System"]
    fields.compute("ed")
    system.n.value = 40
    assert generate(system)
    release.set()
    qtbot.waitUntil(lambda: fields.job is None, timeout=TIMEOUT)
    assert fields.result.value == "⚠ result dropped: a new system was generated meanwhile"
    assert session.scene.fields is None and viewer.layers["Atoms"].data.shape == (40, 3)


def test_plugins_menu_entry_docks_the_explorer(make_napari_viewer):
    from npe2 import PluginManager

    from app.launcher import session_of

    manager = PluginManager.instance()
    manager.discover()
    assert "sdglass" in {m.name for m in manager.iter_manifests()}
    viewer = make_napari_viewer()
    _dock, widget = viewer.window.add_plugin_dock_widget("sdglass", "sdglass explorer")
    assert "panels docked" in widget.status.value
    session = session_of(viewer)
    assert set(session.panels) == {"System", "Dynamics", "Fields", "Model", "Export"}
    assert viewer.layers["Atoms"].data.shape[0] == 100
    session.stop(wait=True)


def test_a_closed_panel_comes_back_from_the_window_menu_and_the_plugins_menu(app_viewer, qtbot):
    viewer, session = app_viewer
    window = viewer.window
    for name in ("Dynamics", "Live plots"):
        dock = window._wrapped_dock_widgets[name]
        dock.title.close_button.click()  # the x in the panel's title bar
        assert dock.isHidden()
    qtbot.wait(50)  # a panel closed at once must not upset the first layout pass
    dynamics = session.panels["Dynamics"]
    dynamics.start(max_steps=6)  # the run goes on with its panels hidden
    qtbot.waitUntil(lambda: session.state == "stopped", timeout=TIMEOUT)
    assert session.sim.step_count == 6
    toggles = {a.text(): a for a in window.window_menu.actions()}
    toggles["Dynamics"].trigger()
    assert not window._wrapped_dock_widgets["Dynamics"].isHidden()
    assert dynamics.readout.value.startswith("step 6 ")
    # Plugins > sdglass explorer on a viewer that has the panels: shown again, not doubled
    _dock, widget = window.add_plugin_dock_widget("sdglass", "sdglass explorer")
    assert "shown again" in widget.status.value
    assert not window._wrapped_dock_widgets["Live plots"].isHidden()
    assert [layer.name for layer in viewer.layers].count("Atoms") == 1


def test_file_open_and_drop_open_an_sdglass_state(
    app_viewer, make_napari_viewer, qtbot, tmp_path, generate
):
    from app.launcher import session_of
    from app.plugin import get_reader

    viewer, session = app_viewer
    system = session.panels["System"]
    export = session.panels["Export"]
    export.path.value = tmp_path / "state"
    (path,) = export.save_frames()
    saved, positions = session.sim.snapshot().spins, session.sim.system.positions.copy()
    system.n.value = 40
    assert generate(system)
    layers = [layer.name for layer in viewer.layers]
    viewer.open(str(path), plugin="sdglass")  # File > Open, or the file dropped on the window
    qtbot.waitUntil(lambda: system.job is None, timeout=TIMEOUT)
    assert system.message.value.startswith(f"Opened {path.name}")
    assert Path(system.state_path.value) == path
    np.testing.assert_array_equal(session.sim.system.positions, positions)
    np.testing.assert_array_equal(session.sim.snapshot().spins, saved)
    assert [layer.name for layer in viewer.layers] == layers  # the scene shows it, no new layer
    # on a plain napari viewer the explorer docks with the state
    plain = make_napari_viewer()
    plain.open(str(path), plugin="sdglass")
    opened = session_of(plain)
    np.testing.assert_array_equal(opened.sim.snapshot().spins, saved)
    opened.stop(wait=True)
    # other files are left to napari's other readers
    (tmp_path / "text.h5").write_text("not hdf5")
    assert get_reader(str(tmp_path / "text.h5")) is None
    assert get_reader([str(path), str(path)]) is None


def test_trajectory_recorded_while_running(app_viewer, qtbot, tmp_path):
    from core.io import read_trajectory

    _, session = app_viewer
    export = session.panels["Export"]
    export.path.value = tmp_path / "rec"
    export.record.value = True
    assert export.message.value == "recording starts with the run -> rec.traj.h5"
    dyn = session.panels["Dynamics"]
    dyn.steps_per_frame.value = 2
    dyn.start(max_steps=20)
    qtbot.waitUntil(lambda: export.recorder is not None, timeout=TIMEOUT)
    wait_stopped(qtbot, session)
    qtbot.waitUntil(lambda: export.recorder is None, timeout=TIMEOUT)
    traj = read_trajectory(tmp_path / "rec.traj.h5")
    snap = session.sim.snapshot()
    assert traj.snapshots.shape[1:] == (1, 1, 30, 3) and traj.snapshots.shape[0] >= 2
    assert traj.snapshot_times[0] == 0.0
    assert traj.snapshot_times[-1] == pytest.approx(snap.time)
    np.testing.assert_allclose(traj.snapshots[-1, 0], snap.spins, atol=1e-6)
    assert traj.n_times == len(snap.record_times)
    assert "wrote rec.traj.h5" in export.message.value
    # the recording opens again as a state: its last snapshot, on its atoms
    session.reset_spins()
    system = session.panels["System"]
    assert system.open_state(tmp_path / "rec.traj.h5")
    qtbot.waitUntil(lambda: system.job is None, timeout=TIMEOUT)
    assert system.message.value.startswith("Opened rec.traj.h5")
    np.testing.assert_allclose(session.sim.snapshot().spins, snap.spins, atol=1e-6)
    assert session.sim.step_count == 0 and session.sim.state_file.endswith("rec.traj.h5")


def test_closing_the_window_mid_run_stops_the_dynamics_without_a_traceback(
    make_napari_viewer, qtbot, capfd
):
    from app.launcher import launch, session_of

    viewer = launch(viewer=make_napari_viewer(), return_viewer=True, n=30)
    session = session_of(viewer)
    session.panels["Dynamics"].start()  # no step limit: runs until stopped
    qtbot.waitUntil(lambda: session.sim.step_count >= 2, timeout=TIMEOUT)
    worker = session.worker
    viewer.close()  # File > Close Window; the window's close button sends the same event
    assert session.worker is None and session.state == "stopped"
    qtbot.waitUntil(lambda: not worker.is_running, timeout=TIMEOUT)
    steps = session.sim.step_count
    qtbot.wait(300)
    assert session.sim.step_count == steps  # nothing steps on behind the closed window
    assert "Traceback" not in capfd.readouterr().err


def test_a_model_trained_for_other_parameters_is_flagged_in_its_card(
    app_viewer, tmp_path, generate, choose_model
):
    from core.modelfile import load_model, save_model

    _, session = app_viewer
    model, card = load_model(DEFAULT_MODEL)
    card.physical["J"] = 1.0
    other = save_model(tmp_path / "j1.safetensors", model, card)
    notification_manager.records.clear()
    assert choose_model(session.panels["Model"], other)
    expected = "model was trained for J = 1 but is used with J = 6"
    assert session.warnings == [expected]
    assert f"⚠ {expected}" in session.panels["Model"].card.value
    assert any(expected in str(r.message) for r in notification_manager.records)
    # a system with the model's J: the warning goes
    session.panels["System"].preset.value = "Weak coupling (J = 1)"
    assert generate(session.panels["System"])
    assert session.warnings == [] and "⚠" not in session.panels["Model"].card.value


def test_an_ml_trajectory_names_the_model_and_the_electrons_it_simulated(
    app_viewer, qtbot, tmp_path, choose_engine, choose_model, tiny_model_file
):
    from core.io import read_trajectory
    from core.modelfile import load_model, save_model

    _, session = app_viewer
    model, card = load_model(tiny_model_file)  # the shipped model's cutoff needs N >= 100
    card.physical["J"] = 1.0
    other = save_model(tmp_path / "j1.safetensors", model, card)
    assert choose_model(session.panels["Model"], other)
    dyn = session.panels["Dynamics"]
    choose_engine(dyn, "ML (machine-learned)")
    dyn.start(max_steps=3)
    wait_stopped(qtbot, session)
    export = session.panels["Export"]
    export.path.value = tmp_path / "run"
    attrs = read_trajectory(export.save_trajectory()[0]).attrs
    assert session.sim.electrons.J == 6.0  # the System panel's J: the model ignores it
    assert attrs["engine"] == "ml" and attrs["J"] == 1.0 and attrs["model"] == str(other)


def test_correlation_plot_shades_r_below_r_min_and_colours_curves_by_time(app_viewer, qtbot):
    from matplotlib.colors import to_rgba
    from matplotlib.patches import Rectangle

    from app.plots import curve_colour

    _, session = app_viewer
    session.panels["Dynamics"].start(max_steps=12)
    wait_stopped(qtbot, session)
    plots = session.plots
    plots.flush(force_full=True)
    ax = plots.corr.ax
    shaded = [p for p in ax.patches if isinstance(p, Rectangle)]
    assert len(shaded) == 1  # axvspan: x from 0 to r_min, the whole height
    (x0, _), (x1, _) = shaded[0].get_bbox().get_points()
    assert (x0, x1) == pytest.approx((0.0, session.sim.system_config.r_min))
    lines = [line for line in plots._corr_lines if line.get_visible()]
    times = [float(t.get_text().removeprefix("t = ")) for t in plots._legend.get_texts()
             if t.get_visible()]  # fmt: skip
    assert len(lines) >= 3 and times == sorted(times) and len(set(times)) == len(times)
    # early to late along the colour map, the latest brightest
    colours = [to_rgba(line.get_color()) for line in lines]
    assert len(set(colours)) == len(lines)
    count = len(plots._corr_lines)
    expected = [curve_colour(plots.colours, r, count) for r in range(count - len(lines), count)]
    np.testing.assert_allclose(colours, expected)


def test_damping_step_and_integrator_changes_mid_run_reach_the_stepper(app_viewer, qtbot):
    _, session = app_viewer

    def retune(dyn):
        dyn.alpha.value, dyn.dt.value, dyn.integrator.value = 0.3, 0.01, "heun"

    seen = [(c.alpha, c.dt, c.integrator) for c in configs_of_each_step(session, qtbot, retune)]
    assert seen[0] == (pytest.approx(0.05), pytest.approx(0.02), "sib")
    assert seen[-1] == (pytest.approx(0.3), pytest.approx(0.01), "heun")
    # the clock adds each step's own dt
    dts = np.array([dt for _, dt, _ in seen])
    assert session.sim.time == pytest.approx(dts.sum())
    spins = session.sim.snapshot().spins
    np.testing.assert_allclose(np.linalg.norm(spins, axis=-1), 1.0, atol=1e-10)
    # the xi(t) and energy plots mark where the run was retuned, the new values named
    plots = session.plots
    plots.update(session.sim.snapshot())
    plots.flush(force_full=True)
    changes = session.sim.snapshot().changes
    assert 1 <= len(changes) <= 3  # each knob is applied on its own: steps may come between
    for ax in (plots.xi.ax, plots.energy.ax):
        marks = [line.get_xdata()[0] for line in ax.get_lines() if line.get_linestyle() == ":"]
        assert marks == pytest.approx([c["t"] for c in changes])
    labels = " ".join(text.get_text() for text in plots.energy.ax.texts)
    assert "alpha 0.3" in labels and "dt 0.01" in labels and "integrator heun" in labels
    session.reset_spins()  # a new run: no marks
    assert not [line for line in plots.energy.ax.get_lines() if line.get_linestyle() == ":"]
    assert not plots.energy.ax.texts


def test_replicas_give_the_ensemble_averaged_correlation(app_viewer, qtbot):
    from core.observables import bin_edges

    _, session = app_viewer
    dyn = session.panels["Dynamics"]
    dyn.replicas.value = 3
    s = session.sim.snapshot().spins
    assert s.shape == (3, 30, 3)
    dyn.start(max_steps=2)
    wait_stopped(qtbot, session)
    snap = session.sim.snapshot()
    assert snap.record_times[0] == 0.0
    # PHYSICS.md Eq. 20 over the 3 replicas, by hand: <S_i.S_j> - <S_i>.<S_j>, times B/(B-1)
    system = session.sim.system
    delta = system.positions[:, None] - system.positions[None]
    delta -= system.box * np.round(delta / system.box)
    r = np.linalg.norm(delta, axis=-1)
    i, j = np.triu_indices(30, 1)
    m = s.mean(0)
    c = ((s[:, i] * s[:, j]).sum(-1).mean(0) - (m[i] * m[j]).sum(-1)) * 3 / 2
    edges = snap.r_edges
    np.testing.assert_allclose(edges, bin_edges(session.sim.system_config.r_min, edges[-1]))
    which = np.digitize(r[i, j], edges) - 1
    inside = (which >= 0) & (which < len(edges) - 1)
    sums = np.bincount(which[inside], c[inside], len(edges) - 1)
    counts = np.bincount(which[inside], minlength=len(edges) - 1)
    expected = np.where(counts > 0, sums / np.maximum(counts, 1), 0.0)
    np.testing.assert_allclose(snap.corr[0], expected, atol=1e-12)
    # the live plot draws these ensemble averages
    session.plots.flush(force_full=True)
    lines = [line for line in session.plots._corr_lines if line.get_visible()]
    assert lines
    for line in lines:
        np.testing.assert_allclose(line.get_ydata(), snap.corr[line.k])


def test_reset_spins_starts_a_new_quench_on_the_same_atoms(app_viewer, qtbot):
    viewer, session = app_viewer
    dyn = session.panels["Dynamics"]
    initial = session.sim.snapshot().spins
    positions = session.sim.system.positions.copy()
    dyn.start(max_steps=3)
    wait_stopped(qtbot, session)
    dyn.reset_button.clicked.emit()
    snap = session.sim.snapshot()
    assert (snap.step, snap.time, len(snap.record_times)) == (0, 0.0, 0)
    np.testing.assert_allclose(session.sim.system.positions, positions)
    assert not np.allclose(snap.spins, initial)  # other random spins than the first quench's
    np.testing.assert_allclose(np.linalg.norm(snap.spins, axis=-1), 1.0, atol=1e-12)
    np.testing.assert_allclose(viewer.layers["Spins"].data[:, 1] / session.scene.arrow_length,
                               snap.spins[0])  # fmt: skip
    assert len(session.plots.energy_line.get_xdata()) == 0
    assert "step 0" in dyn.readout.value


def test_the_device_menu_offers_cuda_when_torch_sees_it_and_reports_a_failing_one(
    make_napari_viewer, qtbot, monkeypatch
):
    import torch

    from app.launcher import launch, session_of

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    viewer = launch(viewer=make_napari_viewer(), return_viewer=True, n=30)
    session = session_of(viewer)
    dyn = session.panels["Dynamics"]
    assert list(dyn.device.choices) == ["cpu", "cuda"]
    original = session.sim._make_provider

    def broken(engine, *args, device=None, **kwargs):  # a CUDA build with a failing driver
        if device == "cuda":
            raise RuntimeError("CUDA error: no kernel image is available for execution")
        return original(engine, *args, device=device, **kwargs)

    monkeypatch.setattr(session.sim, "_make_provider", broken)
    dyn.device.value = "cuda"
    qtbot.waitUntil(lambda: dyn.device_job is None, timeout=TIMEOUT)
    assert "cannot compute on 'cuda'" in dyn.message.value
    assert dyn.device.value == "cpu" and session.sim.device == "cpu"
    dyn.start(max_steps=2)  # the run goes on on the CPU
    wait_stopped(qtbot, session)
    assert session.sim.step_count == 2


@pytest.mark.parametrize("job", ["fields", "generate"])
def test_closing_the_window_during_a_background_job_leaves_no_traceback(
    make_napari_viewer, qtbot, capfd, job
):
    import time

    from app.launcher import launch, session_of

    viewer = launch(viewer=make_napari_viewer(), return_viewer=True, n=30)
    session = session_of(viewer)
    name, press = {
        "fields": ("compute_fields", lambda: session.panels["Fields"].compute("ed")),
        "generate": ("prepare", session.panels["System"].generate),
    }[job]
    original = getattr(session.sim, name)
    done = []

    def slow(*args):  # a large ED diagonalization, or the descriptor of a large system
        time.sleep(0.5)
        done.append(name)
        return original(*args)

    setattr(session.sim, name, slow)
    press()
    qtbot.wait(50)
    viewer.close()
    qtbot.waitUntil(lambda: bool(done), timeout=TIMEOUT)
    qtbot.wait(300)  # the worker's signals would now reach the deleted widgets
    assert "Traceback" not in capfd.readouterr().err


def test_a_device_is_prepared_in_the_background_and_no_run_starts_meanwhile(
    app_viewer, qtbot, monkeypatch
):

    _, session = app_viewer
    dyn = session.panels["Dynamics"]
    # "cpu:0" stands in for cuda (another torch device on this machine)
    dyn.device.choices = ["cpu", "cpu:0"]
    prepare, release = session.sim.prepare_device, threading.Event()

    def held(device):  # CUDA's start-up and the copies of a large system's geometry
        release.wait(timeout=30)
        return prepare(device)

    monkeypatch.setattr(session.sim, "prepare_device", held)
    dyn.device.value = "cpu:0"
    assert dyn.message.value == "Moving to cpu:0..." and session.sim.device == "cpu"
    assert not (dyn.start_button.enabled or dyn.device.enabled or dyn.engine.enabled)
    release.set()  # (on the main thread, the move would have waited for this in vain)
    qtbot.waitUntil(lambda: dyn.device_job is None, timeout=TIMEOUT)
    assert session.sim.device == "cpu:0" and dyn.message.value == ""
    assert dyn.start_button.enabled and dyn.device.enabled and dyn.engine.enabled
    dyn.start(max_steps=2)
    wait_stopped(qtbot, session)
    assert session.sim.step_count == 2 and session.sim.stepper.device == torch.device("cpu:0")


def test_generate_builds_in_the_background_while_the_dynamics_runs(app_viewer, qtbot, monkeypatch):

    viewer, session = app_viewer
    panel = session.panels["System"]
    prepare, release = session.sim.prepare, threading.Event()

    def held(*args):  # a build that takes until the test releases it
        release.wait(timeout=30)
        return prepare(*args)

    session.sim.prepare = held
    monkeypatch.setattr("app.jobs.TICK_MS", 100)  # the label counts seconds every 0.1 s
    session.panels["Dynamics"].start()
    panel.n.value = 40
    assert panel.generate()
    assert not panel.generate()  # one build at a time
    assert panel.message.value == "Generating 40 atoms..." and not panel.generate_button.enabled
    steps = session.sim.step_count
    qtbot.waitUntil(lambda: session.sim.step_count >= steps + 3, timeout=TIMEOUT)
    assert viewer.layers["Atoms"].data.shape == (30, 3)  # the old system, running
    qtbot.waitUntil(lambda: panel.message.value == "Generating 40 atoms... 1 s", timeout=TIMEOUT)
    release.set()
    qtbot.waitUntil(lambda: panel.job is None, timeout=TIMEOUT)
    assert viewer.layers["Atoms"].data.shape == (40, 3) and not session.running
    assert session.sim.step_count == 0 and panel.generate_button.enabled
    assert panel.message.value.startswith("Generated in ")  # it took over 1 s
    qtbot.wait(300)
    assert panel.message.value.startswith("Generated in ")  # the count has stopped


def test_closing_the_window_while_recording_keeps_the_recording(
    make_napari_viewer, qtbot, tmp_path
):
    from app.launcher import launch, session_of
    from core.io import read_trajectory

    viewer = launch(viewer=make_napari_viewer(), return_viewer=True, n=30)
    session = session_of(viewer)
    export = session.panels["Export"]
    export.path.value = tmp_path / "rec"
    export.record.value = True
    session.panels["Dynamics"].start()
    qtbot.waitUntil(lambda: session.sim.step_count >= 4, timeout=TIMEOUT)
    viewer.close()
    assert [p.name for p in tmp_path.iterdir()] == ["rec.traj.h5"]  # no hidden leftovers
    traj = read_trajectory(tmp_path / "rec.traj.h5")
    assert traj.snapshots.shape[0] >= 2
    np.testing.assert_allclose(traj.snapshots[-1, 0], session.sim.snapshot().spins, atol=1e-6)


def test_a_new_system_during_a_recorded_run_ends_the_recording_of_the_old(
    app_viewer, qtbot, tmp_path, generate
):
    from core.io import read_trajectory

    _, session = app_viewer
    export = session.panels["Export"]
    export.path.value = tmp_path / "rec"
    export.record.value = True
    session.panels["Dynamics"].start()
    qtbot.waitUntil(lambda: session.sim.step_count >= 4, timeout=TIMEOUT)
    system = session.panels["System"]
    system.n.value = 40
    assert generate(system)
    assert export.recorder is None and [p.name for p in tmp_path.iterdir()] == ["rec.traj.h5"]
    traj = read_trajectory(tmp_path / "rec.traj.h5")
    assert traj.snapshots.shape[0] >= 2 and traj.snapshots.shape[-2:] == (30, 3)  # the old run


def test_ml_fields_a_model_cannot_give_here_are_one_message_without_traceback(
    app_viewer, qtbot, capfd
):
    _, session = app_viewer  # N = 30: a box too small for the shipped model's cutoff
    fields = session.panels["Fields"]
    notification_manager.records.clear()
    fields.compute("ml")
    qtbot.waitUntil(lambda: fields.job is None, timeout=TIMEOUT)
    assert fields.result.value.startswith("⚠ descriptor cutoff rc = 2.5")
    assert "N >= 100" in fields.result.value
    assert [str(r.message) for r in notification_manager.records] == [
        f"Field computation: {fields.result.value.removeprefix('⚠ ')}"
    ]
    assert "Traceback" not in capfd.readouterr().err
    assert fields.ed_button.enabled and fields.ml_button.enabled  # ready for the next try
    # comparing during a run fails alike, once: it turns itself off instead of retrying
    fields.track.value = True
    session.panels["Dynamics"].start(max_steps=20)
    qtbot.waitUntil(lambda: session.state == "stopped" and fields.job is None, timeout=TIMEOUT)
    assert not fields.track.value and fields.history == []
    assert len(notification_manager.records) == 2


def test_a_model_the_ml_engine_cannot_use_here_switches_to_ed(
    app_viewer,
    tiny_model_file,
    generate,
    choose_engine,
    choose_model,
):
    _, session = app_viewer  # N = 30: the shipped model's cutoff does not fit, the tiny one's does
    model_panel, dyn = session.panels["Model"], session.panels["Dynamics"]
    assert choose_model(model_panel, tiny_model_file)
    choose_engine(dyn, "ML (machine-learned)")
    assert session.sim.engine == "ml"
    assert choose_model(model_panel, DEFAULT_MODEL)  # loaded, but it cannot run on N = 30
    assert session.sim.engine == "ed" and dyn.engine.value.startswith("ED")
    assert session.model is session.sim.model and session.model.spec.rc == 2.5
    assert "switched to ED" in model_panel.card.value and "N >= 100" in model_panel.card.value
    # choosing ML again says why not, and the menu stays on the engine in use
    choose_engine(dyn, "ML (machine-learned)")
    assert session.sim.engine == "ed" and dyn.engine.value.startswith("ED")
    assert "N >= 100" in dyn.message.value
    # a system large enough: ML works
    session.panels["System"].n.value = 100
    assert generate(session.panels["System"])
    assert "switched to ED" not in model_panel.card.value
    choose_engine(dyn, "ML (machine-learned)")
    assert session.sim.engine == "ml" and dyn.message.value == ""


def test_a_system_too_large_for_the_memory_is_refused_inline_and_the_old_stays(
    app_viewer, tiny_model_file, generate, choose_engine, choose_model, monkeypatch
):
    from core import memory

    viewer, session = app_viewer
    assert choose_model(session.panels["Model"], tiny_model_file)
    choose_engine(session.panels["Dynamics"], "ML (machine-learned)")
    assert session.sim.engine == "ml"
    monkeypatch.setattr(memory, "available_bytes", lambda device: 2**10)  # 1 kiB
    panel = session.panels["System"]
    panel.n.value = 60
    assert not generate(panel)
    assert "the ML descriptor's set-up at N = 60" in panel.message.value
    assert "use a smaller N, or a machine with more memory" in panel.message.value
    assert viewer.layers["Atoms"].data.shape == (30, 3) and session.sim.engine == "ml"
    monkeypatch.setattr(memory, "available_bytes", lambda device: None)
    assert generate(panel)  # the same request, with the memory there: built
    assert viewer.layers["Atoms"].data.shape == (60, 3)

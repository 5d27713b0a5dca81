"""The Qt-free live simulation behind the app (core.simulation)."""

import threading

import numpy as np
import pytest
import torch

from core.config import ConfigError, LLGConfig, SystemConfig
from core.electrons import EDSolver
from core.errors import DeviceError, PackingError
from core.io import Frames, electron_attrs
from core.model import MLFieldProvider
from core.modelfile import load_model
from core.simulation import MAX_REPLICAS, Simulation

SMALL = SystemConfig(n=30, seed=1)


@pytest.fixture
def sim():
    return Simulation(SMALL, llg=LLGConfig(dt=0.05), replicas=2)


def test_generate_builds_system_and_random_unit_spins(sim):
    snap = sim.snapshot()
    assert snap.spins.shape == (2, 30, 3)
    np.testing.assert_allclose(np.linalg.norm(snap.spins, axis=-1), 1.0, atol=1e-12)
    assert sim.system.box == pytest.approx(SMALL.side)
    assert snap.step == 0 and snap.time == 0.0 and snap.fields is None
    assert snap.r_edges[0] == SMALL.r_min and snap.r_edges[-1] == pytest.approx(SMALL.side / 2)


def test_advance_moves_spins_keeps_unit_length_and_records(sim):
    before = sim.snapshot().spins
    for _ in range(4):
        sim.advance(5)
    snap = sim.snapshot()
    assert snap.step == 20 and snap.time == pytest.approx(20 * 0.05)
    assert not np.allclose(snap.spins, before)
    np.testing.assert_allclose(np.linalg.norm(snap.spins, axis=-1), 1.0, atol=1e-10)
    assert len(snap.energy_history) == 4 and len(snap.energy_times) == 4
    assert np.all(np.diff(snap.energy_times) > 0)
    assert snap.energy_per_spin == pytest.approx(snap.energy_history[-1])
    # log-spaced records: step 0, 1, 2, ... strictly increasing, fewer than steps
    assert snap.record_times[0] == 0.0
    assert np.all(np.diff(snap.record_times) > 0)
    assert 5 <= len(snap.record_times) < 20
    assert snap.corr.shape == (len(snap.record_times), len(snap.r_edges) - 1)
    assert snap.xi.shape == snap.record_times.shape
    assert snap.fields.shape == (2, 30, 3)
    assert snap.steps_per_second > 0


def test_energy_matches_ed_of_the_stepped_state(sim):
    sim.advance(1)
    snap = sim.snapshot()
    # the recorded energy belongs to the spins before the last step (t = 0)
    sim2 = Simulation(SMALL, llg=LLGConfig(dt=0.05), replicas=2)
    _, e = EDSolver(sim2.system, sim2.electrons).fields(sim2.spins)
    assert snap.energy_per_spin == pytest.approx(float(e.mean()) / 30, rel=1e-12)
    assert snap.energy_per_spin == pytest.approx(-6.0, abs=0.5)


def test_reset_spins_restarts_clock_and_is_reproducible(sim):
    first = sim.snapshot().spins
    sim.advance(3)
    sim.reset_spins()
    snap = sim.snapshot()
    assert snap.step == 0 and len(snap.energy_history) == 0 and len(snap.record_times) == 0
    np.testing.assert_array_equal(snap.spins, first)
    sim.reset_spins(seed=7)
    assert not np.allclose(sim.snapshot().spins, first)


def test_set_llg_takes_effect_at_next_step(sim):
    sim.advance(1)
    sim.set_llg(LLGConfig(dt=0.01, temperature=0.5))
    sim.advance(1)
    assert sim.stepper.config.temperature == 0.5
    assert sim.time == pytest.approx(0.05 + 0.01)


def test_set_llg_from_another_thread_while_advancing(sim):
    seen = []
    original = sim.stepper.step

    def spy(spins):
        seen.append(sim.stepper.config.temperature)
        return original(spins)

    sim.stepper.step = spy
    worker = threading.Thread(target=lambda: [sim.advance(1) for _ in range(20)])
    worker.start()
    sim.set_llg(LLGConfig(dt=0.05, temperature=0.2))
    worker.join()
    assert seen[-1] == 0.2


def test_invalid_parameters_raise_config_errors():
    with pytest.raises(ConfigError, match="engine"):
        Simulation(SMALL, engine="dft")
    with pytest.raises(ConfigError, match="no ML model"):
        Simulation(SMALL, engine="ml")
    with pytest.raises(ConfigError, match="replicas"):
        Simulation(SMALL, replicas=0)
    sim = Simulation(SMALL)
    with pytest.raises(ConfigError, match="n_steps"):
        sim.advance(0)


def test_failed_generate_keeps_previous_system(sim):
    box = sim.system.box
    with pytest.raises(PackingError):
        sim.generate(SystemConfig(n=2000, box=5.0))
    assert sim.system.box == box and sim.system.n == 30


def test_prepare_changes_nothing_until_install(sim):
    sim.advance(2)
    before = sim.snapshot()
    prepared = sim.prepare(SystemConfig(n=40, seed=7))
    sim.advance(1)  # the dynamics goes on while a configuration is prepared
    assert sim.system.n == 30 and sim.snapshot().step == before.step + 1
    sim.install(prepared)
    snap = sim.snapshot()
    assert sim.system is prepared.atoms and sim.provider is prepared.provider
    assert sim.bins is prepared.bins and sim.system_config == SystemConfig(n=40, seed=7)
    assert snap.spins.shape == (2, 40, 3) and snap.step == 0 and snap.time == 0.0
    twin = Simulation(SystemConfig(n=40, seed=7), llg=LLGConfig(dt=0.05), replicas=2)
    np.testing.assert_array_equal(sim.system.positions, twin.system.positions)
    np.testing.assert_array_equal(snap.spins, twin.snapshot().spins)


def test_install_rebuilds_a_provider_made_for_an_engine_switched_meanwhile(tiny_model_file):
    model, _ = load_model(tiny_model_file)
    sim = Simulation(SMALL, llg=LLGConfig(dt=0.05), model=model)
    prepared = sim.prepare(SystemConfig(n=35, seed=2))
    assert isinstance(prepared.provider, EDSolver)
    sim.set_engine("ml")
    sim.install(prepared)
    assert isinstance(sim.provider, MLFieldProvider) and sim.provider is not prepared.provider
    assert sim.bins is prepared.bins  # same device: the pair bins are kept
    sim.advance(1)
    assert sim.snapshot().spins.shape == (1, 35, 3)


def test_ml_engine_with_tiny_model(tiny_model_file):
    model, card = load_model(tiny_model_file)
    sim = Simulation(SMALL, llg=LLGConfig(dt=0.05), engine="ml", model=model)
    sim.advance(3)
    snap = sim.snapshot()
    np.testing.assert_allclose(np.linalg.norm(snap.spins, axis=-1), 1.0, atol=1e-5)
    state = sim.compute_fields("ml", "ed")
    (h_ml, _e_ml), (h_ed, _e_ed) = state.fields["ml"], state.fields["ed"]
    assert h_ml.shape == h_ed.shape == (1, 30, 3)
    assert state.system is sim.system and state.step == 3
    assert set(sim.compute_fields().fields) == {"ml"}  # the current engine
    assert sim.local_energies().shape == (1, 30)
    assert sim.model_warnings(card.physical) == []
    sim.set_engine("ed")
    sim.advance(1)
    assert isinstance(sim.provider, EDSolver)


def test_fit_psi_on_recorded_xi():
    torch.manual_seed(0)
    sim = Simulation(SMALL, llg=LLGConfig(dt=0.05))
    for _ in range(10):
        sim.advance(10)
    fit = sim.fit_psi(t_min=1.2)
    assert np.isfinite(fit.psi) and fit.n_points >= 3
    acc = sim.correlations()
    np.testing.assert_allclose(acc.correlation(), sim.snapshot().corr)


def test_ed_engine_refuses_large_systems_before_any_state_changes(sim, monkeypatch):
    from core import simulation

    monkeypatch.setattr(simulation, "ED_MAX_N", 40)
    before = sim.system.positions.copy()
    with pytest.raises(ConfigError, match="use the ML engine"):
        sim.generate(SystemConfig(n=50))
    np.testing.assert_array_equal(sim.system.positions, before)


def test_set_device_keeps_the_state_and_refuses_a_missing_device(sim, monkeypatch):
    sim.advance(3)
    before = sim.snapshot()
    sim.set_device("cpu")
    after = sim.snapshot()
    np.testing.assert_array_equal(after.spins, before.spins)
    assert after.step == before.step and sim.spins.device.type == "cpu"
    sim.advance(1)  # the rebuilt stepper runs
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="no CUDA device"):
        sim.set_device("cuda")
    assert sim.device == "cpu"


def test_a_device_torch_cannot_compute_on_is_refused_and_changes_nothing(sim, monkeypatch):
    def broken(engine, *args, device=None, **kwargs):
        if device == "cuda":  # what a CUDA build with a failing driver raises
            raise RuntimeError("CUDA error: no kernel image is available for execution")
        return original(engine, *args, device=device, **kwargs)

    original = sim._make_provider
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(sim, "_make_provider", broken)
    provider, spins = sim.provider, sim.spins
    with pytest.raises(DeviceError, match="cannot compute on 'cuda': RuntimeError: CUDA error"):
        sim.set_device("cuda")
    assert sim.device == "cpu" and sim.provider is provider and sim.spins is spins
    sim.advance(1)


def test_failed_engine_switch_changes_nothing(sim, monkeypatch):
    from core import simulation

    monkeypatch.setattr(simulation, "ED_MAX_N", 10)
    provider = sim.provider
    with pytest.raises(ConfigError, match="use the ML engine"):
        sim.set_engine("ed")
    assert sim.provider is provider and sim.engine == "ed"


def test_the_clock_adds_the_dt_a_step_took_when_dt_changes_during_it(sim):
    fields = sim.provider.fields

    def fields_while_the_user_changes_dt(spins):  # as the app's main thread may, mid-step
        sim.set_llg(sim.llg_config.replace(dt=0.01))
        return fields(spins)

    sim.provider.fields = fields_while_the_user_changes_dt
    sim.advance(1)  # integrated with dt = 0.05 (read when the step began)
    assert sim.time == pytest.approx(0.05)
    sim.advance(1)
    assert sim.time == pytest.approx(0.06)


def test_snapshots_carry_the_local_energies_of_their_spins_when_tracked(tiny_model_file):
    model, _ = load_model(tiny_model_file)
    sim = Simulation(SMALL, llg=LLGConfig(dt=0.05), replicas=2, model=model)  # ED engine
    assert sim.snapshot().local_energies is None  # not tracked: nothing computed
    sim.track_local_energies = True
    first = sim.snapshot()
    sim.advance(3)
    later = sim.snapshot()
    ml = MLFieldProvider(model, sim.system)
    for snap in (first, later):
        expected = ml.local_energies(torch.from_numpy(snap.spins)).numpy()
        np.testing.assert_allclose(snap.local_energies, expected, rtol=1e-5, atol=1e-6)
    assert not np.allclose(first.local_energies, later.local_energies)  # they follow the spins


# float64: a network the provider runs on a copy (in float32), as it does on a GPU
@pytest.mark.parametrize("net_dtype", [torch.float32, torch.float64])
def test_the_ml_provider_under_ed_is_built_once_per_system_and_model(
    tiny_model_file, monkeypatch, net_dtype
):
    model, _ = load_model(tiny_model_file)
    other, _ = load_model(tiny_model_file)
    model.net.to(net_dtype), other.net.to(net_dtype)
    sim = Simulation(SMALL, llg=LLGConfig(dt=0.05), model=model)
    built = []
    make = sim._make_provider
    monkeypatch.setattr(
        sim, "_make_provider", lambda engine, *a: built.append(engine) or make(engine, *a)
    )
    sim.local_energies()
    sim.compute_fields("ml")
    sim.local_energies()
    assert built == ["ml"]
    sim.model = other  # a model loaded while ED runs
    sim.local_energies()
    assert built == ["ml", "ml"]
    sim.generate(SystemConfig(n=30, seed=2))
    sim.local_energies()
    assert built[2:] == ["ed", "ml"]  # the new system's ED solver, then its ML provider


def test_tracked_local_energies_a_model_cannot_give_here_are_none(tiny_model_file):
    model, _ = load_model(tiny_model_file)
    sim = Simulation(SystemConfig(n=4, seed=1), model=model)  # L/2 below the model's cutoff
    sim.track_local_energies = True
    with pytest.raises(ConfigError, match="exceeds half the box side"):
        sim.local_energies()
    sim.advance(1)
    assert sim.snapshot().local_energies is None


def test_a_model_with_the_same_descriptor_reuses_the_geometry(tiny_model_file):
    model, _ = load_model(tiny_model_file)
    retrained, _ = load_model(tiny_model_file)
    with torch.no_grad():
        for p in retrained.net.parameters():
            p.mul_(1.5)  # other weights, the same descriptor
    sim = Simulation(SMALL, llg=LLGConfig(dt=0.05), engine="ml", model=model)
    geometry = sim.provider.geometry
    sim.set_engine("ml", retrained)
    assert sim.provider.geometry is geometry and sim.provider.model is retrained
    fresh = MLFieldProvider(retrained, sim.system)
    spins = sim.spins.clone()
    np.testing.assert_allclose(
        sim.provider.fields(spins)[0].numpy(), fresh.fields(spins)[0].numpy(), rtol=1e-6
    )
    other = load_model(tiny_model_file)[0]
    other.spec = other.spec.replace(include_chi=not other.spec.include_chi)
    assert sim.provider.for_model(other).geometry is not geometry  # another descriptor


def test_a_device_switch_moves_the_ml_geometry_and_pair_bins_instead_of_building_them(
    tiny_model_file, monkeypatch
):
    # "cpu:0" is another torch device on this machine: it takes the path of a switch to
    # cuda, where building the geometry again costs seconds at large N
    import core.model
    import core.simulation

    model, _ = load_model(tiny_model_file)
    sim = Simulation(SMALL, llg=LLGConfig(dt=0.05), engine="ml", model=model)
    spins = sim.spins.clone()
    before = sim.provider.fields(spins)[0]

    def build_again(*args, **kwargs):
        raise AssertionError("the geometry was built again")

    monkeypatch.setattr(core.model, "build_geometry", build_again)
    monkeypatch.setattr(core.simulation, "pair_bins", build_again)  # nor the pair bins
    sim.set_device("cpu:0")
    assert sim.provider.device == torch.device("cpu:0") and sim.provider.source is model
    torch.testing.assert_close(sim.provider.fields(spins)[0], before)
    sim.advance(2)
    assert sim.step_count == 2


def test_a_device_prepared_meanwhile_is_installed_for_what_changed_since(tiny_model_file):
    # the app prepares a device in a worker thread; the spins may be reset, the engine
    # switched or a new system made before it is installed
    model, _ = load_model(tiny_model_file)
    sim = Simulation(SMALL, llg=LLGConfig(dt=0.05), model=model)
    choice = sim.prepare_device("cpu:0")
    assert sim.device == "cpu" and sim.provider.device == torch.device("cpu")  # nothing yet
    sim.set_engine("ml")
    sim.reset_spins(seed=7)
    spins = sim.spins.clone()
    sim.use_device(choice)
    assert sim.device == "cpu:0" and sim.engine == "ml"
    assert isinstance(sim.provider, MLFieldProvider) and sim.stepper.provider is sim.provider
    assert sim.provider.device == torch.device("cpu:0") and torch.equal(sim.spins, spins)
    choice = sim.prepare_device("cpu")
    sim.generate(SMALL.replace(seed=SMALL.seed + 1))
    sim.use_device(choice)
    assert sim.provider.systems[0] is sim.system and sim.bins is not choice.bins
    sim.advance(2)
    assert sim.step_count == 2 and sim.spins.device == torch.device("cpu")


def test_an_engine_switch_keeps_the_noise_streams_going(tiny_model_file):
    model, _ = load_model(tiny_model_file)
    config = LLGConfig(dt=0.05, temperature=0.1)
    switched = Simulation(SMALL, llg=config, replicas=2, model=model)
    straight = Simulation(SMALL, llg=config, replicas=2, model=model)
    switched.advance(2)
    switched.set_engine("ml")
    switched.set_engine("ed")  # back: a new ED solver, the same stepper
    switched.advance(2)
    straight.advance(4)
    np.testing.assert_allclose(switched.snapshot().spins, straight.snapshot().spins, atol=1e-12)


def test_a_device_switch_keeps_the_noise_streams_going():
    config = LLGConfig(dt=0.05, temperature=0.1)
    switched = Simulation(SMALL, llg=config, replicas=2)
    straight = Simulation(SMALL, llg=config, replicas=2)
    switched.advance(2)
    switched.set_device("cpu")  # a new provider and stepper: the noise goes on, not over
    switched.advance(2)
    straight.advance(4)
    np.testing.assert_allclose(switched.snapshot().spins, straight.snapshot().spins, atol=1e-12)


def test_parameters_changed_mid_run_are_kept_with_the_time_they_took_effect(tiny_model_file):
    model, _ = load_model(tiny_model_file)
    sim = Simulation(SMALL, llg=LLGConfig(dt=0.05, temperature=0.001), model=model)
    sim.advance(3)
    assert sim.snapshot().changes == ()
    sim.set_llg(sim.llg_config.replace(temperature=0.25, alpha=0.5))
    sim.advance(2)
    sim.set_engine("ml")
    sim.advance(1)
    sim.set_llg(sim.llg_config.replace(dt=0.02))
    sim.advance(1)
    changes = sim.snapshot().changes
    assert changes == (
        {"t": pytest.approx(0.15), "step": 3, "temperature": [0.001, 0.25], "alpha": [0.05, 0.5]},
        {"t": pytest.approx(0.25), "step": 5, "engine": ["ed", "ml"]},
        {"t": pytest.approx(0.30), "step": 6, "dt": [0.05, 0.02]},
    )
    assert sim.time == pytest.approx(0.32)
    sim.reset_spins()  # a new run: no changes yet
    sim.advance(1)
    assert sim.snapshot().changes == ()


def saved_state(sim: Simulation, **electrons) -> Frames:
    """The state of sim as the app's export writes it: one frame per replica."""
    spins = sim.snapshot().spins
    b = len(spins)
    return Frames(
        positions=np.repeat(sim.system.positions[None], b, axis=0),
        box=np.full(b, sim.system.box),
        spins=spins,
        attrs=electron_attrs(sim.electrons.replace(**electrons)),
    )


def test_a_saved_state_opens_with_its_atoms_spins_replicas_and_electrons():
    source = Simulation(SMALL.replace(seed=5), llg=LLGConfig(dt=0.05), replicas=3)
    source.advance(4)
    frames = saved_state(source, J=1.0)
    sim = Simulation(SMALL, replicas=1)
    sim.advance(2)
    prepared = sim.prepare_state(frames)
    assert sim.replicas == 1 and sim.step_count == 2  # nothing changed yet
    sim.install(prepared)
    np.testing.assert_array_equal(sim.system.positions, source.system.positions)
    np.testing.assert_array_equal(sim.snapshot().spins, source.snapshot().spins)
    assert sim.replicas == 3 and sim.step_count == 0 and sim.time == 0.0
    assert sim.electrons.J == 1.0 and sim.system_config.n == SMALL.n
    assert isinstance(sim.provider, EDSolver) and sim.provider.config.J == 1.0
    sim.advance(2)  # the run goes on from the saved spins
    assert sim.step_count == 2


def test_a_saved_state_takes_the_frames_of_its_first_configuration_and_their_r_min():
    a, b = Simulation(SMALL), Simulation(SMALL.replace(seed=9))
    fa, fb = saved_state(a), saved_state(b)
    both = Frames(
        positions=np.concatenate([fa.positions, fb.positions, fa.positions]),
        box=np.concatenate([fa.box, fb.box, fa.box]),
        spins=np.concatenate([fa.spins, fb.spins, -fa.spins]),
        attrs=fa.attrs,
    )
    sim = Simulation(SMALL.replace(r_min=0.9))  # more than these atoms keep apart
    sim.install(sim.prepare_state(both))
    np.testing.assert_array_equal(sim.snapshot().spins, np.concatenate([fa.spins, -fa.spins]))
    nearest = sim.system_config.r_min
    assert SMALL.r_min < nearest < 0.9 and sim.snapshot().r_edges[0] == pytest.approx(nearest)


def test_a_saved_state_outside_the_box_opens_wrapped_into_it():
    source = Simulation(SMALL)
    frames = saved_state(source)
    shift = np.zeros(3)
    shift[0] = source.system.box  # the same periodic system, drawn one box over
    frames.positions = frames.positions + shift
    sim = Simulation(SMALL.replace(seed=3))
    sim.install(sim.prepare_state(frames))
    np.testing.assert_allclose(sim.system.positions, source.system.positions, atol=1e-12)
    assert sim.system.positions.max() < sim.system.box


def test_a_saved_state_with_more_spin_states_than_replicas_is_refused():
    sim = Simulation(SMALL)
    one = saved_state(sim)
    many = Frames(
        positions=np.repeat(one.positions, MAX_REPLICAS + 1, axis=0),
        box=np.repeat(one.box, MAX_REPLICAS + 1),
        spins=np.repeat(one.spins, MAX_REPLICAS + 1, axis=0),
    )
    with pytest.raises(ConfigError, match=f"has {MAX_REPLICAS + 1} spin states .* at most"):
        sim.prepare_state(many)
    with pytest.raises(ConfigError, match="replicas must be an integer from 1 to"):
        sim.set_replicas(MAX_REPLICAS + 1)

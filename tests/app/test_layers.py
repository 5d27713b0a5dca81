"""The 3D scene (app/layers.py) driven through the Fields panel: colours, legend, arrows."""

import numpy as np
import pytest
import torch
from matplotlib import colormaps

from app.layers import HOVER_RING, MAX_ARROWS, SceneLayers, colours


def atom_colours(viewer) -> np.ndarray:
    return np.asarray(viewer.layers["Atoms"].face_color)


@pytest.mark.parametrize(
    ("axis", "n"),
    [("x", [1.0, 0.0, 0.0]), ("y", [0.0, 1.0, 0.0]), ("(1,1,1)", np.ones(3) / np.sqrt(3))],
)
def test_atoms_show_the_spin_along_the_chosen_axis(app_viewer, axis, n):
    viewer, session = app_viewer
    fields = session.panels["Fields"]
    fields.colour_by.value = "S.n"
    fields.axis.value = axis
    s_n = session.sim.snapshot().spins[0] @ np.asarray(n)
    expected = colormaps["coolwarm"]((s_n + 1) / 2)  # S.n in [-1, 1] spans the whole map
    np.testing.assert_allclose(atom_colours(viewer), expected, atol=1e-6)
    # the arrows carry the colours of their atoms
    np.testing.assert_allclose(viewer.layers["Spins"].edge_color, expected, atol=1e-6)
    assert viewer.canvas.overlays.text.text == "Colour: S.n from -1 to 1 (coolwarm)"


def test_local_energy_colours_and_legend_state_the_range(app_viewer, tiny_model_file, choose_model):
    viewer, session = app_viewer
    assert choose_model(session.panels["Model"], tiny_model_file)
    session.panels["Fields"].colour_by.value = "local energy (ML)"
    eps = session.sim.local_energies()[0]
    np.testing.assert_allclose(session.scene.local_energy, eps)
    lo, hi = eps.min(), eps.max()
    assert hi > lo
    np.testing.assert_allclose(
        atom_colours(viewer), colormaps["viridis"]((eps - lo) / (hi - lo)), atol=1e-6
    )
    legend = viewer.canvas.overlays.text.text
    assert legend == f"Colour: local energy (ML) from {lo:.3g} to {hi:.3g} (viridis)"


def test_local_energy_colours_follow_the_spins_while_the_dynamics_runs(
    app_viewer, tiny_model_file, qtbot, choose_model
):
    from core.model import MLFieldProvider

    viewer, session = app_viewer  # the ED engine: the energies come from the ML model
    assert choose_model(session.panels["Model"], tiny_model_file)
    session.panels["Fields"].colour_by.value = "local energy (ML)"
    before = session.scene.local_energy.copy()
    session.start(max_steps=6)
    qtbot.waitUntil(lambda: not session.running, timeout=60_000)
    assert session.sim.step_count == 6
    shown = session.scene.spins  # replica 0 as drawn
    ml = MLFieldProvider(session.model, session.sim.system)
    eps = ml.local_energies(torch.from_numpy(shown[None])).numpy()[0]
    np.testing.assert_allclose(session.scene.local_energy, eps, rtol=1e-5, atol=1e-6)
    assert not np.allclose(session.scene.local_energy, before)
    lo, hi = eps.min(), eps.max()
    np.testing.assert_allclose(
        atom_colours(viewer), colormaps["viridis"]((eps - lo) / (hi - lo)), atol=1e-5
    )
    session.panels["Fields"].colour_by.value = "S_z"  # no longer shown: no longer computed
    assert session.sim.snapshot().local_energies is None


def test_a_quantity_not_computed_yet_says_so(app_viewer):
    viewer, session = app_viewer
    session.panels["Fields"].colour_by.value = "ML-ED field error"  # before any comparison
    assert viewer.canvas.overlays.text.text == "Colour: ML-ED field error (not computed yet)"


def test_arrow_length_and_width_follow_the_panel(app_viewer):
    viewer, session = app_viewer
    fields = session.panels["Fields"]
    fields.arrow_length.value = 0.8
    fields.arrow_width.value = 0.2
    arrows = viewer.layers["Spins"].data
    np.testing.assert_allclose(np.linalg.norm(arrows[:, 1], axis=1), 0.8)
    # each arrow is centred on its atom and points along its spin
    np.testing.assert_allclose(arrows[:, 0] + 0.5 * arrows[:, 1], session.sim.system.positions)
    np.testing.assert_allclose(arrows[:, 1] / 0.8, session.sim.snapshot().spins[0], atol=1e-12)
    assert viewer.layers["Spins"].edge_width == pytest.approx(0.2)


def test_the_scene_layers_cannot_be_deleted_from_the_layer_list(app_viewer):
    viewer, _ = app_viewer
    names = ["Box", "Atoms", "Spins", "Fields (H_perp)"]
    viewer.layers.selection = {viewer.layers[name] for name in names}
    viewer.layers.remove_selected()  # the layer list's delete button and Ctrl+Delete
    assert [layer.name for layer in viewer.layers] == names


def test_atoms_cannot_be_added_moved_or_deleted_in_the_viewer(app_viewer):
    viewer, session = app_viewer
    atoms = viewer.layers["Atoms"]
    positions, before = session.sim.system.positions, atom_colours(viewer).copy()
    for ndisplay in (2, 3):  # napari makes Points editable again when the view changes
        viewer.dims.ndisplay = ndisplay
        assert not atoms.editable and atoms.mode == "pan_zoom"
    atoms.selected_data = {0, 3, 7}
    atoms.remove_selected()  # Delete with points selected ("A" selects them all)
    atoms.add([[1.0, 1.0, 1.0]])  # add mode
    atoms.data[:2] += 0.5  # a drag in select mode moves points in place, then says so
    atoms.events.data(value=atoms.data, action="changed", data_indices=(0, 1), vertex_indices=((),))
    np.testing.assert_array_equal(atoms.data, positions)
    np.testing.assert_allclose(atom_colours(viewer), before)  # every atom coloured as before
    assert atoms.selected_data == set()


def test_the_atom_under_the_pointer_is_named_with_its_spin(app_viewer, qtbot):
    from types import SimpleNamespace

    viewer, session = app_viewer
    scene, overlay = session.scene, viewer.canvas.overlays.text
    along_x = np.array([1.0, 0.0, 0.0])
    yz = scene.positions[:, 1:]
    apart = np.linalg.norm(yz[:, None] - yz[None], axis=-1) + np.eye(len(yz)) * 10
    k = int(np.argmax(apart.min(1)))  # the ray along x through atom k meets no other sphere
    assert apart[k].min() > scene.atom_size

    def move_to(position) -> None:
        event = SimpleNamespace(position=position, view_direction=along_x, dims_displayed=[0, 1, 2])
        for callback in viewer.mouse_move_callbacks:
            callback(viewer, event)
        assert scene._rest.isActive()  # looked up once the pointer rests
        qtbot.waitUntil(lambda: not scene._rest.isActive(), timeout=5000)

    scene.hover(None)
    move_to(scene.positions[k] + [0.0, 0.0, 10.0])  # off every atom
    assert scene.hovered is None
    move_to(scene.positions[k])
    assert scene.hovered == k
    ring = np.zeros(len(yz))
    ring[k] = HOVER_RING  # a white ring round it, none elsewhere
    np.testing.assert_allclose(viewer.layers["Atoms"].border_width, ring)
    sx, sy, sz = scene.spins[k]
    legend, line = overlay.text.split("\n")
    assert (
        legend.startswith("Colour: S_z")
        and line == f"Atom {k}: S = ({sx:+.2f}, {sy:+.2f}, {sz:+.2f})"
    )
    spins = -scene.spins  # the line follows every frame, with the colour quantity
    session.panels["Fields"].colour_by.value = "S.n"
    scene.update_spins(spins)
    assert overlay.text.split("\n")[1] == (
        f"Atom {k}: S = ({-sx:+.2f}, {-sy:+.2f}, {-sz:+.2f}), S.n = {spins[k] @ scene.axis:.3g}"
    )
    move_to(scene.positions[k] + [0.0, 0.0, 10.0])  # off every atom
    assert scene.hovered is None and "\n" not in overlay.text
    assert not viewer.layers["Atoms"].border_width.any()


def test_large_systems_draw_a_subsample_of_arrows_and_colour_every_atom(make_napari_viewer):
    viewer = make_napari_viewer()
    scene = SceneLayers(viewer)
    rng = np.random.default_rng(0)
    n = MAX_ARROWS + 500
    positions = rng.uniform(0, 12, (n, 3))
    spins = rng.normal(size=(n, 3))
    spins /= np.linalg.norm(spins, axis=1, keepdims=True)
    scene.set_system(positions, 12.0, spins)
    rgba, _ = colours(spins[:, 2], "S_z")
    np.testing.assert_allclose(atom_colours(viewer), rgba, atol=1e-6)  # every spin shows
    arrows = viewer.layers["Spins"].data
    assert arrows.shape == (MAX_ARROWS, 2, 3)
    centres = arrows[:, 0] + 0.5 * arrows[:, 1]
    # the subsample spreads over the whole list of atoms (Morton order: over the whole box)
    idx = np.flatnonzero((np.abs(positions[:, None] - centres[None]).sum(-1) < 1e-9).any(1))
    assert len(idx) == MAX_ARROWS and idx[0] == 0 and idx[-1] == n - 1
    np.testing.assert_allclose(viewer.layers["Spins"].edge_color, rgba[idx], atol=1e-6)
    # the field arrows use the same subsample
    scene.field_layer.visible = True
    scene.update_spins(spins, fields=rng.normal(size=(n, 3)))
    np.testing.assert_allclose(viewer.layers[scene.field_layer.name].data[:, 0], positions[idx])


def test_local_energies_a_model_cannot_give_here_are_said_not_raised(app_viewer):
    viewer, session = app_viewer  # N = 30: a box too small for the shipped model's cutoff
    fields = session.panels["Fields"]
    fields.colour_by.value = "local energy (ML)"
    assert fields.result.value.startswith("⚠ local energies: descriptor cutoff rc = 2.5")
    assert "N >= 100" in fields.result.value
    assert "(not computed yet)" in viewer.canvas.overlays.text.text


def test_colouring_by_local_energy_mid_step_does_not_wait_for_the_step(
    app_viewer, tiny_model_file, qtbot, choose_model
):
    import time

    from tests.app.conftest import slow_steps

    viewer, session = app_viewer
    assert choose_model(session.panels["Model"], tiny_model_file)
    fields = session.panels["Fields"]
    begun = slow_steps(session, 0.5)  # a step of 1 s
    session.start()
    qtbot.waitUntil(begun.is_set, timeout=60_000)
    start = time.perf_counter()
    fields.colour_by.value = "local energy (ML)"
    fields.arrow_length.value = 0.6  # redisplays: nor does this wait
    assert time.perf_counter() - start < 0.3  # the step holds the simulation for ~1 s
    # the next snapshot brings them
    qtbot.waitUntil(lambda: session.scene.local_energy is not None, timeout=60_000)
    session.stop(wait=True)
    assert "local energy (ML) from" in viewer.canvas.overlays.text.text


def test_texts_follow_napari_font_size(app_viewer, tiny_model_file, choose_model, monkeypatch):
    from napari.settings import get_settings

    import app.plots as plots_module

    viewer, session = app_viewer
    assert choose_model(session.panels["Model"], tiny_model_file)
    fields = session.panels["Fields"]
    corr = session.plots.corr.ax

    def sizes() -> dict:
        model_ax = session.panels["Model"].exchange.figure.axes[0]  # drawn anew on a change
        return {
            "corr title": corr.title.get_fontsize(),
            "corr ticks": corr.xaxis.get_ticklabels()[0].get_fontsize(),
            "parity title": fields.parity.ax.title.get_fontsize(),
            "J(R) title": model_ax.title.get_fontsize(),
            "legend": viewer.canvas.overlays.text.font_size,
        }

    before = sizes()
    assert before["corr title"] == plots_module.TITLE_PT  # napari's default size: scale 1
    # Preferences > Appearance > Font size doubled (the scale, not the user's settings file)
    monkeypatch.setattr(plots_module, "font_scale", lambda: 2.0)
    appearance = get_settings().appearance  # the event of a change; the settings file untouched
    appearance.events.font_size(value=appearance.font_size)
    after = sizes()
    assert after == {key: 2 * value for key, value in before.items()}
    # what is drawn later keeps the scale: a comparison's parity plot, new tick labels
    session.plots.corr.ax.set_xlim(0, 7)
    session.plots.corr.figure.canvas.draw()
    assert {t.get_fontsize() for t in corr.xaxis.get_ticklabels()} == {2 * plots_module.TICK_PT}
    fields.parity.show(
        {"hperp_ed": np.ones((1, 2, 3)), "hperp_ml": np.ones((1, 2, 3)), "rmse_hperp": 0.0}
    )
    assert fields.parity.ax.title.get_fontsize() == 2 * plots_module.TITLE_PT

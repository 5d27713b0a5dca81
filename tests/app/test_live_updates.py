"""What a live frame touches: hidden field arrows wait, plots spread their full redraws,
and the responsiveness probe says when the event loop stalled."""

from dataclasses import replace

import numpy as np

from app.plots import LivePlots
from app.responsiveness import HEARTBEAT_MS, ResponsivenessProbe


def test_hidden_field_arrows_wait_and_catch_up_when_shown(app_viewer):
    _, session = app_viewer
    scene = session.scene
    placeholder = scene.field_layer.data.copy()
    fields = np.random.default_rng(0).normal(size=(30, 3))
    scene.update_spins(scene.spins, fields)
    assert not scene.field_layer.visible
    np.testing.assert_array_equal(scene.field_layer.data, placeholder)
    scene.field_layer.visible = True  # e.g. the eye in napari's layer list
    hp = np.cross(scene.spins, fields)
    arrows = scene.field_layer.data
    assert arrows.shape == (30, 2, 3)
    np.testing.assert_allclose(arrows[:, 0], scene.positions)
    ratio = np.linalg.norm(arrows[:, 1], axis=1) / np.linalg.norm(hp, axis=1)
    np.testing.assert_allclose(ratio, ratio[0])  # one scale for every arrow


def test_a_flush_draws_at_most_one_plot_in_full(app_viewer, qtbot, monkeypatch):
    monkeypatch.setattr("app.plots.REDRAW_HZ", 0.01)  # a redraw every 100 s at most
    _, session = app_viewer
    session.start(max_steps=4)
    qtbot.waitUntil(lambda: session.worker is None, timeout=60_000)
    plots = LivePlots("dark", 0.5)
    qtbot.addWidget(plots)
    draws = {name: [] for name in plots.plots}
    for name, plot in plots.plots.items():
        plot.canvas.mpl_connect("draw_event", lambda event, n=name: draws[n].append(1))
    plots.update(session.sim.snapshot())  # first data, drawn at once: one full draw of three
    assert sum(map(len, draws.values())) == 1
    plots.update(session.sim.snapshot())  # too soon after the last: kept, not drawn
    assert sum(map(len, draws.values())) == 1 and plots.pending is not None
    plots.flush()
    plots.flush()  # the waiting full draws follow, one per flush
    assert all(len(d) == 1 for d in draws.values())
    assert not any(p.needs_full for p in plots.plots.values())
    plots.flush()
    assert sum(map(len, draws.values())) == 3  # nothing left to draw
    for plot in plots.plots.values():
        plot.needs_full = True
    plots.flush(force_full=True)  # export and the end of a run draw everything at once
    assert all(len(d) == 2 for d in draws.values())


def test_probe_reports_when_each_long_stall_happened(app_viewer):
    viewer, session = app_viewer
    probe = ResponsivenessProbe(viewer, session)
    beat = HEARTBEAT_MS / 1000
    probe.gaps = [beat, beat + 0.25, beat, beat + 0.05, beat + 0.12]
    probe.beats = [0.02, 0.29, 0.31, 0.38, 0.52]
    probe._t1 = 0.6
    report = probe.report()
    assert report["stalls_over_100ms"] == 2
    assert report["long_stalls"] == [[0.29, 250.0], [0.52, 120.0]]
    assert report["max_stall_ms"] == 250.0


def test_new_readout_text_does_not_lay_out_the_panel_again(make_napari_viewer, qtbot):
    # a label that resizes with its text makes Qt lay out and recompose the window per frame
    from qtpy.QtCore import QEvent, QObject
    from qtpy.QtWidgets import QApplication

    from app.launcher import launch, session_of

    session = session_of(launch(viewer=make_napari_viewer(show=True), return_viewer=True, n=30))
    panel = session.panels["Dynamics"]

    class Counter(QObject):
        count = 0

        def eventFilter(self, obj, event):
            self.count += event.type() == QEvent.LayoutRequest
            return False

    counter = Counter()
    QApplication.instance().installEventFilter(counter)  # LayoutRequests go up the tree
    snap = session.sim.snapshot()
    qtbot.wait(1000)  # the new window's own layout settles
    counts = []
    for step, rate in ((1, 2.0), (123456, 1234.5), (7, 0.5), (99, 88.8)):
        QApplication.processEvents()
        counter.count = 0
        panel.show_readout(replace(snap, step=step, time=step * 0.02, steps_per_second=rate))
        QApplication.processEvents()
        counts.append(counter.count)
    assert "step 99" in panel.readout.value
    QApplication.instance().removeEventFilter(counter)
    assert counts == [0, 0, 0, 0]


def test_the_scene_follows_a_full_plot_draw_in_a_later_turn(app_viewer, qtbot):
    _, session = app_viewer
    session.start(max_steps=2)
    qtbot.waitUntil(lambda: session.worker is None, timeout=60_000)
    first = session.sim.snapshot()
    spins = first.spins[0].copy()
    session.plots.reset(0.5)  # fresh axes: the next snapshot needs a full draw
    session.plots._last_flush = 0.0
    moved = replace_spins(first, -spins)
    session.show_snapshot(moved)
    np.testing.assert_allclose(session.scene.spins, spins)  # not in this turn
    qtbot.waitUntil(lambda: np.allclose(session.scene.spins, -spins), timeout=2000)
    # a snapshot overtaken before its turn comes is never drawn
    session.plots.reset(0.5)
    session.plots._last_flush = 0.0
    session.show_snapshot(replace_spins(first, spins))  # full draw: scene deferred
    newest = replace_spins(first, -spins)
    session.last_snapshot = newest  # a newer one arrived (and was drawn) meanwhile
    session.scene.update_spins(-spins)
    qtbot.wait(50)
    np.testing.assert_allclose(session.scene.spins, -spins)


def replace_spins(snap, spins):
    return replace(snap, spins=spins[None])


def test_new_arrows_leave_the_viewer_range_alone(app_viewer, monkeypatch):
    viewer, session = app_viewer
    scene = session.scene
    calls = []
    rerange = viewer._on_layers_change  # napari re-ranges the dims on every layer's new data
    monkeypatch.setattr(viewer, "_on_layers_change", lambda *a: calls.append(rerange(*a)))
    scene.box_layer.data = scene.box_layer.data  # the handler is called by name: it counts
    assert len(calls) == 1
    scene.update_spins(-scene.spins)
    assert len(calls) == 1  # not for the arrows: they turn about atoms inside the box
    np.testing.assert_allclose(scene.spin_layer.data[:, 1], scene.arrow_length * scene.spins)
    visual = viewer.window._qt_viewer.canvas.layer_to_visual[scene.spin_layer]
    drawn = visual.node._meshdata.get_vertices().copy()
    scene.update_spins(-scene.spins)  # the canvas still hears of new arrows
    assert not np.allclose(visual.node._meshdata.get_vertices(), drawn)


def test_before_any_data_the_correlation_axes_span_the_bins_without_an_empty_legend(app_viewer):
    _, session = app_viewer
    plots = session.plots
    r_max = float(session.sim.edges[-1])
    assert plots.corr.ax.get_xlim() == (0.0, r_max)
    assert not plots._legend.get_visible()
    session.sim.advance(3)
    plots.update(session.sim.snapshot())
    plots.flush(force_full=True)
    assert plots._legend.get_visible()  # curves now, with their times


def test_every_plot_follows_napari_theme(app_viewer):
    from matplotlib.colors import to_hex

    from app.plots import theme_colours

    viewer, session = app_viewer
    figures = [p.figure for p in session.plots.plots.values()]
    figures += [session.panels["Model"].exchange.figure, session.panels["Fields"].parity.figure]
    for theme in ("light", "dark"):
        viewer.theme = theme
        c = theme_colours(theme)
        for figure in figures:
            (ax,) = figure.axes
            assert to_hex(figure.get_facecolor()) == to_hex(c["background"])
            assert to_hex(ax.get_facecolor()) == to_hex(c["canvas"])
            assert to_hex(ax.title.get_color()) == to_hex(c["text"])
            assert ax.get_title()  # texts kept
        assert not any(p.needs_full for p in session.plots.plots.values())  # redrawn at once
        legend = session.plots._legend.get_texts()[0]
        assert to_hex(legend.get_color()) == to_hex(c["text"])
        # data colours that read on the background: darker ones on the light theme
        assert to_hex(session.plots.energy_line.get_color()) == c["energy"]
        line = session.panels["Model"].exchange.figure.axes[0].lines[0]
        assert to_hex(line.get_color()) == c["data"]
    assert theme_colours("light")["energy"] != theme_colours("dark")["energy"]

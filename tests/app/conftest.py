"""Fixtures for the GUI tests: a small sdglass viewer (tiny_model_file is in tests/conftest.py)."""

import threading

import pytest


@pytest.fixture
def app_viewer(make_napari_viewer):
    """launch() on a test viewer with N = 30 (no shipped model needed)."""
    from app.launcher import launch, session_of

    viewer = launch(viewer=make_napari_viewer(), return_viewer=True, n=30)
    session = session_of(viewer)
    yield viewer, session
    session.stop(wait=True)


@pytest.fixture
def generate(qtbot):
    """generate(panel): press Generate in a System panel and wait for the background build;
    True when the new system is in place, False when an error shows inline."""

    def press(panel) -> bool:
        started = panel.generate()
        qtbot.waitUntil(lambda: panel.job is None, timeout=60_000)
        return started and not panel.message.value.startswith("⚠")

    return press


@pytest.fixture
def choose_engine(qtbot):
    """choose_engine(panel, label): pick an engine in a Dynamics panel, wait for the switch."""

    def choose(panel, label: str) -> None:
        panel.engine.value = label
        qtbot.waitUntil(lambda: panel.job is None, timeout=60_000)

    return choose


@pytest.fixture
def choose_model(qtbot):
    """choose_model(panel, path): load a model file in a Model panel, wait for the background
    read; True when the session took the new model, False when the old one stays."""

    def load(panel, path) -> bool:
        before = panel.session.model
        assert panel.load(path)
        qtbot.waitUntil(lambda: panel.job is None, timeout=60_000)
        return panel.session.model is not before

    return load


def slow_steps(session, seconds: float) -> threading.Event:
    """Each field evaluation of the session's stepper sleeps `seconds` first (ED at large N:
    seconds a step; an SIB step evaluates twice). Returns an event set when the first
    evaluation begins (a step is then in progress)."""
    import time

    fast, begun = session.sim.stepper.provider, threading.Event()

    class Slow:
        def fields(self, spins):
            begun.set()
            time.sleep(seconds)
            return fast.fields(spins)

    session.sim.stepper.provider = Slow()
    return begun

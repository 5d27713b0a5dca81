"""Fixtures for the GUI tests: a small sdglass viewer (tiny_model_file is in tests/conftest.py)."""

import pytest


@pytest.fixture
def app_viewer(make_napari_viewer):
    """launch() on a test viewer with N = 30 (no shipped model needed)."""
    from app.launcher import launch, session_of

    viewer = launch(viewer=make_napari_viewer(), return_viewer=True, n=30)
    session = session_of(viewer)
    yield viewer, session
    session.stop(wait=True)

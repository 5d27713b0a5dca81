"""Fixtures for the GUI tests: a small sdglass viewer and a tiny ML model file."""

import pytest
import torch

from core.descriptor import DescriptorSpec
from core.model import Architecture, EnergyModel
from core.modelfile import ModelCard, save_model

PAPER_PHYSICAL = {"t0": 1.0, "ell": 1.0, "J": 6.0, "filling": 0.5, "kT_e": 0.0, "density": 0.8}


@pytest.fixture(scope="session")
def tiny_model_file(tmp_path_factory):
    """A small random ML model file (paper physical parameters, small descriptor)."""
    torch.manual_seed(0)
    spec = DescriptorSpec(rc=1.6, radii=(0.6, 0.9, 1.2), w=0.2, d_prime=(1.0,))
    model = EnergyModel(spec, Architecture.parse("8"))
    for p in model.net.parameters():
        torch.nn.init.normal_(p, std=0.05)
    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    return save_model(path, model, ModelCard(dict(PAPER_PHYSICAL)))


@pytest.fixture
def app_viewer(make_napari_viewer):
    """launch() on a test viewer with N = 30 (no shipped model needed)."""
    from app.launcher import launch, session_of

    viewer = launch(viewer=make_napari_viewer(), return_viewer=True, n=30)
    session = session_of(viewer)
    yield viewer, session
    session.stop(wait=True)

"""Test-suite settings and fixtures shared by tests/core and tests/app."""

import pytest
import torch

from core.descriptor import DescriptorSpec
from core.model import Architecture, EnergyModel
from core.modelfile import ModelCard, save_model

# The suite's matrices are small: one thread is as fast, deterministic, and keeps
# the tests from thrashing when other jobs share the 2-core machine.
torch.set_num_threads(1)

PAPER_PHYSICAL = {"t0": 1.0, "ell": 1.0, "J": 6.0, "filling": 0.5, "kT_e": 0.0, "density": 0.8}


@pytest.fixture(scope="session")
def tiny_model_file(tmp_path_factory):
    """A small random ML model file (paper physical parameters; rc = 1.4 fits N >= 20)."""
    torch.manual_seed(0)
    spec = DescriptorSpec(rc=1.4, radii=(0.6, 0.9, 1.2), w=0.2, d_prime=(1.0,))
    model = EnergyModel(spec, Architecture.parse("8"))
    for p in model.net.parameters():
        torch.nn.init.normal_(p, std=0.05)
    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    return save_model(path, model, ModelCard(dict(PAPER_PHYSICAL)))

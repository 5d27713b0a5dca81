"""Every model file shipped in assets/models: loads, is for the paper's system, and
predicts the ED torque H_perp = S x H on a configuration no model was trained on."""

import numpy as np
import pytest
import torch

from core.config import ElectronConfig, SystemConfig
from core.electrons import EDSolver
from core.model import MLFieldProvider, check_physical_parameters, physical_parameters
from core.modelfile import load_model
from core.paths import ASSETS
from core.system import generate_positions, random_spins

MODELS = sorted((ASSETS / "models").glob("*.safetensors"))


def test_the_default_and_the_fast_model_are_shipped():
    assert {"default.safetensors", "fast.safetensors"} <= {p.name for p in MODELS}


@pytest.fixture(scope="module")
def ed_torques():
    """ED H_perp of 8 random states of a configuration (seed 9000) outside every training set."""
    atoms = generate_positions(SystemConfig(n=100, seed=9000))
    spins = random_spins(8, 100, torch.Generator().manual_seed(9000), dtype=torch.float64)
    h, _ = EDSolver(atoms, ElectronConfig()).fields(spins)
    return atoms, spins, torch.linalg.cross(spins, h, dim=-1)


@pytest.mark.parametrize("path", MODELS, ids=[p.stem for p in MODELS])
def test_a_shipped_model_predicts_the_ed_torque(path, ed_torques):
    atoms, spins, ed = ed_torques
    model, card = load_model(path)
    paper = physical_parameters(ElectronConfig(), SystemConfig().density)
    assert check_physical_parameters(card.physical, paper) == []
    h, _ = MLFieldProvider(model, atoms).fields(spins)
    rmse = float(torch.linalg.cross(spins, h, dim=-1).sub(ed).pow(2).mean().sqrt())
    # ED's H_perp components have std 0.0136 t0 here (predicting zero scores that);
    # measured: default 4.5e-4, fast 4.5e-4, pairwise J(R) 7.1e-4, paper-arch 6.9e-4
    assert np.isfinite(rmse) and rmse < 1e-3, rmse

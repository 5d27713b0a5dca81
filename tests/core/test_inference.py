import pytest
import torch

from core.config import SystemConfig
from core.descriptor import DescriptorSpec, build_geometry, concat_geometries
from core.errors import StateError
from core.inference import FusedFields, activation_backward, internal_feature_order
from core.model import ACTIVATIONS, Architecture, EnergyModel
from core.system import generate_positions, random_spins

SPEC = DescriptorSpec(rc=1.6, radii=(0.6, 0.9, 1.2, 1.5), w=0.2, d_prime=(0.8, 1.4))
SPECS = {
    "all": SPEC,
    "triplet cutoff": SPEC.replace(triplet_rc=1.3),
    "G3m only": SPEC.replace(include_chi=False, triplet_rc=1.3),
    "G3chi only": SPEC.replace(include_g3m=False),
    "G2m only": SPEC.replace(include_g3m=False, include_chi=False),
}


@pytest.fixture(scope="module")
def systems():
    return [generate_positions(SystemConfig(n=n, seed=s)) for n, s in ((30, 2), (28, 5))]


def random_model(spec: DescriptorSpec, arch: str = "16,8", seed: int = 0) -> EnergyModel:
    torch.manual_seed(seed)
    model = EnergyModel(spec, Architecture.parse(arch)).double()
    for p in model.net.parameters():
        torch.nn.init.normal_(p, std=0.3)
    with torch.no_grad():  # a standardisation that the fold must carry
        model.feature_mean.uniform_(-0.5, 0.5)
        model.feature_scale.uniform_(0.5, 2.0)
        model.energy_offset.fill_(-0.7)
    return model


def autograd_fields(model: EnergyModel, geometry, spins: torch.Tensor):
    """-dE/dS and E through the differentiable descriptor (core.descriptor.features)."""
    from core.descriptor import features

    s = spins.clone().requires_grad_(True)
    e = model.energy(features(geometry, s))
    (grad,) = torch.autograd.grad(e.sum(), s)
    return -grad, e.detach()


@pytest.mark.parametrize("name", sorted(SPECS))
@pytest.mark.parametrize("batch", [1, 2, 3, 5])  # both layouts (ROW_LAYOUT_MAX_BATCH)
def test_fused_fields_equal_minus_the_autograd_gradient(systems, name, batch):
    spec = SPECS[name]
    model = random_model(spec)
    geometry = build_geometry(systems[0], spec, dtype=torch.float64)
    spins = random_spins(batch, systems[0].n, torch.Generator().manual_seed(batch))
    h, e = FusedFields(model, geometry)(spins)
    h_ref, e_ref = autograd_fields(model, geometry, spins)
    torch.testing.assert_close(h, h_ref, rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(e, e_ref, rtol=1e-12, atol=1e-12)
    assert h.abs().max() > 1e-3  # the fields are not trivially zero


@pytest.mark.parametrize("batch", [2, 4])  # both layouts (ROW_LAYOUT_MAX_BATCH)
def test_fused_fields_of_the_pairwise_model_and_of_concatenated_configurations(systems, batch):
    spec = SPEC.replace(triplet_rc=1.3)
    geometry = concat_geometries([build_geometry(s, spec, dtype=torch.float64) for s in systems])
    spins = random_spins(batch, geometry.n_atoms, torch.Generator().manual_seed(7))
    model = random_model(spec)
    torch.testing.assert_close(
        FusedFields(model, geometry)(spins), autograd_fields(model, geometry, spins)
    )
    pairwise = random_model(spec.replace(include_g3m=False, include_chi=False), "pairwise")
    g2_only = concat_geometries(
        [build_geometry(s, pairwise.spec, dtype=torch.float64) for s in systems]
    )
    torch.testing.assert_close(
        FusedFields(pairwise, g2_only)(spins), autograd_fields(pairwise, g2_only, spins)
    )


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
@pytest.mark.parametrize("batch", [1, 3])  # both layouts (ROW_LAYOUT_MAX_BATCH)
def test_fused_fields_through_every_activation(systems, activation, batch):
    # the network's backward is written out for each activation (activation_backward)
    model = random_model(SPEC, "12,6,4")
    model.net = torch.nn.Sequential(
        *(ACTIVATIONS[activation]() if isinstance(m, torch.nn.SiLU) else m for m in model.net)
    )
    geometry = build_geometry(systems[1], SPEC, dtype=torch.float64)
    spins = random_spins(batch, systems[1].n, torch.Generator().manual_seed(3))
    h, e = FusedFields(model, geometry)(spins)
    h_ref, e_ref = autograd_fields(model, geometry, spins)
    torch.testing.assert_close(h, h_ref, rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(e, e_ref, rtol=1e-12, atol=1e-12)


def test_activation_backward_refuses_an_unknown_activation():
    x = torch.randn(4, 3)
    with pytest.raises(TypeError, match="GELU"):
        activation_backward(torch.nn.GELU(), torch.ones_like(x), x, torch.nn.GELU()(x))


def test_fused_fields_follow_weights_changed_in_place(systems):
    model = random_model(SPEC)
    geometry = build_geometry(systems[0], SPEC, dtype=torch.float64)
    fused = FusedFields(model, geometry)
    spins = random_spins(1, systems[0].n, torch.Generator().manual_seed(3))
    before = fused(spins)[0]
    with torch.no_grad():  # as an optimiser step or load_state_dict would
        model.net[0].weight.mul_(1.5)
        model.feature_scale.mul_(0.8)
    after = fused(spins)[0]
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, autograd_fields(model, geometry, spins)[0])


def test_internal_feature_order_is_a_permutation_that_pairs_families(systems):
    order = internal_feature_order(SPEC)
    assert sorted(order.tolist()) == list(range(SPEC.n_features))
    labels = [SPEC.feature_labels()[i] for i in order]
    assert labels[: SPEC.n_radii] == SPEC.feature_labels()[: SPEC.n_radii]
    # after G2m: each (lambda, d, d') column as G3m, then the same one as G3chi
    for g3m, chi in zip(labels[SPEC.n_radii :: 2], labels[SPEC.n_radii + 1 :: 2], strict=True):
        assert g3m.startswith("G3m(") and chi == g3m.replace("G3m(", "G3chi(")


def test_fused_fields_refuse_spins_of_the_wrong_shape(systems):
    geometry = build_geometry(systems[0], SPEC, dtype=torch.float64)
    with pytest.raises(StateError, match=r"\(B, 30, 3\)"):
        FusedFields(random_model(SPEC), geometry)(torch.zeros(1, 29, 3, dtype=torch.float64))


def test_fused_fields_refuse_a_batch_beyond_the_available_memory(systems, monkeypatch):
    from core import memory
    from core.errors import MemoryLimitError

    geometry = build_geometry(systems[0], SPEC, dtype=torch.float64)
    fused = FusedFields(random_model(SPEC), geometry)
    one = fused.working_bytes(1)
    # per replica: at least the features and the network's activations (8-byte floats)
    assert one >= 8 * systems[0].n * (SPEC.n_features + 16 + 8)
    assert fused.working_bytes(7) == pytest.approx(7 * one)
    spins = random_spins(4, systems[0].n, torch.Generator().manual_seed(1))
    monkeypatch.setattr(memory, "available_bytes", lambda device: 3 * one)
    fused(spins[:3])  # fits
    with pytest.raises(MemoryLimitError) as err:
        fused(spins)
    assert str(err.value).startswith(f"ML fields of 4 replicas at N = {systems[0].n} needs about")
    assert "use fewer replicas per call" in str(err.value)
    monkeypatch.setattr(memory, "available_bytes", lambda device: None)  # unknown: no refusal
    assert fused(spins)[0].shape == spins.shape
    monkeypatch.setattr(memory, "available_bytes", lambda device: 0)
    fused(spins)  # a batch checked once is not checked again

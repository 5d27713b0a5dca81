import itertools
import json

import ase
import numpy as np
import pytest
import torch
from dscribe.descriptors import ACSF

from core import descriptor
from core.config import ConfigError, SystemConfig
from core.descriptor import (
    PAPER_RADII,
    TRIPLET_SUM,
    DescriptorSpec,
    build_geometry,
    concat_geometries,
    features,
)
from core.errors import StateError
from core.system import AtomicSystem, generate_positions, random_spins

# N = 40 at the paper density: L = 3.68, so Rc = 1.8 is 0.98 L/2 (close to the limit)
SMALL = DescriptorSpec(
    rc=1.8,
    w=0.1,
    radii=tuple(np.linspace(0.5, 1.75, 11)),
    zeta=1.5,
    lambdas=(1.0, -1.0),
    d_prime=(0.9, 1.6),
    w_prime=0.7,
)
EXACT = SMALL.replace(triplet_tolerance=0.0)
#: see tolerance_scale
EMPTY_COLUMN_FLOOR = 0.05


def system(n: int = 40, seed: int = 3) -> AtomicSystem:
    return generate_positions(SystemConfig(n=n, seed=seed))


def spins(batch: int, n: int, seed: int = 0) -> torch.Tensor:
    return random_spins(batch, n, generator=torch.Generator().manual_seed(seed))


def feats(sys_: AtomicSystem, s: torch.Tensor, spec: DescriptorSpec = SMALL) -> torch.Tensor:
    return features(build_geometry(sys_, spec, dtype=torch.float64), s)


def brute_force(positions, box, s, spec: DescriptorSpec, signed_chi: bool = True) -> np.ndarray:
    """PHYSICS.md sums written out densely, over explicit images (27 copies of the box).

    Loops over centres i; every ordered pair (j, k) of neighbour images within the
    triplet cutoff Rc3 enters the triplet sums.
    """
    pos = np.mod(np.asarray(positions, dtype=float), box)
    n, n_d, rc = len(pos), spec.n_radii, spec.rc
    s = np.asarray(s, dtype=float)
    shifts = box * np.array(list(itertools.product((-1, 0, 1), repeat=3)), dtype=float)
    images = (pos[None] + shifts[:, None]).reshape(-1, 3)
    owner = np.tile(np.arange(n), len(shifts))
    radii, rc3 = np.asarray(spec.radii), spec.rc3
    radii3 = np.asarray(spec.triplet_radii)
    n_d3 = len(radii3)

    def fc(r, cut):
        return np.where(r <= cut, 0.5 * (np.cos(np.pi * np.minimum(r, cut) / cut) + 1), 0.0)

    def f2(r, d, width, cut=rc):
        return np.exp(-(((r - d) / width) ** 2)) * fc(r, cut)

    out = np.zeros((s.shape[0], n, spec.n_features))
    for i in range(n):
        rel = images - pos[i]
        r = np.linalg.norm(rel, axis=1)
        near = (r <= rc) & (r > 1e-12)
        vecs, rr, sj = rel[near], r[near], s[:, owner[near]]
        si = s[:, i]
        f2ij = f2(rr[:, None], radii[None], spec.w)
        out[:, i, :n_d] = np.einsum("bm,md->bd", (sj * si[:, None]).sum(-1), f2ij)
        within = rr <= rc3
        vecs, rr, sj = vecs[within], rr[within], sj[:, within]
        f3ij = f2(rr[:, None], radii3[None], spec.w, rc3)
        jj, kk = np.nonzero(~np.eye(len(rr), dtype=bool))  # ordered pairs j != k
        rjk = np.linalg.norm(vecs[kk] - vecs[jj], axis=1)
        cos = np.clip((vecs[jj] * vecs[kk]).sum(1) / (rr[jj] * rr[kk]), -1, 1)
        radial = f3ij[jj] * f3ij[kk]
        families = []
        if spec.include_g3m:
            families.append((sj[:, jj] * sj[:, kk]).sum(-1))
        if spec.include_chi:
            chi = (si[:, None] * np.cross(sj[:, jj], sj[:, kk])).sum(-1)
            families.append(chi * np.sign(rr[kk] - rr[jj]) if signed_chi else chi)
        col = n_d
        for values in families:
            for lam in spec.lambdas:
                for dp in spec.d_prime:
                    ang = 2 ** (1 - spec.zeta) * (1 + lam * cos) ** spec.zeta
                    ang = ang * f2(rjk, dp, spec.w_prime, rc3)
                    out[:, i, col : col + n_d3] = np.einsum("bp,p,pd->bd", values, ang, radial)
                    col += n_d3
    return out


def column_scale(sys_: AtomicSystem, spec: DescriptorSpec) -> torch.Tensor:
    """Per feature: max over atoms of |G| with all weights adding (parallel spins, exact)."""
    up = torch.zeros(1, sys_.n, 3, dtype=torch.float64)
    up[..., 2] = 1
    scale = feats(sys_, up, spec.replace(triplet_tolerance=0.0))[0].abs().amax(0)
    n_d, n_tri = spec.n_radii, spec.n_triplet_radii * spec.n_angular
    if spec.include_chi:  # |chi weight| = |G3m weight| and |S_i . S_j x S_k| <= 1
        scale[-n_tri:] = scale[n_d : n_d + n_tri]
    return scale


def tolerance_scale(sys_: AtomicSystem, spec: DescriptorSpec) -> torch.Tensor:
    """The scale triplet_tolerance refers to: the column scale, floored at 5% of the
    largest triplet column (a column can be nearly empty, e.g. d near r_min in a small
    system, while dropped tails of more populated radii still reach it)."""
    scale = column_scale(sys_, spec)
    floor = EMPTY_COLUMN_FLOOR * scale[spec.n_radii :].max()
    scale[spec.n_radii :] = scale[spec.n_radii :].clamp_min(floor)
    return scale


@pytest.fixture(scope="module")
def small():
    return system()


@pytest.fixture(scope="module")
def paper_system():
    # N = 110: L = 5.16 >= 2 Rc
    return system(n=110, seed=5)


# ---------------------------------------------------------------- spec


def test_paper_spec_has_450_features_and_round_trips_through_json():
    spec = DescriptorSpec.paper()
    assert spec == DescriptorSpec()
    assert spec.n_features == 450 == len(spec.feature_labels())
    assert (spec.rc, spec.w, spec.n_radii, spec.zeta, spec.w_prime) == (2.5, 0.05, 50, 1.0, 1.0)
    assert spec.radii[0] == 0.5 and spec.radii[-1] == pytest.approx(2.46)
    data = json.loads(json.dumps(spec.to_dict()))
    assert data["triplet_sum"] == TRIPLET_SUM == "ordered j != k"
    assert DescriptorSpec.from_dict(data) == spec
    labels = spec.feature_labels()
    assert labels[0].startswith("G2m") and labels[50].startswith("G3m(lambda=+1,d'=1")
    assert labels[250].startswith("G3chi(lambda=+1,d'=1") and labels[-1].startswith("G3chi")


def test_feature_count_follows_included_families():
    assert DescriptorSpec(include_chi=False).n_features == 250
    assert DescriptorSpec(include_g3m=False, include_chi=False).n_features == 50


def test_a_triplet_cutoff_keeps_the_triplet_radii_within_it_and_round_trips():
    spec = DescriptorSpec(radii=(0.5, 1.0, 1.5, 2.0, 2.5), triplet_rc=1.5)
    assert spec.rc3 == 1.5 and spec.triplet_radii == (0.5, 1.0, 1.5)
    assert spec.n_features == 5 + 3 * 2 * 4 == len(spec.feature_labels())
    assert spec.feature_labels()[5:8] == [f"G3m(lambda=+1,d'=1,d={d})" for d in (0.5, 1, 1.5)]
    assert DescriptorSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    assert DescriptorSpec().rc3 == 2.5 and DescriptorSpec().triplet_radii == PAPER_RADII


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(rc=0.0), "rc must be > 0, got 0"),
        (dict(rc=float("nan")), "rc must be finite"),
        (dict(w=-0.1), "width w must be > 0, got -0.1"),
        (dict(w_prime=0.0), "w_prime must be > 0"),
        (dict(radii=()), "radii must not be empty"),
        (dict(radii=(1.0, 0.5)), "strictly increasing"),
        (dict(radii=(0.5, 3.0)), r"radii must lie in \[0, rc = 2.5\]"),
        (dict(zeta=0.5), "zeta must be >= 1, got 0.5"),
        (dict(lambdas=(1.0, 2.0)), r"each be \+1 or -1"),
        (dict(lambdas=(1.0, 1.0)), "must not repeat"),
        (dict(d_prime=()), "d_prime must not be empty"),
        (dict(triplet_tolerance=1.0), r"triplet_tolerance must be in \[0, 1\), got 1.0"),
        (dict(include_chi="yes"), "include_chi must be True or False"),
        (dict(rc="big"), "rc must be a number"),
        (dict(triplet_rc=3.0), r"triplet_rc must be in \(0, rc = 2.5\], got 3.0"),
        (dict(triplet_rc=0.0), r"triplet_rc must be in \(0, rc = 2.5\]"),
        (dict(triplet_rc=0.4), "no radius d lies within the triplet cutoff 0.4"),
    ],
)
def test_bad_spec_values_raise_config_error(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        DescriptorSpec(**kwargs)


def test_from_dict_refuses_other_conventions_and_unknown_keys():
    data = DescriptorSpec().to_dict()
    with pytest.raises(ConfigError, match="triplet_sum"):
        DescriptorSpec.from_dict({**data, "triplet_sum": "j < k"})
    with pytest.raises(ConfigError, match="chi_convention"):
        DescriptorSpec.from_dict({**data, "chi_convention": "none"})
    with pytest.raises(ConfigError, match="unknown DescriptorSpec keys"):
        DescriptorSpec.from_dict({**data, "eta": 1.0})


def test_cutoff_beyond_half_box_is_refused(small):
    with pytest.raises(
        ConfigError,
        match=r"rc = 2.5 exceeds half the box side L/2 = 1.84.* L >= 5 \(N >= 100 at this density\)",
    ):
        build_geometry(small, DescriptorSpec())
    build_geometry(small, SMALL.replace(rc=small.box / 2))  # exactly L/2 is fine
    build_geometry(system(n=100), DescriptorSpec())  # the N the message names is enough


# ---------------------------------------------------------------- definition


@pytest.mark.parametrize(
    "spec",
    [
        EXACT,
        # lambdas and d' of different counts and orders: the map's rows (atom, lambda, d)
        # and the feature columns (lambda, d', d) must not be confused
        EXACT.replace(lambdas=(-1.0,), d_prime=(0.9, 1.3, 1.6)),
        EXACT.replace(lambdas=(-1.0, 1.0), d_prime=(1.3,), include_g3m=False),
        EXACT.replace(d_prime=(1.6, 0.9, 1.3), include_chi=False),
        # triplets with their own, shorter cutoff: 6 of the 11 radii, d' beyond Rc3
        EXACT.replace(triplet_rc=1.2),
    ],
    ids=["default", "one-lambda-three-d'", "chi-only", "g3m-only", "short-triplets"],
)
def test_fast_path_equals_brute_force_triple_sum_for_every_feature(small, spec):
    s = spins(2, small.n)
    fast = feats(small, s, spec).numpy()
    slow = brute_force(small.positions, small.box, s, spec)
    assert np.abs(slow).max() > 0.1
    np.testing.assert_allclose(fast, slow, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("chunk", [1, 7])
def test_triplets_enumerated_in_chunks_of_centres_equal_the_brute_force_sum(
    small, monkeypatch, chunk
):
    monkeypatch.setattr(descriptor, "TRIPLET_CHUNK", chunk)
    s = spins(2, small.n)
    slow = brute_force(small.positions, small.box, s, EXACT)
    np.testing.assert_allclose(feats(small, s, EXACT).numpy(), slow, rtol=1e-10, atol=1e-12)


def test_fast_path_equals_brute_force_on_a_lattice_full_of_chi_ties():
    # simple cubic, spacing 1, box 4: equidistant neighbours give G3chi weight 0 (ties);
    # one displaced atom adds untied triplets beside them
    grid = np.stack(np.meshgrid(*[np.arange(4.0)] * 3, indexing="ij"), -1).reshape(-1, 3)
    grid[0] += (0.13, 0.07, 0.02)
    lattice = AtomicSystem(positions=grid, box=4.0)
    s = spins(2, lattice.n, seed=4)
    fast = feats(lattice, s, EXACT).numpy()
    slow = brute_force(lattice.positions, lattice.box, s, EXACT)
    n_tri = EXACT.n_radii * EXACT.n_angular
    assert np.abs(slow[..., -n_tri:]).max() > 1e-2  # some chirality survives the ties
    np.testing.assert_allclose(fast, slow, rtol=1e-10, atol=1e-12)


def test_paper_spec_equals_brute_force_within_tolerance(paper_system):
    spec = DescriptorSpec.paper()
    s = spins(1, paper_system.n, seed=1)
    fast = feats(paper_system, s, spec)[0]
    slow = torch.from_numpy(brute_force(paper_system.positions, paper_system.box, s, spec)[0])
    bound = spec.triplet_tolerance * tolerance_scale(paper_system, spec) + 1e-12
    assert ((fast - slow).abs() <= bound).all()


def test_dropping_changes_no_feature_by_more_than_tolerance(paper_system):
    spec = DescriptorSpec.paper()
    exact = build_geometry(paper_system, spec.replace(triplet_tolerance=0.0), dtype=torch.float64)
    sparse = build_geometry(paper_system, spec, dtype=torch.float64)
    assert sparse.stats()["triplet_nnz"] < 0.1 * exact.stats()["triplet_nnz"]
    up = torch.zeros(1, paper_system.n, 3, dtype=torch.float64)
    up[..., 2] = 1
    s = torch.cat([spins(4, paper_system.n, seed=2), up])
    err = (features(sparse, s) - features(exact, s)).abs().amax((0, 1))
    ratio = err / (spec.triplet_tolerance * tolerance_scale(paper_system, spec))
    assert ratio.nan_to_num(0.0).max() < 1.0, f"worst ratio {ratio.max():.3g}"
    # measured: worst ratio ~0.6 (N = 110, seeds 5-7; 0.2-0.4 for N >= 130); relative
    # to the largest triplet column the change is below 0.1 triplet_tolerance. Without
    # the floor a nearly empty column (d = 0.5 = r_min here, scale ~1e-5 of the
    # largest) changes by ~1e-7 absolute, ~100x its own scale x triplet_tolerance.


def test_plain_ordered_chirality_sum_vanishes_so_chi_is_signed(small):
    s = spins(2, small.n)
    n_tri = EXACT.n_radii * EXACT.n_angular
    plain = brute_force(small.positions, small.box, s, EXACT, signed_chi=False)[..., -n_tri:]
    assert np.abs(plain).max() < 1e-12
    signed = feats(small, s)[..., -n_tri:]
    assert signed.abs().max() > 1e-2


def test_parallel_spins_g2m_equals_dscribe_acsf_g2(small):
    atoms = ase.Atoms(f"H{small.n}", positions=small.positions, cell=[small.box] * 3, pbc=True)
    acsf = ACSF(
        species=["H"],
        r_cut=SMALL.rc,
        g2_params=[[1 / SMALL.w**2, d] for d in SMALL.radii],
        periodic=True,
    )
    expected = acsf.create(atoms)[:, 1:]  # column 0 is G1
    up = torch.zeros(1, small.n, 3, dtype=torch.float64)
    up[..., 0] = 1
    g2m = feats(small, up)[0, :, : SMALL.n_radii].numpy()
    np.testing.assert_allclose(g2m, expected, rtol=1e-6, atol=1e-9)


# ---------------------------------------------------------------- symmetries


def _rot90_z(p, box):
    return np.stack([-p[:, 1], p[:, 0], p[:, 2]], axis=1) % box


def _cycle_axes(p, box):
    return p[:, [2, 0, 1]]


def _translate(p, box):
    return (p + np.array([1.234, -7.1, 0.3])) % box


def _image_shift(p, box):
    shift = np.random.default_rng(0).integers(-2, 3, size=p.shape)
    return p + box * shift


@pytest.mark.parametrize("move", [_rot90_z, _cycle_axes, _translate, _image_shift])
def test_invariant_under_symmetries_of_the_periodic_box(small, move):
    s = spins(2, small.n)
    moved = AtomicSystem(move(small.positions, small.box), small.box)
    torch.testing.assert_close(feats(moved, s), feats(small, s), rtol=1e-9, atol=1e-11)


def test_atom_permutation_permutes_features(small):
    perm = np.random.default_rng(1).permutation(small.n)
    s = spins(2, small.n)
    permuted = AtomicSystem(small.positions[perm], small.box)
    torch.testing.assert_close(
        feats(permuted, s[:, perm]), feats(small, s)[:, perm], rtol=1e-9, atol=1e-11
    )


def test_global_spin_rotation_leaves_all_features_unchanged(small):
    q, _ = torch.linalg.qr(
        torch.randn(3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    )
    rot = q * torch.sign(torch.linalg.det(q))  # proper rotation
    g = build_geometry(small, SMALL, dtype=torch.float64)
    s = spins(2, small.n)
    torch.testing.assert_close(features(g, s @ rot.T), features(g, s), rtol=1e-9, atol=1e-11)


def test_time_reversal_keeps_g2m_g3m_and_flips_g3chi(small):
    g = build_geometry(small, SMALL, dtype=torch.float64)
    s = spins(2, small.n)
    f, f_rev = features(g, s), features(g, -s)
    n_even = SMALL.n_radii * (1 + SMALL.n_angular)
    torch.testing.assert_close(f_rev[..., :n_even], f[..., :n_even])
    torch.testing.assert_close(f_rev[..., n_even:], -f[..., n_even:])


# ---------------------------------------------------------------- derivatives


#: Each family on and off: the custom backwards take other paths without G3chi or G3m.
FAMILIES = [
    SMALL,
    SMALL.replace(include_chi=False),
    SMALL.replace(include_g3m=False),
    SMALL.replace(include_g3m=False, include_chi=False),
    SMALL.replace(triplet_rc=1.2),
]
FAMILY_IDS = ["all", "no-chi", "no-g3m", "g2m-only", "short-triplets"]


@pytest.mark.parametrize("spec", FAMILIES, ids=FAMILY_IDS)
def test_autograd_gradient_equals_central_differences(small, spec):
    g = build_geometry(small, spec, dtype=torch.float64)
    s = spins(2, small.n)
    weights = torch.randn(2, small.n, spec.n_features, dtype=torch.float64)

    def loss(x):
        return (features(g, x) * weights).sum()

    x = s.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(loss(x), x)
    h = 1e-5
    rng = np.random.default_rng(0)
    for b, i, c in zip(
        rng.integers(0, 2, 12), rng.integers(0, small.n, 12), rng.integers(0, 3, 12), strict=True
    ):
        plus, minus = s.clone(), s.clone()
        plus[b, i, c] += h
        minus[b, i, c] -= h
        fd = (loss(plus) - loss(minus)) / (2 * h)
        assert grad[b, i, c].item() == pytest.approx(fd.item(), rel=1e-6, abs=1e-8)


@pytest.mark.parametrize("spec", FAMILIES, ids=FAMILY_IDS)
def test_fields_are_differentiable_again_for_training(small, spec):
    """H = -dE/dS with create_graph, then d(H . U)/dS: the custom backwards' backwards."""
    g = build_geometry(small, spec, dtype=torch.float64)
    weights = torch.randn(1, small.n, spec.n_features, dtype=torch.float64)
    u = torch.randn(1, small.n, 3, dtype=torch.float64)

    def field_loss(x, create_graph):
        x = x.clone().requires_grad_(True)
        (h_field,) = torch.autograd.grad(
            -(features(g, x) * weights).sum(), x, create_graph=create_graph
        )
        return (h_field * u).sum(), x

    s = spins(1, small.n)
    value, x = field_loss(s, create_graph=True)
    (grad,) = torch.autograd.grad(value, x)
    h = 1e-5
    for i, c in [(0, 0), (7, 2), (19, 1), (33, 0)]:
        plus, minus = s.clone(), s.clone()
        plus[0, i, c] += h
        minus[0, i, c] -= h
        fd = (field_loss(plus, False)[0] - field_loss(minus, False)[0]) / (2 * h)
        assert grad[0, i, c].item() == pytest.approx(fd.item(), rel=1e-6, abs=1e-8)


# ---------------------------------------------------------------- batches and dtypes


def test_a_triplet_cutoff_equal_to_rc_changes_nothing(small):
    s = spins(2, small.n)
    torch.testing.assert_close(
        feats(small, s, SMALL.replace(triplet_rc=SMALL.rc)), feats(small, s), rtol=0, atol=0
    )


def test_the_triplet_map_reads_only_the_pairs_within_the_triplet_cutoff(small):
    geometry = build_geometry(small, SMALL.replace(triplet_rc=1.2), dtype=torch.float64)
    a, b = geometry.pairs
    delta = small.positions[geometry.order[b]] - small.positions[geometry.order[a]]
    r = np.linalg.norm(delta - small.box * np.round(delta / small.box), axis=1)
    np.testing.assert_array_equal(geometry.triplet_pairs.numpy(), np.flatnonzero(r < 1.2))
    assert 0 < len(geometry.jk) < geometry.n_pairs
    assert geometry.triplet[0].shape[1] == descriptor.SIGN_SLOTS * len(geometry.jk)
    moved = geometry.to(dtype=torch.float32)
    torch.testing.assert_close(
        features(moved, spins(1, small.n)), features(geometry, spins(1, small.n)).float()
    )


@pytest.mark.parametrize("spec", [SMALL, SMALL.replace(triplet_rc=1.2)], ids=["rc", "rc3"])
def test_concat_geometries_equals_separate_evaluation(spec):
    a, b = system(40, seed=3), system(50, seed=4)
    ga, gb = (build_geometry(x, spec, dtype=torch.float64) for x in (a, b))
    both = concat_geometries([ga, gb])
    assert both.n_atoms == 90 and both.atom_offsets == (0, 40)
    s = spins(3, 90)
    f = features(both, s)
    torch.testing.assert_close(f[:, :40], features(ga, s[:, :40]))
    torch.testing.assert_close(f[:, 40:], features(gb, s[:, 40:]))
    triple = concat_geometries([both, ga])
    assert triple.atom_offsets == (0, 40, 90)


def test_float32_ml_path_matches_float64(small):
    s = spins(2, small.n)
    f64 = feats(small, s)
    f32 = features(build_geometry(small, SMALL), s.float())
    assert f32.dtype == torch.float32
    assert (f32.double() - f64).abs().max() < 1e-5 * f64.abs().max()


def test_geometry_moved_to_another_dtype_gives_the_features_of_one_built_in_it(small):
    s = spins(2, small.n)
    moved = build_geometry(small, SMALL).to(dtype=torch.float64)
    assert moved.triplet[0].values().dtype == torch.float64
    assert moved.triplet[0].layout == torch.sparse_csr
    torch.testing.assert_close(features(moved, s), feats(small, s))


def test_single_configuration_input_and_bad_shapes(small):
    g = build_geometry(small, SMALL, dtype=torch.float64)
    s = spins(1, small.n)
    torch.testing.assert_close(features(g, s[0]), features(g, s)[0])
    with pytest.raises(StateError, match=r"spins must have shape \(B, 40, 3\)"):
        features(g, torch.zeros(1, 39, 3, dtype=torch.float64))


def test_g3m_only_and_g2m_only_specs_give_the_leading_columns(small):
    s = spins(1, small.n)
    full = feats(small, s)
    no_chi = feats(small, s, SMALL.replace(include_chi=False))
    only_g2 = feats(small, s, SMALL.replace(include_chi=False, include_g3m=False))
    torch.testing.assert_close(no_chi, full[..., : no_chi.shape[-1]])
    torch.testing.assert_close(only_g2, full[..., : SMALL.n_radii])
    chi_only = feats(small, s, SMALL.replace(include_g3m=False))
    torch.testing.assert_close(chi_only[..., SMALL.n_radii :], full[..., no_chi.shape[-1] :])


def test_spin_gathers_backpropagate_in_a_fixed_order():
    """The backward of advanced indexing (IndexBackward0) adds on the CPU with atomics, in
    an order that varies from run to run: float32 ML runs then differed between processes
    (1e-11 in C(r, t) after 200 steps). index_select's backward adds in a fixed order."""
    s = spins(2, 40).requires_grad_(True)
    out = feats(system(), s)
    seen, stack = set(), [out.grad_fn]
    while stack:
        node = stack.pop()
        if node is not None and node not in seen:
            seen.add(node)
            stack.extend(next_fn for next_fn, _ in node.next_functions)
    names = {type(node).__name__ for node in seen}
    assert "IndexBackward0" not in names
    assert "IndexSelectBackward0" in names


def test_a_set_up_larger_than_the_memory_is_refused_before_the_maps_are_made(monkeypatch):
    from core import memory
    from core.errors import MemoryLimitError

    atoms = system(n=300, seed=1)
    made = []
    monkeypatch.setattr(descriptor, "TRIPLET_CHUNK", 100)  # three chunks: two after the check
    real_chunks = descriptor._triplets
    monkeypatch.setattr(descriptor, "_triplets", lambda *a: made.append(1) or real_chunks(*a))
    monkeypatch.setattr(memory, "available_bytes", lambda device: 2**20)  # 1 MiB
    with pytest.raises(MemoryLimitError, match=r"^the ML descriptor's set-up at N = 300 \("):
        build_geometry(atoms, SMALL)
    assert len(made) == 1  # only the first chunk, which measures the entries per centre
    monkeypatch.setattr(memory, "available_bytes", lambda device: None)  # unknown: no refusal
    build_geometry(atoms, SMALL)


def test_the_set_up_memory_estimate_follows_the_map_entries(monkeypatch):
    needs = []
    monkeypatch.setattr(descriptor, "TRIPLET_CHUNK", 100)
    monkeypatch.setattr(descriptor, "require_memory", lambda needed, *a: needs.append(needed))
    geometry = build_geometry(system(n=600, seed=2), SMALL)
    stats = geometry.stats()
    entries = needs[0] / descriptor.SETUP_BYTES_PER_ENTRY
    # the G2m count is exact before the PAIR_TOLERANCE cut; the triplets are extrapolated
    assert 0.9 < entries / (stats["g2_nnz"] + stats["triplet_nnz"]) < 1.15


def test_maps_too_large_for_the_device_they_go_to_are_refused_before_it_is_touched(monkeypatch):
    from core import memory
    from core.errors import MemoryLimitError

    free = {"cpu": None, "cuda": 2**10}  # the set-up fits here; the maps do not fit there
    monkeypatch.setattr(memory, "available_bytes", lambda device: free[torch.device(device).type])
    with pytest.raises(MemoryLimitError, match=r"^the ML descriptor's maps at N = 40 .* on cuda"):
        build_geometry(system(), SMALL, device="cuda")

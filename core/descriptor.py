"""Magnetic atom-centred symmetry functions (PHYSICS.md "Magnetic descriptor", paper Sec. III.B).

Equations (lengths in ell):

    fc(R)       = 0.5 (cos(pi R / Rc) + 1) for R <= Rc, else 0
    F2(R; d, w) = exp(-(R - d)^2 / w^2) fc(R)
    F3          = 2^(1-zeta) (1 + lambda cos theta_ijk)^zeta
                  F2(R_ij; d, w) F2(R_ik; d, w) F2(R_jk; d', w')
    G2m(d)               = sum_j F2(R_ij) (S_i . S_j)
    G3m(lambda, d', d)   = sum_{j != k} F3 (S_j . S_k)
    G3chi(lambda, d', d) = sum_{j != k} sign(R_ik - R_ij) F3 S_i . (S_j x S_k)

Sums run over ordered pairs j != k of neighbours of i (both != i).

Conventions (decided here, where PHYSICS.md and the paper are silent):

* G3chi orientation. F3 is symmetric under j <-> k while the scalar chirality
  S_i . (S_j x S_k) is antisymmetric, so the plain ordered sum of PHYSICS.md
  vanishes identically. Three points carry no rotation-invariant orientation
  in 3D, and ordering j, k by atom index would break permutation invariance, so
  each ordered pair is weighted by sign(R_ik - R_ij): the chirality is always
  taken from the nearer to the farther neighbour. The weight is symmetric
  under j <-> k together with the chirality, so nothing cancels; the feature
  is invariant under rotations, translations, periodic image shifts and atom
  permutations, invariant under global spin rotations and odd under S -> -S.
  Ties |R_ik - R_ij| <= CHI_TIE_TOLERANCE get weight 0 (for random positions
  they do not occur; in symmetric test geometries this keeps the feature
  independent of round-off). The weight is discontinuous in the positions,
  which is harmless: positions never move during spin dynamics.
* R_jk. The triplet is the triangle formed by i and the images of j and k
  that neighbour i, so R_jk = |r_ik - r_ij| (the dscribe/ASE convention).
  With Rc <= L/2 each neighbour image is unique. If |r_ik - r_ij| < Rc <= L/2
  it is also the minimum-image distance of j and k (any other image is at
  least L - L/2 away). If it is >= Rc, fc kills the term, although the
  minimum image of k may be nearer to j: that image is not the neighbour of i
  that enters the triangle, so the term is correctly zero. Rc > L/2 is
  rejected because the neighbour images would then be ambiguous.
* triplet_tolerance. The d-dependent factor of F3 (the "d-part"),
  exp(-(R_ij-d)^2/w^2) exp(-(R_ik-d)^2/w^2) fc(R_ij) fc(R_ik), is large for
  only ~6 of the paper's 50 radii. An entry (triplet, d) is dropped when it is
  below triplet_tolerance / TOLERANCE_SAFETY times the largest value the d-part
  can take at that d (``d_part_peak``: ~0.8 at small d, ~2e-6 at d = 2.46, so
  the columns near Rc keep their relative accuracy). The threshold depends only
  on the spec, never on the configuration. Measured (tests): every feature
  changes by less than triplet_tolerance x its scale (its largest value over
  the atoms with all weights adding, floored at 5% of the largest triplet
  column), and by less than 0.1 triplet_tolerance x the largest triplet
  column. A nearly empty column (d near r_min in a small system) can change by
  more than that relative to its own tiny scale, ~1e-7 absolute. Training and
  inference use the same truncated descriptor (the spec is stored), and fields
  are exact derivatives of it. G2m entries below PAIR_TOLERANCE (1e-12) are
  dropped too.

* triplet_rc (Rc3, default Rc). The triplets may have a shorter cutoff than
  the pairs, as in ANI's angular terms: F3 then takes fc with Rc3 on all three
  sides (R_ij, R_ik and R_jk, so a triangle lies within Rc3), and the triplet
  features use only the centres d <= Rc3. Their cost grows about as Rc3^6 (pairs
  of neighbours), that of G2m as Rc^3: long-range G2m shells and short-range
  triplets make a cheaper descriptor than one cutoff for both. The triplet map
  then reads only the pairs within Rc3 (``triplet_pairs``). Measured at N = 500
  with the shipped shells (assets/models/fast.safetensors, Rc3 = 1.8): 35.5k
  instead of 215k triplets, 0.44M instead of 2.58M map entries, one field
  evaluation 3.7 instead of 6.3-6.5 ms and the set-up 0.064 instead of 0.39 s;
  one cutoff of 2.0 for G2m too doubled the trained model's error (its card).

Feature layout (F = n_features): [G2m(d) for d in radii], then, if included,
G3m, then G3chi, each ordered (lambda, d', d) with d fastest over the triplet
radii (d <= Rc3);
``DescriptorSpec.feature_labels()`` names every column.

Implementation. ``build_geometry`` computes everything that depends on the
positions once, in float64 with numpy/scipy (stored in the requested dtype).
Atoms are first put in Morton (Z-curve) order, so that spatial neighbours are
neighbours in memory. Then: the unordered pairs within Rc (periodic k-d tree),
the triplets (i; j nearer, k farther) enumerated TorchANI-style (directed pairs
sorted by centre and distance, expanded with cumulative counts; only pairs
whose d-part can pass the threshold; chunks of TRIPLET_CHUNK centres run in a
thread pool), and the weights. Each triplet (i; j, k) is identified with
(centre i, pair (j, k)), and (j, k) is itself a pair within Rc whenever
F2(R_jk) != 0, so every feature is a sparse linear map of per-pair quantities.
Three factorisations keep the maps few and small:

* F3 = d-part(R_ij, R_ik; d) x angular(cos theta; lambda) x F2(R_jk; d', w'),
  and the last factor belongs to the pair (j, k): it multiplies the per-pair
  right-hand side, so the map has rows per (atom, lambda, d), not per d'.
* The G3chi weight is the G3m weight times the triplet's sign (+1, -1; 0 for a
  tie), so one map serves both: each pair owns two columns (2 p + slot, slot 0
  for sign +1, 1 for -1; a tie is split into half weights on both slots) that
  multiply [S_a . S_b, s S_a x S_b] for s = +1, -1.
* Hence one product, with 4 n_d' right-hand columns per spin state, gives G3m
  and V (G3chi_i = S_i . V_i) for every lambda and d' at once; a sparse product
  costs little more for several right-hand columns than for one.

Because F3, the bond and the signed chirality are all symmetric under
j <-> k, each unordered triplet carries the factor 2 of the ordered sum. The
maps (rows (atom, d) for G2m, (atom, lambda, d) for the triplets) are CSR
matrices stored with their transposes. Per step ``features`` gathers both
ends of every pair with a 0/1 map, forms the pair bonds and cross products
(P x B) and their right-hand sides (``_PairTerms``), applies the maps through
``core.sparse.SparseApply``, whose backward applies the precomputed
transposes, and contracts with S_i for G3chi while writing the feature rows
(``_Assemble``). Every backward is itself differentiable, so
losses on fields -dE/dS can be trained. No step loops over atoms, pairs or
triplets.

Measured (shipped wide-shell spec, 2-core CPU, one field evaluation = features,
network and backward): against one map per (family, lambda, d') applied to
bonds and cross products separately, the factorisations take N = 500 from
17.7 to 9.3 ms and the set-up at N = 10000 from 12.9 to 8.6 s; the Morton order
then takes N = 10000 from 0.36 to 0.15 s per evaluation and the set-up to
6.8 s. A per-triplet formulation (~6 d-part entries x angular numbers through
one d-part map) was 6x slower for training batches of 16 states, because its
(triplet x batch x column) intermediates do not amortise over the batch.
Since then the pair ends are gathered by one sparse 0/1 product (``pair_ends``),
and the pair terms and the feature assembly are custom autograd functions
(``_PairTerms``, ``_Assemble``) that write each block once as a row scale over
contiguous rows: in one process, against the previous code in interleaved
rounds (best of 5), a SIB step of the shipped model at N = 500 went from 20.0 to
18.2 ms at B = 1 (features + backward 6.60 -> 5.88 ms), from 186 to 167 ms at
B = 20 and from 1.91 to 1.77 s at B = 200. A training step (16
frames, N = 100, fields with create_graph) is unchanged: 33.2 against 33.3 ms.
Then the two lambdas' triplet maps became one, with rows (atom, lambda, d):
one product forward and one backward (no sum of two backward products), and
one write per feature block. It stores each entry's column
index once per lambda (the two maps had shared one index array), 16 instead
of 12 bytes per (triplet, d) entry, and is still faster (same A/B, best of 3-5):
a SIB step at N = 500 from 14.6 to 13.6 ms at B = 1 and from 160 to 157 ms at
B = 20; at N = 20000, B = 1, from 530 to 463 ms.

The dynamics do not take this differentiable path: ``core.inference`` computes
the same features, the network and the fields -dE/dS in one pass with the
backward written out (it shares ``pair_terms`` and ``pair_terms_backward``),
faster at every batch size (its docstring); training keeps ``features``.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import torch
from scipy.spatial import cKDTree

from core.config import ConfigError, _require
from core.errors import StateError
from core.memory import require_memory
from core.sparse import Pattern, SparseApply, block_diag_maps, moved
from core.system import AtomicSystem

#: The paper's 50 radii d, evenly spaced in [0.5, 2.46] (ell).
PAPER_RADII: tuple[float, ...] = tuple(float(x) for x in np.linspace(0.5, 2.46, 50))
#: Written into to_dict(): the triplet sums run over ordered pairs j != k.
TRIPLET_SUM = "ordered j != k"
#: Written into to_dict(): the G3chi weight that keeps the ordered sum from cancelling.
CHI_CONVENTION = "sign(R_ik - R_ij)"
#: |R_ik - R_ij| at or below this (ell) counts as a tie: G3chi weight 0.
CHI_TIE_TOLERANCE = 1e-9
#: d-part entries below triplet_tolerance / TOLERANCE_SAFETY x their largest possible
#: value (per d) are dropped; measured, every feature then changes by less than
#: triplet_tolerance x its scale (floored at 5% of the largest triplet column; see
#: test_dropping_changes_no_feature_by_more_than_tolerance).
TOLERANCE_SAFETY = 10.0
#: G2m entries F2(R; d, w) below this are dropped (exp tails; float64 round-off scale).
PAIR_TOLERANCE = 1e-12


def _floats(name: str, value: Any) -> tuple[float, ...]:
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a sequence of numbers, got {value!r}") from None
    _require(all(math.isfinite(v) for v in out), f"{name} must be finite, got {out}")
    return out


def _number(name: str, value: Any) -> float:
    _require(
        isinstance(value, int | float | np.floating | np.integer) and not isinstance(value, bool),
        f"{name} must be a number, got {value!r}",
    )
    _require(math.isfinite(float(value)), f"{name} must be finite, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class DescriptorSpec:
    """Magnetic ACSF parameters (PHYSICS.md "Magnetic descriptor"); default: the paper's 450.

    rc: cutoff Rc (ell); w: radial width of F2(R_ij), F2(R_ik) (ell); radii: the
    centres d (ell, strictly increasing in [0, rc]); zeta: angular exponent
    (>= 1); lambdas: angular signs (each +1 or -1); d_prime, w_prime: centres
    and width of F2(R_jk; d', w') (ell); include_g3m, include_chi: which triplet
    families to compute; triplet_tolerance: accuracy target of the triplet
    features: (triplet, d) entries of the d-part below triplet_tolerance /
    TOLERANCE_SAFETY x their largest possible value at that d are dropped (0 keeps
    every entry; see the module docstring for the measured effect); triplet_rc: the
    triplets' own cutoff Rc3 <= rc (None: rc), on all three sides of the triangle,
    with the centres d <= Rc3 (``triplet_radii``).
    """

    rc: float = 2.5
    w: float = 0.05
    radii: tuple[float, ...] = PAPER_RADII
    zeta: float = 1.0
    lambdas: tuple[float, ...] = (1.0, -1.0)
    d_prime: tuple[float, ...] = (1.0, 2.0)
    w_prime: float = 1.0
    include_g3m: bool = True
    include_chi: bool = True
    triplet_tolerance: float = 1e-5
    triplet_rc: float | None = None

    def __post_init__(self) -> None:
        for name in ("rc", "w", "zeta", "w_prime", "triplet_tolerance"):
            object.__setattr__(self, name, _number(name, getattr(self, name)))
        for name in ("radii", "lambdas", "d_prime"):
            object.__setattr__(self, name, _floats(name, getattr(self, name)))
        for name in ("include_g3m", "include_chi"):
            value = getattr(self, name)
            _require(isinstance(value, bool), f"{name} must be True or False, got {value!r}")
        if self.triplet_rc is not None:
            object.__setattr__(self, "triplet_rc", _number("triplet_rc", self.triplet_rc))
            _require(
                0 < self.triplet_rc <= self.rc,
                f"triplet cutoff triplet_rc must be in (0, rc = {self.rc}], got {self.triplet_rc}",
            )
        _require(self.rc > 0, f"cutoff rc must be > 0, got {self.rc}")
        _require(self.w > 0, f"width w must be > 0, got {self.w}")
        _require(self.w_prime > 0, f"width w_prime must be > 0, got {self.w_prime}")
        _require(len(self.radii) > 0, "radii must not be empty")
        _require(
            all(0 <= d <= self.rc for d in self.radii),
            f"radii must lie in [0, rc = {self.rc}], got {self.radii}",
        )
        _require(
            all(b > a for a, b in zip(self.radii, self.radii[1:], strict=False)),
            f"radii must be strictly increasing, got {self.radii}",
        )
        _require(self.zeta >= 1, f"zeta must be >= 1, got {self.zeta}")
        triplets = self.include_g3m or self.include_chi
        _require(
            not triplets or len(self.lambdas) > 0,
            "lambdas must not be empty when triplet features are included",
        )
        _require(
            all(lam in (1.0, -1.0) for lam in self.lambdas),
            f"lambdas must each be +1 or -1, got {self.lambdas}",
        )
        _require(
            len(set(self.lambdas)) == len(self.lambdas),
            f"lambdas must not repeat, got {self.lambdas}",
        )
        _require(
            not triplets or len(self.d_prime) > 0,
            "d_prime must not be empty when triplet features are included",
        )
        _require(all(d >= 0 for d in self.d_prime), f"d_prime must be >= 0, got {self.d_prime}")
        _require(
            not triplets or self.n_triplet_radii > 0,
            f"no radius d lies within the triplet cutoff {self.rc3}: radii {self.radii}",
        )
        _require(
            0 <= self.triplet_tolerance < 1,
            f"triplet_tolerance must be in [0, 1), got {self.triplet_tolerance}",
        )

    @classmethod
    def paper(cls) -> DescriptorSpec:
        """The paper's 450 features: Rc 2.5, w 0.05, 50 d, zeta 1, lambda +-1, d' 1, 2, w' 1."""
        return cls()

    @property
    def n_radii(self) -> int:
        return len(self.radii)

    @property
    def rc3(self) -> float:
        """The triplets' cutoff Rc3 (triplet_rc, or rc when that is None)."""
        return self.rc if self.triplet_rc is None else self.triplet_rc

    @property
    def triplet_radii(self) -> tuple[float, ...]:
        """The centres d of the triplet features: the radii within Rc3."""
        return tuple(d for d in self.radii if d <= self.rc3)

    @property
    def n_triplet_radii(self) -> int:
        return len(self.triplet_radii)

    @property
    def n_angular(self) -> int:
        """(lambda, d') combinations per triplet family."""
        return len(self.lambdas) * len(self.d_prime)

    @property
    def n_triplet_families(self) -> int:
        return int(self.include_g3m) + int(self.include_chi)

    @property
    def n_features(self) -> int:
        """G2m + G3m + G3chi columns (450 for the paper)."""
        return self.n_radii + self.n_triplet_radii * self.n_triplet_families * self.n_angular

    def feature_labels(self) -> list[str]:
        """Column names in feature order, e.g. 'G3m(lambda=-1,d'=2,d=0.54)'."""
        labels = [f"G2m(d={d:.6g})" for d in self.radii]
        families = [n for n, on in (("G3m", self.include_g3m), ("G3chi", self.include_chi)) if on]
        for family in families:
            for lam in self.lambdas:
                for dp in self.d_prime:
                    labels += [
                        f"{family}(lambda={lam:+.0f},d'={dp:.6g},d={d:.6g})"
                        for d in self.triplet_radii
                    ]
        return labels

    def to_dict(self) -> dict[str, Any]:
        """JSON-able parameters plus the summation conventions."""
        data = asdict(self)
        for name in ("radii", "lambdas", "d_prime"):
            data[name] = list(data[name])
        data["triplet_sum"] = TRIPLET_SUM
        data["chi_convention"] = CHI_CONVENTION
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DescriptorSpec:
        """Inverse of to_dict; refuses unknown keys and other summation conventions."""
        data = dict(data)
        for key, expected in (("triplet_sum", TRIPLET_SUM), ("chi_convention", CHI_CONVENTION)):
            value = data.pop(key, expected)
            _require(value == expected, f"{key} must be {expected!r}, got {value!r}")
        names = {f for f in cls.__dataclass_fields__}
        unknown = set(data) - names
        _require(not unknown, f"unknown DescriptorSpec keys: {sorted(unknown)}")
        return cls(**data)

    def replace(self, **changes: Any) -> DescriptorSpec:
        return replace(self, **changes)


# --------------------------------------------------------------------------- geometry


def cutoff_function(r: np.ndarray, rc: float) -> np.ndarray:
    """fc(R) = 0.5 (cos(pi R / Rc) + 1) for R <= Rc, else 0 (PHYSICS.md "Magnetic descriptor")."""
    return np.where(r <= rc, 0.5 * (np.cos(np.pi * np.minimum(r, rc) / rc) + 1.0), 0.0)


def d_part_peak(spec: DescriptorSpec) -> np.ndarray:
    """Largest possible d-part exp(-(R_ij-d)^2/w^2) exp(-(R_ik-d)^2/w^2) fc(R_ij) fc(R_ik) per
    triplet d, fc with the triplet cutoff Rc3.

    Attained at R_ij = R_ik = R, so max over R of exp(-2 (R-d)^2/w^2) fc(R)^2, on a
    grid fine against w (relative accuracy ~1e-5). About 1 for small d, tiny near Rc.
    """
    rc3 = spec.rc3
    r = np.linspace(0.0, rc3, 4001)
    r = np.unique(np.concatenate([r, np.clip(np.asarray(spec.triplet_radii), 0, rc3)]))
    radii = np.asarray(spec.triplet_radii)[:, None]
    peak = (np.exp(-2 * ((r - radii) / spec.w) ** 2) * cutoff_function(r, rc3) ** 2).max(1)
    return peak


def jk_part(spec: DescriptorSpec, r: np.ndarray) -> np.ndarray:
    """F2(R_jk; d', w') = exp(-(R_jk - d')^2 / w'^2) fc(R_jk), fc with the triplet cutoff Rc3,
    for every d', (P, n_d')."""
    radial = np.exp(-(((r[:, None] - np.asarray(spec.d_prime)) / spec.w_prime) ** 2))
    return radial * cutoff_function(r, spec.rc3)[:, None]


def spatial_order(positions: np.ndarray, box: float, bits: int = 10) -> np.ndarray:
    """Atom indices along a Morton (Z-order) curve through the box.

    Neighbours in space become neighbours in index, so the per-pair and per-atom
    rows a sparse map gathers for one atom share cache lines (at N = 10000 the
    gathers would otherwise miss the cache on almost every entry).
    """
    cell = np.clip(
        (np.mod(positions, box) / box * (1 << bits)).astype(np.uint64), 0, (1 << bits) - 1
    )
    code = np.zeros(len(positions), dtype=np.uint64)
    for bit in range(bits):  # bits of the code, not atoms
        for axis in range(3):
            code |= ((cell[:, axis] >> np.uint64(bit)) & np.uint64(1)) << np.uint64(3 * bit + axis)
    return np.argsort(code, kind="stable")


def _expand(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For ranges [lo_t, hi_t): (owner t, index) of every member, without Python loops."""
    counts = np.maximum(hi - lo, 0)
    owner = np.repeat(np.arange(len(lo)), counts)
    starts = np.cumsum(counts) - counts
    index = np.arange(owner.size) - np.repeat(starts - lo, counts)
    return owner, index


@dataclass
class DescriptorGeometry:
    """Everything position-dependent, computed once per configuration (PHYSICS.md: atoms never move).

    Atoms are stored in a spatial order: internal atom k is atom order[k], and
    inverse maps back. pairs (2, P): unordered pairs a < b within Rc (internal
    indices, int64). Sparse CSR maps, each with its transpose for the backward
    pass: g2 (N n_d, P), rows (internal atom, d), takes bonds S_a . S_b to G2m;
    triplet (N n_lambda n_d, P slots), rows (internal atom, lambda, d), takes the
    per-pair right-hand sides of the module docstring to [G3m, V] for every
    lambda and d', with G3chi_i = S_i . V_i (None without triplet features).
    triplet_pairs: the pairs within the triplet cutoff Rc3 < Rc (P3,), the only ones
    the triplet map reads, its columns in this order; None when Rc3 = Rc (all pairs).
    jk holds F2(R_ab; d', w') per pair the triplet map reads, (P3, n_d'). Entries
    are the d-part x angular part of F3, summed over ordered j != k.
    atom_offsets: first atom of each concatenated configuration; n_triplets:
    unordered triplets (i; j, k) with at least one kept entry.
    """

    spec: DescriptorSpec
    n_atoms: int
    pairs: torch.Tensor
    ends: tuple[torch.Tensor, torch.Tensor]
    g2: tuple[torch.Tensor, torch.Tensor]
    triplet: tuple[torch.Tensor, torch.Tensor] | None
    jk: torch.Tensor
    order: torch.Tensor
    inverse: torch.Tensor
    n_triplets: int = 0
    atom_offsets: tuple[int, ...] = (0,)
    triplet_pairs: torch.Tensor | None = None

    @property
    def n_features(self) -> int:
        return self.spec.n_features

    @property
    def n_pairs(self) -> int:
        return self.pairs.shape[1]

    @property
    def dtype(self) -> torch.dtype:
        return self.g2[0].dtype

    @property
    def device(self) -> torch.device:
        return self.g2[0].device

    def stats(self) -> dict[str, int]:
        """Sizes: atoms, pairs, unordered triplets, stored nonzeros of all maps (one direction)."""
        g2_nnz = self.g2[0].values().numel()
        triplet_nnz = self.triplet[0].values().numel() if self.triplet else 0
        return {
            "atoms": self.n_atoms,
            "pairs": self.n_pairs,
            "triplets": self.n_triplets,
            "g2_nnz": int(g2_nnz),
            "triplet_nnz": int(triplet_nnz),
            "nnz": int(g2_nnz + triplet_nnz),
        }

    def to(self, device=None, dtype: torch.dtype | None = None) -> DescriptorGeometry:
        """A copy on another device and/or floating dtype of the weights."""

        def move(pair):
            return tuple(moved(m, device, dtype) for m in pair)

        return replace(
            self,
            pairs=self.pairs.to(device),
            ends=move(self.ends),
            jk=self.jk.to(device=device, dtype=dtype),
            order=self.order.to(device),
            inverse=self.inverse.to(device),
            g2=move(self.g2),
            triplet=move(self.triplet) if self.triplet else None,
            triplet_pairs=None if self.triplet_pairs is None else self.triplet_pairs.to(device),
        )


def pair_ends(a: np.ndarray, b: np.ndarray, order: np.ndarray, dtype, device):
    """0/1 map (2 P, N) from spins in the caller's atom order to rows (pair p, end a or b).

    A sparse product gathers both ends of every pair in one call, and its
    precomputed transpose adds the gradients back in a fixed order. At N = 500
    (torch profiler, 2-core CPU) the two products take ~0.13 ms per evaluation,
    where two index_selects and the index_adds of their backward took ~0.45 ms.
    """
    rows = np.arange(2 * len(a))
    cols = np.stack([order[a], order[b]], 1).ravel()
    return Pattern(rows, cols, (len(rows), len(order))).maps(
        np.ones((len(rows), 1)), dtype, device
    )[0]


def _pairs(positions: np.ndarray, box: float, rc: float):
    """Unordered pairs a < b within rc (minimum image), sorted; displacement r_b - r_a and R."""
    n = len(positions)
    wrapped = np.mod(positions, box)
    wrapped[wrapped >= box] -= box  # np.mod can round up to box itself
    # a hair beyond rc, so that every triangle distance R_jk < rc finds its pair (fc(rc) = 0)
    found = cKDTree(wrapped, boxsize=box).query_pairs(rc * (1 + 1e-9), output_type="ndarray")
    found = found.reshape(-1, 2).astype(np.int64)
    found = found[np.argsort(found[:, 0] * n + found[:, 1], kind="stable")]
    a, b = found[:, 0], found[:, 1]
    delta = wrapped[b] - wrapped[a]
    delta -= box * np.round(delta / box)
    r = np.linalg.norm(delta, axis=1)
    if r.size and r.min() == 0:
        raise ConfigError("coincident atoms: a pair distance is 0, the descriptor is undefined")
    return a, b, delta, r


def build_geometry(
    system: AtomicSystem,
    spec: DescriptorSpec | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> DescriptorGeometry:
    """F2 and F3 weights of one configuration as sparse pair->feature maps (PHYSICS.md "Magnetic descriptor").

    Computed in float64, stored in dtype (float32 for the ML path, float64 for
    checks). Raises ConfigError when rc > L/2 (minimum image ambiguous).
    """
    spec = DescriptorSpec() if spec is None else spec
    box = float(system.box)
    if spec.rc > box / 2:
        n_min = math.ceil(system.n * (2 * spec.rc / box) ** 3 * (1 - 1e-12))
        raise ConfigError(
            f"descriptor cutoff rc = {spec.rc} exceeds half the box side L/2 = {box / 2:.6g} "
            f"(L = {box:.6g}): the minimum image is ambiguous; need rc <= L/2, i.e. "
            f"L >= {2 * spec.rc:g} (N >= {n_min} at this density)"
        )
    order = spatial_order(np.asarray(system.positions, dtype=np.float64), box)
    pos = np.asarray(system.positions, dtype=np.float64)[order]  # internal atom k = order[k]
    n, n_d = len(pos), spec.n_radii
    w, radii = spec.w, np.asarray(spec.radii)
    a, b, delta, r = _pairs(pos, box, spec.rc)
    # the pairs the triplet map reads: within Rc3 (a hair beyond, like _pairs; fc(Rc3) = 0)
    short = None if spec.rc3 == spec.rc else np.flatnonzero(r < spec.rc3 * (1 + 1e-9))

    # directed pairs (centre -> neighbour): both orientations of every stored pair
    centre = np.concatenate([a, b])
    neighbour = np.concatenate([b, a])
    vec = np.concatenate([delta, -delta])
    dist = np.concatenate([r, r])
    pair_id = np.concatenate([np.arange(len(a)), np.arange(len(a))])
    fc = cutoff_function(dist, spec.rc)

    # G2m: F2(R; d, w) on the window of d where it can exceed PAIR_TOLERANCE
    half = w * math.sqrt(math.log(1 / PAIR_TOLERANCE))
    lo = np.searchsorted(radii, dist - half, side="left")
    hi = np.searchsorted(radii, dist + half, side="right")
    g2_entries = int((hi - lo).sum())

    # the triplets first: their first chunk tells whether the whole set-up fits in memory
    triplet, n_triplets = None, 0
    with_triplets = spec.include_g3m or spec.include_chi
    if with_triplets:
        # only the neighbours within the triplets' cutoff Rc3 (fc taken with Rc3)
        near = dist < spec.rc3
        rows, cols, weights, n_triplets = _triplet_entries(
            spec, n, centre[near], neighbour[near], vec[near], dist[near],
            cutoff_function(dist[near], spec.rc3), a, b, short, dtype, device, g2_entries,
        )  # fmt: skip
    else:
        _require_setup_memory(n, g2_entries, 0, device, dtype)

    owner, d_idx = _expand(lo, hi)
    value = np.exp(-(((dist[owner] - radii[d_idx]) / w) ** 2)) * fc[owner]
    keep = value >= PAIR_TOLERANCE
    owner, d_idx, value = owner[keep], d_idx[keep], value[keep]
    g2_pattern = Pattern(centre[owner] * n_d + d_idx, pair_id[owner], (n * n_d, len(a)))
    (g2,) = g2_pattern.maps(value[:, None], dtype, device)
    if with_triplets:
        n_rows = n * len(spec.lambdas) * spec.n_triplet_radii
        n_cols = (len(a) if short is None else len(short)) * (SIGN_SLOTS if spec.include_chi else 1)
        (triplet,) = Pattern(rows, cols, (n_rows, n_cols)).maps(weights[:, None], dtype, device)
    return DescriptorGeometry(
        spec=spec,
        n_atoms=n,
        pairs=torch.from_numpy(np.stack([a, b])).to(device),
        ends=pair_ends(a, b, order, dtype, device),
        g2=g2,
        triplet=triplet,
        jk=torch.from_numpy(jk_part(spec, r if short is None else r[short])).to(device, dtype),
        order=torch.from_numpy(order).to(device),
        inverse=torch.from_numpy(np.argsort(order)).to(device),
        n_triplets=n_triplets,
        triplet_pairs=None if short is None else torch.from_numpy(short).to(device),
    )


#: Columns per pair of the signed triplet maps: G3chi sign +1 and -1.
SIGN_SLOTS = 2
#: Centres per chunk of the triplet enumeration (bounds its memory; chunks run in threads).
TRIPLET_CHUNK = 1000
#: Peak memory of the set-up per map entry (bytes; measured 51-62 at N = 5000 and 20000
#: with the shipped spec, from the process's peak resident size per triplet map entry).
SETUP_BYTES_PER_ENTRY = 64


def _require_setup_memory(
    n: int, g2_entries: int, triplet_entries: float, device, dtype: torch.dtype
) -> None:
    """MemoryLimitError, before the maps are made, when their set-up cannot fit in memory
    (an N too large would otherwise end in the system's out-of-memory kill), or the maps
    in the memory of another device they go to."""
    entries = g2_entries + triplet_entries
    what = f"at N = {n} ({g2_entries:.3g} G2m and about {triplet_entries:.3g} triplet map entries)"
    require_memory(
        SETUP_BYTES_PER_ENTRY * entries, "cpu", f"the ML descriptor's set-up {what}",
        "use a smaller N, or a machine with more memory",
    )  # fmt: skip
    if torch.device(device).type != "cpu":
        # values and int32 columns, of each map and its transpose
        per_entry = 2 * (torch.finfo(dtype).bits // 8 + 4)
        require_memory(
            per_entry * entries, device, f"the ML descriptor's maps {what}",
            "use a smaller N, or a device with more memory",
        )  # fmt: skip


def _triplet_entries(
    spec, n, centre, neighbour, vec, dist, fc, a, b, short, dtype, device, g2_entries
):  # fmt: skip
    """Entries (row (i, lambda, d), column, weight) of the F3 map.

    Per (triplet, d) and lambda: d-part x angular part; the column is the pair
    p of (j, k) (its place among the pairs `short` within Rc3, unless that is
    None), or with G3chi its sign slot 2 p + (0 for chi sign +1, 1 for -1); a
    tie (sign 0) is split into half weights on both slots, which add for G3m and
    cancel for G3chi. Centres are processed in chunks of TRIPLET_CHUNK
    in a thread pool (numpy releases the GIL), after the first: its entries per
    centre, with the g2_entries of G2m, check that the set-up fits in memory (and
    the maps in the memory of the device they go to).
    Returns rows, cols, weights (E,) and the number of triplets.
    """
    n_d, n_lam, radii = spec.n_triplet_radii, len(spec.lambdas), np.asarray(spec.triplet_radii)
    np_dtype = np.float32 if dtype == torch.float32 else np.float64
    column = None  # pair index -> its place among the short pairs
    if short is not None:
        column = np.full(len(a), -1, dtype=np.int64)
        column[short] = np.arange(len(short))
    # int32 entry indices where they fit: half the memory traffic of the set-up
    index = np.int32 if max(n * n_lam * n_d, SIGN_SLOTS * len(a)) < 2**31 else np.int64
    chunk_of = centre // TRIPLET_CHUNK
    order = np.argsort(chunk_of, kind="stable")
    bounds = np.searchsorted(chunk_of[order], np.arange(-(-n // TRIPLET_CHUNK) + 1))

    def chunk(c: int):
        sel = order[bounds[c] : bounds[c + 1]]
        t_centre, t_pair, angular, chi_sign, owner, d_idx, value = _triplets(
            spec, n, centre[sel], neighbour[sel], vec[sel], dist[sel], fc[sel], a, b, radii
        )
        # owner is sorted, so these gathers stream
        weights = np.take(angular.astype(np_dtype), owner, axis=0)
        weights *= value.astype(np_dtype)[:, None]
        atom, d_idx = t_centre[owner].astype(index), d_idx.astype(index)
        cols = (t_pair if column is None else column[t_pair])[owner].astype(index)
        if column is not None and cols.size and cols.min() < 0:
            raise RuntimeError("internal error: a triplet's (j, k) lies beyond the triplet cutoff")
        if spec.include_chi:
            sign = chi_sign[owner]
            cols = cols * SIGN_SLOTS + (sign < 0)
            tie = sign == 0
            weights[tie] *= 0.5
            atom, d_idx = np.concatenate([atom, atom[tie]]), np.concatenate([d_idx, d_idx[tie]])
            cols = np.concatenate([cols, cols[tie] + 1])
            weights = np.concatenate([weights, weights[tie]])
        # every entry once per lambda, in row (atom, lambda, d)
        lam = np.arange(n_lam, dtype=index)
        rows = ((atom[:, None] * n_lam + lam) * n_d + d_idx[:, None]).ravel()
        return rows, np.repeat(cols, n_lam), weights.ravel(), len(t_centre)

    parts = [chunk(0)]
    expected = len(parts[0][0]) * n / min(TRIPLET_CHUNK, n)
    _require_setup_memory(n, g2_entries, expected, device, dtype)
    with ThreadPoolExecutor(max(1, torch.get_num_threads())) as pool:
        parts += pool.map(chunk, range(1, len(bounds) - 1))
    rows, cols, weights = (np.concatenate([p[k] for p in parts]) for k in range(3))
    return rows, cols, weights, sum(p[3] for p in parts)


def _triplets(spec, n, centre, neighbour, vec, dist, fc, a, b, radii):
    """Unordered triplets (i; j nearer, k farther) with their F3 factors, TorchANI-style.

    Returns per triplet: centre, pair index of (j, k), angular part (T, n_lambda) and
    G3chi sign; per kept d-part entry: owning triplet, d index and value.
    """
    rc, w, n_d = spec.rc3, spec.w, spec.n_triplet_radii
    threshold = spec.triplet_tolerance / TOLERANCE_SAFETY * d_part_peak(spec)  # per d
    tol = float(threshold.min())  # loosest threshold: bounds the candidate windows
    # sort directed pairs by centre, then distance: a centre's neighbours form a segment
    order = np.lexsort((dist, centre))
    c_s, nb_s, r_s, fc_s = centre[order], neighbour[order], dist[order], fc[order]
    v_s = np.asfortranarray(vec[order])  # columns contiguous: per-component gathers
    seg_end = np.searchsorted(c_s, c_s, side="right")
    if tol > 0:
        # the d-part is <= exp(-(R_ij - R_ik)^2 / (2 w^2)): k lies within dmax beyond j
        dmax = w * math.sqrt(2 * math.log(1 / tol)) * (1 + 1e-9) + 1e-12
        key = c_s * (4 * rc + 4 * dmax + 1.0) + r_s
        end = np.minimum(np.searchsorted(key, key + dmax, side="right"), seg_end)
    else:
        end = seg_end
    # every later slot of the same centre (up to end) pairs with slot `first`
    first, second = _expand(np.arange(len(c_s)) + 1, end)
    ra, rb, fa, fb = r_s[first], r_s[second], fc_s[first], fc_s[second]
    if tol > 0:
        keep = np.exp(-((ra - rb) ** 2) / (2 * w**2)) * fa * fb >= tol
        first, second, ra, rb, fa, fb = (x[keep] for x in (first, second, ra, rb, fa, fb))
    # triangle distance R_jk = |r_ik - r_ij| (see the module docstring), per component
    rjk2 = sum((v_s[:, c][second] - v_s[:, c][first]) ** 2 for c in range(3))
    keep = rjk2 < rc**2
    first, second, ra, rb, fa, fb = (x[keep] for x in (first, second, ra, rb, fa, fb))

    # d-part entries (triplet, d) on the window of d where they can reach tol:
    # (R_ij - d)^2 + (R_ik - d)^2 = 2 (m - d)^2 + (R_ij - R_ik)^2 / 2, m the mean
    mean = 0.5 * (ra + rb)
    if tol > 0:
        with np.errstate(divide="ignore", invalid="ignore"):
            span = (w**2 * np.log(fa * fb / tol) - 0.5 * (ra - rb) ** 2) / 2
        half = np.sqrt(np.maximum(np.nan_to_num(span, nan=0.0, neginf=0.0), 0.0))
        half = half * (1 + 1e-9) + 1e-12
        lo = np.searchsorted(radii, mean - half, side="left")
        hi = np.searchsorted(radii, mean + half, side="right")
    else:
        lo, hi = np.zeros(len(mean), dtype=np.int64), np.full(len(mean), n_d)
    owner, d_idx = _expand(lo, hi)  # owner is sorted: the gathers below stream
    scale = np.exp(-0.5 * ((ra - rb) / w) ** 2) * fa * fb
    value = scale[owner] * np.exp(-2 * ((mean[owner] - radii[d_idx]) / w) ** 2)
    keep = value >= threshold[d_idx] if tol > 0 else value > 0
    owner, d_idx, value = owner[keep], d_idx[keep], value[keep]

    # compact: keep only triplets that own an entry
    used = np.flatnonzero(np.bincount(owner, minlength=len(first)))
    remap = np.full(len(first), -1, dtype=np.int64)
    remap[used] = np.arange(len(used))
    owner = remap[owner]
    first, second, ra, rb = (x[used] for x in (first, second, ra, rb))

    t_centre = c_s[first]
    j, k = nb_s[first], nb_s[second]
    dot = sum(v_s[:, c][first] * v_s[:, c][second] for c in range(3))
    cos = np.clip(dot / (ra * rb), -1.0, 1.0)
    lo_atom, hi_atom = np.minimum(j, k), np.maximum(j, k)
    pair_keys = a * n + b
    wanted = lo_atom * n + hi_atom
    t_pair = np.minimum(np.searchsorted(pair_keys, wanted), max(len(a) - 1, 0))
    if wanted.size and not np.array_equal(pair_keys[t_pair], wanted):
        raise RuntimeError("internal error: a triplet's (j, k) is missing from the pair list")

    # convention: G3chi weights each ordered (j, k) by sign(R_ik - R_ij); with j the
    # nearer neighbour this is +1 (0 for ties), and with the stored pair (a, b) =
    # (min, max) of (j, k), S_j x S_k = orientation (S_a x S_b).
    orientation = np.where(j == lo_atom, 1.0, -1.0)
    chi_sign = np.where(rb - ra <= CHI_TIE_TOLERANCE, 0.0, orientation)

    # angular part; the factor 2 collects the ordered pairs (j, k) and (k, j), equal
    # for G3m (F3 and S_j . S_k symmetric) and for G3chi (weight and chirality odd)
    prefactor = 2.0 * 2.0 ** (1 - spec.zeta)
    angular = prefactor * (1 + np.asarray(spec.lambdas) * cos[:, None]) ** spec.zeta
    return t_centre, t_pair, angular, chi_sign, owner, d_idx, value


# --------------------------------------------------------------------------- per step


def _cross(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a x b over dim 1. On the CPU by components: for (P, 3, B) 2x faster than rolls and
    3x than torch.linalg.cross at B = 20; elsewhere torch.linalg.cross, one kernel."""
    if a.device.type != "cpu":
        return torch.linalg.cross(a, b, dim=1)
    a0, a1, a2 = a.unbind(1)
    b0, b1, b2 = b.unbind(1)
    return torch.stack([a1 * b2 - a2 * b1, a2 * b0 - a0 * b2, a0 * b1 - a1 * b0], 1)


def bonds(ends: torch.Tensor) -> torch.Tensor:
    """S_a . S_b (P, B) from both ends of every pair (P, 2, 3, B)."""
    sa, sb = ends.unbind(1)
    return (sa * sb).sum(1)


def pair_terms(ends: torch.Tensor, jk: torch.Tensor, slots: int):
    """Bonds S_a . S_b (P, B) and the triplet maps' right-hand sides (P slots, n_d' comps B), from
    both ends of every pair (P, 2, 3, B).

    Per pair, sign slot s and d': F2(R_ab; d') y with y = [S_a . S_b, s S_a x S_b] (comps 4,
    slots +1 and -1) or y = [S_a . S_b] (comps 1, one slot). Written in (slot, d') blocks,
    each a row scale over contiguous (comps B) rows, forward and backward: a broadcast
    product over the middle axes, and the reduction its autograd backward needs, were
    3-4x slower on the CPU.
    """
    sa, sb = ends.unbind(1)
    n_pairs, batch, n_dp = len(sa), sa.shape[-1], jk.shape[1]
    bond = bonds(ends)
    y = bond if slots == 1 else torch.cat([bond, _cross(sa, sb).flatten(1)], 1)
    x = y.new_empty(n_pairs, slots, n_dp, y.shape[1])
    for d in range(n_dp):
        torch.mul(y, jk[:, d, None], out=x[:, 0, d])
    if slots == SIGN_SLOTS:  # the -1 slot: the cross product changes sign
        x[:, 1, :, :batch] = x[:, 0, :, :batch]
        torch.neg(x[:, 0, :, batch:], out=x[:, 1, :, batch:])
    return bond, x.view(n_pairs * slots, -1)


def pair_terms_backward(
    ends: torch.Tensor, jk: torch.Tensor, slots: int, g_bond: torch.Tensor | None, g_x: torch.Tensor
) -> torch.Tensor:
    """The gradient (P, 2, 3, B) of both ends of every pair from those of ``pair_terms``'
    outputs (g_bond None: the bonds' is zero), with differentiable operations only, so
    fields stay differentiable for training."""
    sa, sb = ends.unbind(1)
    n_pairs, batch, n_dp = len(sa), sa.shape[-1], jk.shape[1]
    g = g_x.reshape(n_pairs, slots, n_dp, -1)
    if slots == SIGN_SLOTS:  # sums over the slots, with the sign of the cross product
        g_dot_d = g[:, 0, :, :batch] + g[:, 1, :, :batch]
        g_cross_d = g[:, 0, :, batch:] - g[:, 1, :, batch:]
    else:
        g_dot_d, g_cross_d = g[:, 0], None
    # sums over d' of F2(R_ab; d') x g
    g_dot = g_dot_d[:, 0] * jk[:, 0, None] if g_bond is None else g_bond
    for d in range(int(g_bond is None), n_dp):
        g_dot = torch.addcmul(g_dot, g_dot_d[:, d], jk[:, d, None])
    g_dot = g_dot[:, None]
    g_sa, g_sb = g_dot * sb, g_dot * sa
    if g_cross_d is not None:  # d(a x b) . g = da . (b x g) + db . (g x a)
        g_cross = g_cross_d[:, 0] * jk[:, 0, None]
        for d in range(1, n_dp):
            g_cross = torch.addcmul(g_cross, g_cross_d[:, d], jk[:, d, None])
        g_cross = g_cross.view(n_pairs, 3, batch)
        g_sa, g_sb = g_sa + _cross(sb, g_cross), g_sb + _cross(g_cross, sa)
    return torch.stack([g_sa, g_sb], 1)


class _PairTerms(torch.autograd.Function):
    """``pair_terms`` with ``pair_terms_backward`` as its backward."""

    @staticmethod
    def forward(ctx, ends: torch.Tensor, jk: torch.Tensor, slots: int):
        ctx.slots = slots
        ctx.save_for_backward(ends, jk)
        return pair_terms(ends, jk, slots)

    @staticmethod
    def backward(ctx, g_bond: torch.Tensor, g_x: torch.Tensor):
        ends, jk = ctx.saved_tensors
        return pair_terms_backward(ends, jk, ctx.slots, g_bond, g_x), None, None


class _Assemble(torch.autograd.Function):
    """Feature rows (B, N, F) in the caller's atom order from the maps' outputs.

    g2: (N n_d, B) G2m; triplet: (N n_lambda n_d, n_d' comps B) [G3m, V] with
    G3chi_i = S_i . V_i (None without triplet features); s (N, 3, B) in internal
    order (None without G3chi). Each block is written once into its place, where
    autograd would chain slices, permuted copies, a concatenation and their
    backwards. The backward uses differentiable operations only, so fields stay
    differentiable for training.
    """

    @staticmethod
    def forward(ctx, geometry: DescriptorGeometry, s, g2: torch.Tensor, triplet):
        spec, n, batch = geometry.spec, geometry.n_atoms, g2.shape[1]
        n_d = spec.n_radii
        res = g2.new_empty(n, spec.n_features, batch)  # (N, F, B): B innermost, like the maps'
        res[:, :n_d] = g2.view(n, n_d, batch)
        if triplet is not None:
            g3m, chi = _triplet_blocks(res, spec)  # (N, n_lambda, n_d, n_d', B) column views
            o = triplet.view(*_triplet_shape(spec, n), -1, batch)
            if g3m is not None:
                g3m.copy_(o[..., 0, :])
            if chi is not None:  # S_i . V_i
                s_i = s[:, None, None, None]
                torch.mul(o[..., 1, :], s_i[..., 0, :], out=chi)
                chi.addcmul_(o[..., 2, :], s_i[..., 1, :])
                chi.addcmul_(o[..., 3, :], s_i[..., 2, :])
        ctx.geometry = geometry
        ctx.save_for_backward(s, triplet)
        return res.index_select(0, geometry.inverse).permute(2, 0, 1).contiguous()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        geometry = ctx.geometry
        spec = geometry.spec
        s, triplet = ctx.saved_tensors
        n, batch = geometry.n_atoms, grad.shape[0]
        n_d = spec.n_radii
        grad = grad.permute(1, 2, 0).index_select(0, geometry.order)  # (N, F, B), internal order
        g_g2 = grad[:, :n_d].reshape(n * n_d, batch)
        if triplet is None:
            return None, None, g_g2, None
        shape = _triplet_shape(spec, n)
        rows = math.prod(shape[:3])  # N n_lambda n_d
        g3m, g_chi = _triplet_blocks(grad, spec)
        if g3m is not None:
            g3m = g3m.unsqueeze(-2)
        if g_chi is None:
            return None, None, g_g2, g3m.reshape(rows, -1)
        # contiguous (N, n_lambda, n_d, n_d', 1, B): the products below broadcast over
        # strided views of the feature columns ~2x slower
        g_chi = g_chi.contiguous().unsqueeze(-2)
        o = triplet.view(*shape, 4, batch)
        g_s = (g_chi * o[..., 1:, :]).sum((1, 2, 3))
        if g3m is None:
            g3m = torch.zeros_like(g_chi)
        g_o = torch.cat([g3m, g_chi * s[:, None, None, None]], -2)
        return None, g_s, g_g2, g_o.reshape(rows, -1)


def _triplet_shape(spec: DescriptorSpec, n: int) -> tuple[int, int, int, int]:
    """(N, n_lambda, n_d, n_d'): the triplet map's rows (atom, lambda, d) by d' (d: the
    triplet radii)."""
    return n, len(spec.lambdas), spec.n_triplet_radii, len(spec.d_prime)


def _triplet_blocks(rows: torch.Tensor, spec: DescriptorSpec):
    """Views (N, n_lambda, n_d, n_d', B) of the G3m and the G3chi columns of feature rows
    (N, F, B), each None when its family is not included."""
    n, _, batch = rows.shape
    _, n_lam, n_d, n_dp = _triplet_shape(spec, n)
    size = n_lam * n_d * n_dp
    blocks, col = [], spec.n_radii  # after the G2m columns
    for on in (spec.include_g3m, spec.include_chi):
        block = None
        if on:  # columns (lambda, d', d)
            block = rows[:, col : col + size].view(n, n_lam, n_dp, n_d, batch).transpose(2, 3)
            col += size
        blocks.append(block)
    return tuple(blocks)


def features(geometry: DescriptorGeometry, spins: torch.Tensor) -> torch.Tensor:
    """G2m, G3m, G3chi of every atom, (B, N, F) from spins (B, N, 3) (PHYSICS.md "Magnetic descriptor").

    Computed in the geometry's dtype (spins are cast, differentiably); an (N, 3)
    input gives (N, F). Differentiable w.r.t. spins to any order.
    """
    squeeze = spins.ndim == 2
    if squeeze:
        spins = spins.unsqueeze(0)
    n = geometry.n_atoms
    if spins.ndim != 3 or spins.shape[1:] != (n, 3):
        raise StateError(f"spins must have shape (B, {n}, 3) or ({n}, 3), got {tuple(spins.shape)}")
    batch = spins.shape[0]
    # layout (atom or pair, component, batch). Gathers are sparse products or index_select,
    # never s[index]: their backwards add in a fixed order, where the backward of advanced
    # indexing adds with atomics, in an order that varies from run to run
    spins = spins.to(dtype=geometry.dtype, device=geometry.device)
    # both ends of every pair (P, 2, 3, B), gathered from the caller's atom order
    ends = SparseApply.apply(spins.permute(1, 2, 0).reshape(n, -1), *geometry.ends)
    ends = ends.view(-1, 2, 3, batch)
    if geometry.triplet:
        # S_a . S_b, and per pair, sign slot s = +1, -1 and d': F2(R_ab; d') [S_a . S_b, s S_a x S_b]
        slots = SIGN_SLOTS if geometry.spec.include_chi else 1
        if geometry.triplet_pairs is None:
            bond, x = _PairTerms.apply(ends, geometry.jk, slots)
        else:  # the triplet map reads the pairs within Rc3 only
            bond = bonds(ends)
            _, x = _PairTerms.apply(
                ends.index_select(0, geometry.triplet_pairs), geometry.jk, slots
            )
    else:
        bond = bonds(ends)
    g2 = SparseApply.apply(bond, *geometry.g2)
    triplet = s = None
    if geometry.triplet:  # every lambda in one product
        triplet = SparseApply.apply(x, *geometry.triplet)
        if geometry.spec.include_chi:
            s = spins.index_select(1, geometry.order).permute(1, 2, 0)  # (N, 3, B), internal
    result = _Assemble.apply(geometry, s, g2, triplet)
    return result[0] if squeeze else result


# --------------------------------------------------------------------------- batches


def concat_geometries(geometries: list[DescriptorGeometry]) -> DescriptorGeometry:
    """Several configurations as one, atoms concatenated with offsets (TorchANI-style batches).

    Spins for the result are (B, sum N, 3); features are (B, sum N, F), the same
    as evaluating each configuration on its own slice of atoms.
    """
    if not geometries:
        raise ValueError("concat_geometries needs at least one geometry")
    first = geometries[0]
    for g in geometries[1:]:
        if g.spec != first.spec:
            raise ValueError("concat_geometries: all geometries must share one DescriptorSpec")
        if g.dtype != first.dtype or g.device != first.device:
            raise ValueError("concat_geometries: all geometries must share dtype and device")
    atom_off = np.cumsum([0] + [g.n_atoms for g in geometries])
    pair_off = np.cumsum([0] + [g.n_pairs for g in geometries])
    offsets: list[int] = []
    for g, off in zip(geometries, atom_off[:-1], strict=True):
        offsets += [int(off) + o for o in g.atom_offsets]
    return DescriptorGeometry(
        spec=first.spec,
        n_atoms=int(atom_off[-1]),
        pairs=torch.cat([g.pairs + int(o) for g, o in zip(geometries, atom_off, strict=False)], 1),
        ends=block_diag_maps([g.ends for g in geometries]),
        jk=torch.cat([g.jk for g in geometries]),
        order=torch.cat([g.order + int(o) for g, o in zip(geometries, atom_off, strict=False)]),
        inverse=torch.cat([g.inverse + int(o) for g, o in zip(geometries, atom_off, strict=False)]),
        g2=block_diag_maps([g.g2 for g in geometries]),
        triplet=block_diag_maps([g.triplet for g in geometries]) if first.triplet else None,
        n_triplets=sum(g.n_triplets for g in geometries),
        atom_offsets=tuple(offsets),
        triplet_pairs=None
        if first.triplet_pairs is None
        else torch.cat(
            [g.triplet_pairs + int(o) for g, o in zip(geometries, pair_off, strict=False)]
        ),
    )

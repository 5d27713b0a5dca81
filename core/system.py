"""Amorphous atomic configurations and their minimum-image geometry (PHYSICS.md "Amorphous system").

Geometry is computed once per configuration; spin dynamics only ever touches spins.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy.spatial import cKDTree

from core.config import SystemConfig
from core.errors import PackingError

#: Random sequential adsorption of hard spheres jams at volume fraction ~0.3841;
#: above this fraction a random sequential placement cannot succeed.
RSA_JAMMING_FRACTION = 0.3841


@dataclass(frozen=True)
class AtomicSystem:
    """Plain container: positions (N, 3) in [0, L) and the cube side L (ell)."""

    positions: np.ndarray
    box: float

    @property
    def n(self) -> int:
        return self.positions.shape[0]

    @property
    def density(self) -> float:
        return self.n / self.box**3


def packing_fraction(n: int, box: float, r_min: float) -> float:
    """Volume fraction of N spheres of diameter r_min in a cube of side L."""
    return n * (math.pi / 6) * r_min**3 / box**3


def generate_positions(config: SystemConfig, max_rounds: int = 2000) -> AtomicSystem:
    """Uniform random positions with every minimum-image distance > r_min, reproducible from seed.

    Random sequential placement in vectorized rounds: each round proposes a batch
    of candidates, drops those within r_min of a placed atom or of an earlier
    candidate of the same batch (periodic k-d tree), and keeps the rest.
    """
    n, box, r_min = config.n, config.side, config.r_min
    phi = packing_fraction(n, box, r_min)
    if phi >= RSA_JAMMING_FRACTION:
        raise PackingError(
            f"cannot pack N={n} atoms with r_min={r_min} in a box of side {box:.4g}: "
            f"sphere volume fraction {phi:.3f} exceeds the random-packing limit "
            f"{RSA_JAMMING_FRACTION} (density {n / box**3:.3g}; lower N or r_min, or enlarge the box)"
        )
    rng = np.random.default_rng(config.seed)
    placed = np.empty((0, 3))
    for _ in range(max_rounds):
        need = n - len(placed)
        if need == 0:
            return AtomicSystem(placed, box)
        cand = rng.uniform(0.0, box, size=(min(2 * need + 8, 4 * n), 3))
        if len(placed) and r_min > 0:
            dist, _ = cKDTree(placed, boxsize=box).query(cand, k=1, distance_upper_bound=r_min)
            cand = cand[~(dist <= r_min)]
        if r_min > 0 and len(cand) > 1:
            pairs = cKDTree(cand, boxsize=box).query_pairs(r_min, output_type="ndarray")
            # keep a candidate only if no earlier candidate of the batch is too close
            clash = np.zeros(len(cand), dtype=bool)
            clash[pairs.max(axis=1)] = True
            cand = cand[~clash]
        placed = np.concatenate([placed, cand[:need]])
    raise PackingError(
        f"could not place N={n} atoms with r_min={r_min} in a box of side {box:.4g} "
        f"after {max_rounds} rounds (placed {len(placed)}; the density is too high)"
    )


def minimum_image(delta: torch.Tensor, box: float) -> torch.Tensor:
    """Minimum-image displacement in a periodic cube of side L."""
    return delta - box * torch.round(delta / box)


def distance_matrix(system: AtomicSystem, device: torch.device | str = "cpu") -> torch.Tensor:
    """All minimum-image pair distances R_ij, shape (N, N), float64."""
    pos = torch.as_tensor(system.positions, dtype=torch.float64, device=device)
    return minimum_image(pos[:, None, :] - pos[None, :, :], system.box).norm(dim=-1)


def pairs_within(system: AtomicSystem, r_max: float) -> tuple[np.ndarray, np.ndarray]:
    """Unordered pairs i < j with minimum-image distance <= r_max: (P, 2) indices and (P,) distances."""
    if r_max > system.box / 2:
        raise ValueError(f"pair cutoff {r_max} exceeds half the box side {system.box / 2}")
    tree = cKDTree(np.mod(system.positions, system.box), boxsize=system.box)
    pairs = tree.query_pairs(r_max, output_type="ndarray")
    pairs = pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]
    delta = system.positions[pairs[:, 1]] - system.positions[pairs[:, 0]]
    delta -= system.box * np.round(delta / system.box)
    return pairs, np.linalg.norm(delta, axis=1)


def nearest_distance(system: AtomicSystem) -> float:
    """The smallest minimum-image distance between two atoms (ell)."""
    tree = cKDTree(np.mod(system.positions, system.box), boxsize=system.box)
    distances, _ = tree.query(tree.data, k=2)
    return float(distances[:, 1].min())


def random_spins(
    batch: int, n: int, generator: torch.Generator | None = None, dtype=torch.float64, device="cpu"
) -> torch.Tensor:
    """Uniformly random unit spins on the sphere, shape (B, N, 3)."""
    v = torch.randn(batch, n, 3, generator=generator, dtype=dtype, device=device)
    return v / v.norm(dim=-1, keepdim=True)

"""Spin correlations, correlation length, magnetisation, droplet fit (PHYSICS.md "Observables").

Pair bins are built once per atomic configuration; each measurement only
gathers spins. Correlation sums are plain arrays, so ensembles (configurations,
processes, machines) merge by adding them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
from scipy import stats

from core.system import AtomicSystem, pairs_within


def bin_edges(r_min: float, r_max: float, width: float = 0.1) -> np.ndarray:
    """Fixed distance bins from r_min to r_max (ell), as close to the requested width as fits."""
    if not 0 <= r_min < r_max:
        raise ValueError(f"need 0 <= r_min < r_max, got r_min={r_min}, r_max={r_max}")
    count = max(1, round((r_max - r_min) / width))
    return np.linspace(r_min, r_max, count + 1)


@dataclass(frozen=True)
class PairBins:
    """Unordered pairs (P, 2) within the last edge, their bin index (P,), and pair counts (R,)."""

    pairs: torch.Tensor
    bin_index: torch.Tensor
    edges: np.ndarray
    counts: np.ndarray

    @property
    def centres(self) -> np.ndarray:
        return 0.5 * (self.edges[1:] + self.edges[:-1])

    def to(self, device: torch.device | str) -> PairBins:
        """The same bins on another device (no pair search again: seconds at large N)."""
        return replace(self, pairs=self.pairs.to(device), bin_index=self.bin_index.to(device))


def pair_bins(
    system: AtomicSystem, edges: np.ndarray, device: torch.device | str = "cpu"
) -> PairBins:
    """Assign every minimum-image pair with edges[0] <= R_ij < edges[-1] to its distance bin."""
    pairs, dist = pairs_within(system, float(edges[-1]))
    idx = np.searchsorted(edges, dist, side="right") - 1
    keep = (idx >= 0) & (idx < len(edges) - 1)
    pairs, idx = pairs[keep], idx[keep]
    return PairBins(
        pairs=torch.as_tensor(pairs, dtype=torch.long, device=device),
        bin_index=torch.as_tensor(idx, dtype=torch.long, device=device),
        edges=np.asarray(edges, dtype=float),
        counts=np.bincount(idx, minlength=len(edges) - 1).astype(float),
    )


def correlation_sums(spins: torch.Tensor, bins: PairBins) -> np.ndarray:
    """Per-bin sum over pairs of <S_i.S_j> - <S_i>.<S_j> (Eq. 20), replica averages <.> over B.

    With B > 1 replicas the estimate is multiplied by B/(B-1), which makes it
    unbiased for independent replicas; with B = 1 the disconnected part is taken
    as zero (<S_i> = 0 by global spin-rotation symmetry of random starts).
    """
    s = spins.to(torch.float64)
    b = s.shape[0]
    i, j = bins.pairs[:, 0], bins.pairs[:, 1]
    c = (s[:, i] * s[:, j]).sum(-1).mean(0)
    if b > 1:
        m = s.mean(0)
        c = (c - (m[i] * m[j]).sum(-1)) * (b / (b - 1))
    sums = torch.zeros(len(bins.counts), dtype=torch.float64, device=s.device)
    return sums.index_add_(0, bins.bin_index, c).cpu().numpy()


class CorrelationAccumulator:
    """C(r, t) accumulated over configurations at a fixed list of times: sums and pair counts."""

    def __init__(self, n_times: int, edges: np.ndarray) -> None:
        self.edges = np.asarray(edges, dtype=float)
        self.sums = np.zeros((n_times, len(edges) - 1))
        self.counts = np.zeros((n_times, len(edges) - 1))

    @property
    def centres(self) -> np.ndarray:
        return 0.5 * (self.edges[1:] + self.edges[:-1])

    def add(self, t_index: int, spins: torch.Tensor, bins: PairBins) -> None:
        """Add one configuration's replicas at time index t_index."""
        if not np.array_equal(bins.edges, self.edges):
            raise ValueError("pair bins do not share the accumulator's distance edges")
        self.sums[t_index] += correlation_sums(spins, bins)
        self.counts[t_index] += bins.counts

    def merge(self, other: CorrelationAccumulator) -> None:
        """Add another accumulator (another configuration set, process or machine)."""
        if not np.array_equal(other.edges, self.edges) or other.sums.shape != self.sums.shape:
            raise ValueError("cannot merge correlation accumulators with different bins or times")
        self.sums += other.sums
        self.counts += other.counts

    def correlation(self) -> np.ndarray:
        """C(r, t), shape (T, R); bins without pairs hold 0."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.counts > 0, self.sums / np.maximum(self.counts, 1), 0.0)


def correlation_length(edges: np.ndarray, corr: np.ndarray, floor: float = 0.0) -> np.ndarray:
    """xi = int r |C(r)| dr / int |C(r)| dr over the bins (paper Sec. IV); NaN where C = 0.

    floor > 0 takes that much off every |C| first (clipped at 0), e.g. the sampling noise
    per bin, which otherwise spreads weight evenly over all r: a check of the estimator,
    not PHYSICS.md's xi."""
    edges = np.asarray(edges, dtype=float)
    centres = 0.5 * (edges[1:] + edges[:-1])
    weight = np.clip(np.abs(corr) - floor, 0.0, None) * np.diff(edges)
    norm = weight.sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(norm > 0, (weight * centres).sum(-1) / norm, np.nan)


def sampling_noise(corr: np.ndarray) -> float:
    """The sampling noise of C per bin: the rms of C(r, 0) over the bins (random spins at
    t = 0, where the true C is 0), from C(r, t) of shape (T, R)."""
    return float(np.sqrt(np.mean(np.asarray(corr)[0] ** 2)))


def xi_above_noise(edges: np.ndarray, corr: np.ndarray) -> np.ndarray:
    """xi(t) with the sampling noise per bin taken off every |C| first (a check of the
    estimator, not PHYSICS.md's xi), from C(r, t) of shape (T, R)."""
    return correlation_length(edges, corr, floor=sampling_noise(corr))


def magnetisation(spins: torch.Tensor) -> torch.Tensor:
    """|m| = |(1/N) sum_i S_i| per replica, shape (B,)."""
    return spins.mean(dim=-2).norm(dim=-1)


@dataclass(frozen=True)
class DropletFit:
    """xi(t) = A (log t)^(1/psi) fitted on t_min <= t <= t_max: psi with its standard error."""

    psi: float
    psi_err: float
    amplitude: float
    t_min: float
    t_max: float
    n_points: int

    def curve(self, t: np.ndarray) -> np.ndarray:
        return self.amplitude * np.log(t) ** (1 / self.psi)


def fit_droplet(
    times: np.ndarray, xi: np.ndarray, t_min: float = 1.5, t_max: float | None = None
) -> DropletFit:
    """Droplet growth law xi ~ (log t)^(1/psi): least squares of log xi on log log t."""
    t, x = np.asarray(times, dtype=float), np.asarray(xi, dtype=float)
    sel = (t >= max(t_min, 1.0 + 1e-9)) & np.isfinite(x) & (x > 0)
    if t_max is not None:
        sel &= t <= t_max
    if sel.sum() < 3:
        raise ValueError(
            f"droplet fit needs at least 3 points with t >= {t_min} and finite xi, got {sel.sum()}"
        )
    fit = stats.linregress(np.log(np.log(t[sel])), np.log(x[sel]))
    psi = 1.0 / fit.slope
    return DropletFit(
        psi=float(psi),
        psi_err=float(abs(fit.stderr / fit.slope**2)),
        amplitude=float(np.exp(fit.intercept)),
        t_min=float(t[sel].min()),
        t_max=float(t[sel].max()),
        n_points=int(sel.sum()),
    )

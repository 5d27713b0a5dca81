"""Exact diagonalization of the amorphous s-d Hamiltonian (PHYSICS.md "Electrons", paper Eq. 17).

Basis index 2 i + a for atom i and spin a (0 = up, 1 = down). Everything is
float64 / complex128 and batched over a stack of spin configurations (B, N, 3).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from core.config import ConfigError, ElectronConfig
from core.errors import StateError
from core.memory import require_memory
from core.purification import canonical_purification
from core.system import AtomicSystem, distance_matrix

#: Bisection steps for the chemical potential: the bracket shrinks to round-off.
_MU_BISECTION_STEPS = 200
#: How EDSolver.fields finds the occupied states: "eigh" diagonalizes; "purification"
#: (kT_e = 0 only) reaches the density matrix by matrix products (core.purification), with
#: `eigh` for any member that does not converge; "auto" purifies on CUDA at kT_e = 0.
ED_METHODS = ("auto", "eigh", "purification")


@dataclass(frozen=True)
class EDResult:
    """One diagonalization: per batch member eigenvalues (B, 2N), occupations (B, 2N),
    chemical potential mu (B,), energy E = sum f eps (B,), free energy F (B,) (equal
    to E at kT_e = 0), and the local fields H_i (B, N, 3)."""

    eigenvalues: torch.Tensor
    occupations: torch.Tensor
    mu: torch.Tensor
    energy: torch.Tensor
    free_energy: torch.Tensor
    fields: torch.Tensor


def hopping_matrix(
    system: AtomicSystem, config: ElectronConfig, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """t_ij = t0 exp(-R_ij / ell) for i != j (minimum image, optional cutoff r_hop), Eq. 18."""
    r = distance_matrix(system, device)
    t = config.t0 * torch.exp(-r / config.ell)
    t.fill_diagonal_(0.0)
    if config.r_hop is not None:
        t = torch.where(r <= config.r_hop, t, torch.zeros_like(t))
    return t


def fermi_occupations(
    eigenvalues: torch.Tensor, n_electrons: int, kT: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fermi-Dirac occupations f_k with mu fixed by sum_k f_k = n_e; kT = 0 fills the lowest n_e."""
    eps = eigenvalues
    if kT == 0:
        f = torch.zeros_like(eps)
        f[..., :n_electrons] = 1.0
        mu = 0.5 * (eps[..., n_electrons - 1] + eps[..., min(n_electrons, eps.shape[-1] - 1)])
        return f, mu
    lo = eps[..., 0] - 50 * kT
    hi = eps[..., -1] + 50 * kT
    for _ in range(_MU_BISECTION_STEPS):
        mid = 0.5 * (lo + hi)
        count = torch.sigmoid((mid[..., None] - eps) / kT).sum(-1)
        too_many = count > n_electrons
        hi = torch.where(too_many, mid, hi)
        lo = torch.where(too_many, lo, mid)
    mu = 0.5 * (lo + hi)
    return torch.sigmoid((mu[..., None] - eps) / kT), mu


def free_energy(eigenvalues: torch.Tensor, mu: torch.Tensor, n_electrons: int, kT: float):
    """Canonical free energy F = Omega + mu n_e, Omega = -kT sum ln(1 + e^{-(eps - mu)/kT})."""
    if kT == 0:
        return eigenvalues[..., :n_electrons].sum(-1)
    x = (mu[..., None] - eigenvalues) / kT
    return -kT * torch.nn.functional.softplus(x).sum(-1) + mu * n_electrons


def resolve_method(method: str, kT_e: float, device: torch.device) -> str:
    """ "eigh" or "purification" for an ED_METHODS choice at electron temperature kT_e."""
    if method not in ED_METHODS:
        raise ConfigError(f"ED method must be one of {ED_METHODS}, got {method!r}")
    if method == "purification" and kT_e != 0:
        raise ConfigError(
            f"purification gives the kT_e = 0 density matrix; kT_e = {kT_e} needs method 'eigh'"
        )
    auto = method == "auto" and kT_e == 0 and torch.device(device).type == "cuda"
    return "purification" if method == "purification" or auto else "eigh"


#: Peak memory of one ED field evaluation per N^2 (bytes), its leading terms: the
#: distance and hopping matrices (16), the 2N x 2N complex Hamiltonian and eigenvectors
#: (128), eigh's complex and real workspaces (~128). Measured (peak RSS on the CPU, one
#: state): 277 at N = 2000; 329 at N = 1000, where fixed overheads add.
ED_BYTES_PER_N2 = 280


class EDSolver:
    """Exact-diagonalization field provider for one atomic configuration.

    The hopping matrix is built once; every call only assembles the on-site
    exchange blocks -J S_i . sigma and diagonalizes. method (ED_METHODS) chooses
    how `fields` gets the occupied states; `solve` always diagonalizes (it returns
    the levels too). purification_steps: steps of the last purified call.
    """

    def __init__(
        self,
        system: AtomicSystem,
        config: ElectronConfig | None = None,
        device: torch.device | str = "cpu",
        method: str = "auto",
    ) -> None:
        self.system = system
        self.config = config or ElectronConfig()
        self.device = torch.device(device)
        self.method = resolve_method(method, self.config.kT_e, self.device)
        self.purification_steps = 0
        require_memory(
            ED_BYTES_PER_N2 * system.n**2, self.device,
            f"ED at N = {system.n} (a {2 * system.n} x {2 * system.n} complex diagonalization)",
            "use the ML engine, or a smaller N",
        )  # fmt: skip
        self.hopping = hopping_matrix(system, self.config, self.device)
        self.n_electrons = self.config.n_electrons(system.n)
        if not 0 < self.n_electrons < 2 * system.n:
            raise ValueError(
                f"filling {self.config.filling} gives {self.n_electrons} electrons for "
                f"{2 * system.n} spin-orbitals; need between 1 and {2 * system.n - 1}"
            )

    @property
    def n(self) -> int:
        return self.system.n

    def hamiltonian(self, spins: torch.Tensor) -> torch.Tensor:
        """2N x 2N s-d Hamiltonian of Eq. 17 for each spin configuration, (B, 2N, 2N) complex128."""
        s = self._as_batch(spins)
        b, n = s.shape[0], self.n
        h = torch.zeros(b, n, 2, n, 2, dtype=torch.complex128, device=self.device)
        t = self.hopping.to(torch.complex128)
        h[:, :, 0, :, 0] = t
        h[:, :, 1, :, 1] = t
        idx = torch.arange(n, device=self.device)
        sx, sy, sz = (s[..., k].to(torch.complex128) for k in range(3))
        j = self.config.J
        # -J S . sigma on each atom: [[Sz, Sx - i Sy], [Sx + i Sy, -Sz]]
        h[:, idx, 0, idx, 0] = -j * sz
        h[:, idx, 0, idx, 1] = -j * (sx - 1j * sy)
        h[:, idx, 1, idx, 0] = -j * (sx + 1j * sy)
        h[:, idx, 1, idx, 1] = j * sz
        return h.reshape(b, 2 * n, 2 * n)

    def solve(self, spins: torch.Tensor) -> EDResult:
        """Diagonalize, occupy (Fermi-Dirac), and return E, F and H_i = J sum_ab sigma_ab r_ab (Eq. 5)."""
        return self.diagonalized(self.hamiltonian(spins))

    def diagonalized(self, h: torch.Tensor) -> EDResult:
        """solve() for Hamiltonians h (B, 2N, 2N) of this solver's size and electrons."""
        eps, u = torch.linalg.eigh(h)
        kT = self.config.kT_e
        f, mu = fermi_occupations(eps, self.n_electrons, kT)
        if kT == 0:  # only occupied states contribute
            u, fw = u[..., : self.n_electrons], f[..., None, : self.n_electrons]
        else:
            fw = f[..., None, :]
        up, dn = u[:, 0::2, :], u[:, 1::2, :]
        r_uu = (fw * up.abs() ** 2).sum(-1)
        r_dd = (fw * dn.abs() ** 2).sum(-1)
        r_ud = (fw * up.conj() * dn).sum(-1)
        return EDResult(
            eigenvalues=eps,
            occupations=f,
            mu=mu,
            energy=(f * eps).sum(-1),
            free_energy=free_energy(eps, mu, self.n_electrons, kT),
            fields=self._site_fields(r_uu, r_dd, r_ud),
        )

    def _site_fields(self, r_uu, r_dd, r_ud) -> torch.Tensor:
        """H_i = J (2 Re r_ud, 2 Im r_ud, r_uu - r_dd) from the site blocks of the density
        matrix (paper Eq. 5), (B, N, 3)."""
        return self.config.J * torch.stack([2 * r_ud.real, 2 * r_ud.imag, r_uu - r_dd], dim=-1)

    def projector(self, h: torch.Tensor) -> torch.Tensor:
        """kT_e = 0: the projector P onto the occupied states of each h (B, 2N, 2N) by
        canonical purification (eigh for the members it cannot converge: no gap at the
        Fermi level)."""
        purified = canonical_purification(h, self.n_electrons)
        self.purification_steps = purified.steps
        p, stuck = purified.density, ~purified.converged
        if bool(stuck.any()):
            u = torch.linalg.eigh(h[stuck])[1][..., : self.n_electrons]
            p = p.clone()
            p[stuck] = u @ u.conj().transpose(-1, -2)
        return p

    def fields_of(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """H (B, N, 3) and E (B,), float64, for Hamiltonians h (B, 2N, 2N) of this solver's
        size and electrons, by its method."""
        if self.method == "eigh":
            res = self.diagonalized(h)
            return res.fields, res.energy
        p = self.projector(h)
        # r_ab of atom i = P[2i + b, 2i + a] (P = sum_occupied u u^dagger); E = Tr(P H)
        blocks = torch.diagonal(p.view(-1, self.n, 2, self.n, 2), dim1=1, dim2=3)  # (B, 2, 2, N)
        fields = self._site_fields(blocks[:, 0, 0].real, blocks[:, 1, 1].real, blocks[:, 1, 0])
        return fields, (p * h.conj()).sum((-2, -1)).real

    def fields(self, spins: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Field-provider interface: H (B, N, 3) and E (B,) in the dtype/device of the input."""
        s = torch.as_tensor(spins)
        fields, energy = self.fields_of(self.hamiltonian(spins))
        return fields.to(s.dtype), energy.to(s.dtype)

    def _as_batch(self, spins: torch.Tensor) -> torch.Tensor:
        s = torch.as_tensor(spins, dtype=torch.float64, device=self.device)
        if s.ndim == 2:
            s = s[None]
        if s.ndim != 3 or s.shape[1:] != (self.n, 3):
            raise StateError(f"spins must have shape (B, {self.n}, 3), got {tuple(s.shape)}")
        if not torch.isfinite(s).all():
            raise StateError("spins contain NaN or infinite values")
        return s


class PackedEDSolver:
    """ED of K configurations of N atoms each in one batched call: spins (B, K N, 3),
    configuration k on atoms k N .. (k + 1) N - 1 (as the ML engine packs them). Each
    configuration keeps its own Hamiltonian; the B K of them are diagonalized or purified
    together, which fills a GPU. E (B,) sums over the configurations."""

    def __init__(
        self,
        systems: list[AtomicSystem],
        config: ElectronConfig | None = None,
        device: torch.device | str = "cpu",
        method: str = "auto",
    ) -> None:
        self.solvers = [EDSolver(system, config, device, method) for system in systems]
        sizes = {solver.n for solver in self.solvers}
        if len(sizes) != 1:
            raise ValueError(f"packed ED needs configurations of one size, got N = {sorted(sizes)}")
        self.n = sizes.pop()
        self.method = self.solvers[0].method

    def fields(self, spins: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s = torch.as_tensor(spins)
        k = len(self.solvers)
        if s.ndim != 3 or s.shape[1:] != (k * self.n, 3):
            raise StateError(
                f"spins must have shape (B, {k * self.n}, 3) for {k} packed configurations, "
                f"got {tuple(s.shape)}"
            )
        per_config = s.unflatten(1, (k, self.n))  # (B, K, N, 3)
        h = torch.stack(
            [one.hamiltonian(per_config[:, c]) for c, one in enumerate(self.solvers)], 1
        )
        fields, energy = self.solvers[0].fields_of(h.flatten(0, 1))
        fields = fields.unflatten(0, (s.shape[0], k)).flatten(1, 2)
        return fields.to(s.dtype), energy.unflatten(0, (s.shape[0], k)).sum(1).to(s.dtype)


def hopping_levels(system: AtomicSystem, config: ElectronConfig) -> np.ndarray:
    """Single-particle levels at J = 0: eigenvalues of t_ij (N,), each spin-degenerate (Fig. 2)."""
    return torch.linalg.eigvalsh(hopping_matrix(system, config)).numpy()


@dataclass(frozen=True)
class DensityOfStates:
    """rho(eps) = (1/N) <sum_k delta(eps - eps_k)> over both spins (integrates to 2)."""

    edges: np.ndarray
    rho: np.ndarray
    fermi_level: float
    n_configs: int

    @property
    def centres(self) -> np.ndarray:
        return 0.5 * (self.edges[1:] + self.edges[:-1])


#: Share of the states binned finely by density_of_states(bulk_share=...) and shown in the main
#: panel of the DOS figure; the rest (the sparse upper tail) gets TAIL_BINS bins.
BULK_SHARE = 0.95
TAIL_BINS = 100


def density_of_states(
    systems: list[AtomicSystem],
    config: ElectronConfig,
    bins: int = 80,
    bulk_share: float | None = None,
) -> DensityOfStates:
    """Configuration-averaged J = 0 density of states with the Fermi level at the given filling.

    bins equal bins over the whole band; with bulk_share, `bins` equal bins over the lower
    bulk_share of the states and TAIL_BINS over the sparse rest (a few tightly bound clusters
    reach far up the band), so the bulk is resolved without emptying the tail into noise."""
    levels = [np.repeat(hopping_levels(s, config), 2) for s in systems]
    fermi = []
    for s, lv in zip(systems, levels, strict=True):
        ne = config.n_electrons(s.n)
        fermi.append(0.5 * (lv[ne - 1] + lv[min(ne, len(lv) - 1)]))
    all_levels = np.concatenate(levels)
    edges = bins
    if bulk_share is not None:
        lo, split, top = all_levels.min(), np.quantile(all_levels, bulk_share), all_levels.max()
        edges = np.concatenate(
            [np.linspace(lo, split, bins + 1), np.linspace(split, top, TAIL_BINS + 1)[1:]]
        )
    counts, edges = np.histogram(all_levels, bins=edges)
    n_atoms = sum(s.n for s in systems)
    rho = counts / (n_atoms * np.diff(edges))
    return DensityOfStates(edges, rho, float(np.mean(fermi)), len(systems))


def states_quantile(dos: DensityOfStates, share: float) -> float:
    """Energy below which `share` of the states lie."""
    weights = dos.rho * np.diff(dos.edges)
    cumulative = np.cumsum(weights) / weights.sum()
    return float(dos.edges[1:][np.searchsorted(cumulative, share)])

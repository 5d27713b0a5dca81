"""Behler-Parrinello energy models on the magnetic descriptor (PHYSICS.md "Behler-Parrinello model").

E = sum_i eps(G_i) with one MLP shared by all atoms on standardised features;
fields H_i = -dE/dS_i by automatic differentiation through the descriptor of
every neighbour. The pairwise baseline E = sum_{i<j} J(R_ij) S_i.S_j with J(R)
on the G2m radial basis is the same model with a linear eps on G2m only.
Both are field providers for every LLG integrator via `MLFieldProvider`.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from core.config import ConfigError, ElectronConfig, _require
from core.descriptor import (
    DescriptorGeometry,
    DescriptorSpec,
    build_geometry,
    concat_geometries,
    features,
)
from core.inference import FusedFields
from core.system import AtomicSystem

ACTIVATIONS = {"relu": nn.ReLU, "silu": nn.SiLU, "tanh": nn.Tanh, "softplus": nn.Softplus}

#: Hidden layer sizes of the named architectures ("paper": Sec. IV of the paper).
ARCHITECTURES = {
    "paper": (1024, 1024, 512, 256, 128, 128, 128, 128),
    "compact": (128, 64, 32),
    "pairwise": (),
}


@dataclass(frozen=True)
class Architecture:
    """MLP shape: hidden layer sizes and activation; hidden = () with kind "pairwise" is linear in G2m."""

    hidden: tuple[int, ...] = ARCHITECTURES["compact"]
    activation: str = "silu"
    kind: str = "mlp"

    def __post_init__(self) -> None:
        _require(
            self.kind in ("mlp", "pairwise"), f"kind must be mlp or pairwise, got {self.kind!r}"
        )
        _require(
            self.activation in ACTIVATIONS,
            f"activation must be one of {sorted(ACTIVATIONS)}, got {self.activation!r}",
        )
        _require(
            all(isinstance(h, int) and h > 0 for h in self.hidden),
            f"hidden layer sizes must be positive integers, got {self.hidden!r}",
        )
        _require(self.kind == "mlp" or not self.hidden, "the pairwise model has no hidden layers")

    @classmethod
    def parse(cls, text: str, activation: str | None = None) -> Architecture:
        """'paper' (ReLU), 'compact' (SiLU), 'pairwise', or comma-separated sizes like '256,128,64'."""
        if text == "pairwise":
            return cls(hidden=(), activation=activation or "silu", kind="pairwise")
        if text in ARCHITECTURES:
            default = "relu" if text == "paper" else "silu"
            return cls(hidden=ARCHITECTURES[text], activation=activation or default)
        try:
            sizes = tuple(int(x) for x in text.split(","))
        except ValueError:
            raise ConfigError(
                f"--arch must be paper, compact, pairwise or comma-separated layer sizes, got {text!r}"
            ) from None
        return cls(hidden=sizes, activation=activation or "silu")

    def to_dict(self) -> dict:
        return {"hidden": list(self.hidden), "activation": self.activation, "kind": self.kind}

    def describe(self) -> str:
        """Human-readable: 'pairwise J(R)' or 'MLP 128-64-32 silu'."""
        if self.kind == "pairwise":
            return "pairwise J(R)"
        return f"MLP {'-'.join(map(str, self.hidden)) or 'linear'} {self.activation}"

    @classmethod
    def from_dict(cls, data: dict) -> Architecture:
        return cls(hidden=tuple(data["hidden"]), activation=data["activation"], kind=data["kind"])


class EnergyModel(nn.Module):
    """eps(G_i) = MLP((G_i - mean) / scale) + offset; E = sum_i eps_i accumulated in float64."""

    def __init__(self, spec: DescriptorSpec, arch: Architecture) -> None:
        super().__init__()
        self.spec = spec
        self.arch = arch
        n_in = spec.n_radii if arch.kind == "pairwise" else spec.n_features
        self.register_buffer("feature_mean", torch.zeros(n_in, dtype=torch.float64))
        self.register_buffer("feature_scale", torch.ones(n_in, dtype=torch.float64))
        self.register_buffer("energy_offset", torch.zeros((), dtype=torch.float64))
        layers: list[nn.Module] = []
        width = n_in
        for h in arch.hidden:
            layers += [nn.Linear(width, h), ACTIVATIONS[arch.activation]()]
            width = h
        last = nn.Linear(width, 1, bias=False)
        nn.init.zeros_(last.weight)
        self.net = nn.Sequential(*layers, last)

    @property
    def n_inputs(self) -> int:
        return self.feature_mean.numel()

    def local_energies(self, g: torch.Tensor) -> torch.Tensor:
        """eps_i of every atom, (B, N) in float64, from descriptor features (B, N, F)."""
        g = g[..., : self.n_inputs]
        # standardised in the network's precision: float64 copies of (B, N, F) features
        # took ~5 % of a batched step
        dtype = next(self.net.parameters()).dtype
        x = (g.to(dtype) - self.feature_mean.to(dtype)) / self.feature_scale.to(dtype)
        return self.net(x).squeeze(-1).to(torch.float64) + self.energy_offset

    def energy(self, g: torch.Tensor) -> torch.Tensor:
        """E = sum_i eps(G_i) (paper Eq. 6), (B,) float64."""
        return self.local_energies(g).sum(-1)

    def set_standardisation(self, g: torch.Tensor, energy_per_atom: float) -> None:
        """Feature mean/scale from training features (..., F) and a per-atom energy offset."""
        flat = g.reshape(-1, g.shape[-1])[:, : self.n_inputs].to(torch.float64)
        self.feature_mean.copy_(flat.mean(0))
        std = flat.std(0)
        self.feature_scale.copy_(torch.where(std > 1e-12, std, torch.ones_like(std)))
        self.energy_offset.fill_(energy_per_atom)

    def exchange(self, r: np.ndarray) -> np.ndarray:
        """Pairwise baseline only: J(R) = sum_m c_m F2(R; d_m, w) in t0 (E = sum_{i<j} J S_i.S_j)."""
        if self.arch.kind != "pairwise":
            raise ValueError("J(R) is defined for the pairwise model only")
        coeff = (self.net[-1].weight[0].detach().double() / self.feature_scale).cpu().numpy()
        radii = np.asarray(self.spec.radii)
        rc, w = self.spec.rc, self.spec.w
        fc = np.where(r <= rc, 0.5 * (np.cos(np.pi * r / rc) + 1), 0.0)
        basis = np.exp(-((r[:, None] - radii[None]) ** 2) / w**2) * fc[:, None]
        # sum_i G2m_i = 2 sum_{i<j} F2 S_i.S_j, so each pair carries 2 c_m F2
        return 2 * basis @ coeff


class MLFieldProvider:
    """Field provider for one atomic configuration: H = -dE/dS by autograd, E in float64.

    The descriptor geometry is built once here; each call only touches spins.
    A list of systems packs them into one (atoms concatenated in list order,
    `concat_geometries`): spins are then (B, sum N, 3) and E sums over all of
    them, so several configurations advance in one batched call.
    """

    def __init__(
        self,
        model: EnergyModel,
        system: AtomicSystem | Sequence[AtomicSystem],
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.source = model  # as given: `model` may be a copy placed on the device
        self.model = self._placed(model, device, dtype)
        self.spec = self._spec_of(model)
        self.systems = [system] if isinstance(system, AtomicSystem) else list(system)
        self.device, self.dtype = torch.device(device), dtype
        parts = [build_geometry(one, self.spec, device, dtype) for one in self.systems]
        self.geometry: DescriptorGeometry = (
            parts[0] if len(parts) == 1 else concat_geometries(parts)
        )
        self._fused = FusedFields(self.model, self.geometry)

    @staticmethod
    def _placed(model: EnergyModel, device, dtype: torch.dtype) -> EnergyModel:
        """`model` with its network in dtype on device (standardisation buffers and energies
        stay float64): the model itself when it is so already, else a copy. Module.to moves
        in place, and the caller's model may be shared (the app draws its J(R) on the CPU)."""
        device = torch.device(device)
        tensors = [*model.parameters(), *model.buffers()]
        there = all(_on(t.device, device) for t in tensors)
        if there and all(p.dtype == dtype for p in model.net.parameters()):
            return model
        placed = copy.deepcopy(model).to(device=device)
        placed.net.to(dtype)
        return placed

    @staticmethod
    def _spec_of(model: EnergyModel):
        if model.arch.kind == "pairwise":  # G2m only: no triplets to build
            return model.spec.replace(include_g3m=False, include_chi=False)
        return model.spec

    def shares_geometry(self, model: EnergyModel) -> bool:
        """Whether `model` reads the descriptor this provider's geometry was built for."""
        return self._spec_of(model) == self.spec

    def for_model(self, model: EnergyModel) -> MLFieldProvider:
        """A provider of `model` on the same atoms: it shares this one's descriptor geometry
        when their descriptors agree (a retrained model: no set-up, which takes seconds at
        large N), else builds its own."""
        if not self.shares_geometry(model):
            return MLFieldProvider(model, self.systems, self.device, self.dtype)
        twin = copy.copy(self)
        twin.source, twin.model = model, self._placed(model, self.device, self.dtype)
        twin._fused = FusedFields(twin.model, twin.geometry)
        return twin

    def to(self, device: torch.device | str) -> MLFieldProvider:
        """This provider on another device: the descriptor geometry is moved, not built
        again (seconds at large N), and the model is placed there."""
        moved = copy.copy(self)
        moved.device = torch.device(device)
        moved.geometry = self.geometry.to(moved.device)
        moved.model = self._placed(self.source, moved.device, self.dtype)
        moved._fused = FusedFields(moved.model, moved.geometry)
        return moved

    def energy(self, spins: torch.Tensor) -> torch.Tensor:
        return self.model.energy(features(self.geometry, spins.to(self.dtype)))

    def local_energies(self, spins: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.model.local_energies(features(self.geometry, spins.to(self.dtype)))

    def working_bytes(self, batch: int) -> float:
        """Estimated peak memory of one evaluation of `batch` replicas beyond the geometry
        (bytes); `fields` refuses a batch that cannot fit (core.inference)."""
        return self._fused.working_bytes(batch)

    def fields(self, spins: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """H_i = -dE/dS_i (paper Eq. 7) and E, in the dtype and device of the input spins,
        by core.inference's fused pass (the numbers of -grad `energy`, to float rounding)."""
        h, e = self._fused(spins)
        return h.to(spins.dtype), e.to(spins.dtype)


def _on(actual: torch.device, wanted: torch.device) -> bool:
    """Whether a tensor on `actual` is on `wanted` ("cuda" means the current CUDA device)."""
    if actual.type != wanted.type:
        return False
    if wanted.index is None and actual.type == "cuda":
        return actual.index == torch.cuda.current_device()
    return wanted.index is None or actual.index == wanted.index


#: Physical parameters a model is trained for, compared on use.
PHYSICAL_KEYS = ("t0", "ell", "J", "filling", "kT_e", "density")
#: Those of the electrons: an ML model has them built in, so a run with the model cannot change them.
ELECTRON_KEYS = ("t0", "ell", "J", "filling", "kT_e")


def physical_parameters(electrons: ElectronConfig, density: float) -> dict[str, float]:
    return {
        "t0": electrons.t0,
        "ell": electrons.ell,
        "J": electrons.J,
        "filling": electrons.filling,
        "kT_e": electrons.kT_e,
        "density": density,
    }


def parameter_mismatches(
    trained: dict[str, float], used: dict[str, float], rel_tol: float = 1e-6
) -> dict[str, str]:
    """{key: message} for each parameter that differs from the model's training value."""
    problems = {}
    for key in PHYSICAL_KEYS:
        a, b = trained.get(key), used.get(key)
        if a is None or b is None:
            continue
        if not math.isclose(a, b, rel_tol=rel_tol, abs_tol=1e-12):
            problems[key] = f"model was trained for {key} = {a:g} but is used with {key} = {b:g}"
    return problems


def check_physical_parameters(
    trained: dict[str, float], used: dict[str, float], rel_tol: float = 1e-6
) -> list[str]:
    """Warn (and return the messages) for each parameter that differs from the model's training value."""
    problems = list(parameter_mismatches(trained, used, rel_tol).values())
    for message in problems:
        warnings.warn(message, stacklevel=2)
    return problems

"""The field-provider interface shared by ED, ML models and analytic test fields."""

from __future__ import annotations

from typing import Protocol

import torch


class FieldProvider(Protocol):
    """Anything that maps spins (B, N, 3) to local fields H = -dE/dS (B, N, 3) and E (B,)."""

    def fields(self, spins: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...


class ConstantField:
    """Uniform external field B on every spin: E = -sum_i S_i . B (PHYSICS.md analytic checks)."""

    def __init__(self, field: torch.Tensor | tuple[float, float, float]) -> None:
        self.field = torch.as_tensor(field, dtype=torch.float64)

    def fields(self, spins: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b = self.field.to(device=spins.device, dtype=spins.dtype)
        h = b.expand_as(spins)
        return h, -(spins * h).sum(dim=(-2, -1))

"""Stochastic LLG integrators and a stepper over any field provider (PHYSICS.md "LLG dynamics").

Paper Eq. 3, dS/dt = gamma S x (H + eta) - alpha S x (S x H), is integrated as
dS/dt = Omega x S with Omega = -gamma (H + eta)_perp + alpha (S x H), where _perp
drops the part along S (no torque, so the same equation; see _omega). The thermal
field eta is one Gaussian draw per step shared by predictor and corrector
(Stratonovich). Spins are (B, N, 3) tensors for B replicas of N spins; every
operation is vectorized and follows the device and dtype of the spins. Time in
1/(gamma t0), fields in t0.

Measured thermal bias of <S_z> for single spins at B = kT = alpha = 1, dt = 0.05
(exact 0.3130): sib none within 3e-4; depondt -1e-3, still -7e-4 at dt = 0.0125;
heun +8e-3, first order in dt (from the projection onto the sphere).
"""

from __future__ import annotations

import hashlib
import math
import threading
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from core.config import ConfigError, LLGConfig
from core.errors import StateError
from core.fields import FieldProvider

NORM_TOL = 1e-3
"""Largest accepted | |S|^2 - 1 | of input spins: catches unnormalised states, allows float32 drift."""
#: Bytes of a noise generator's state on each kind of device: the CPU's Mersenne Twister,
#: CUDA's Philox (seed and offset)
GENERATOR_STATE_BYTES = {"cpu": 5056, "cuda": 16}


@dataclass(frozen=True)
class StepResult:
    """One LLG step: new spins (B, N, 3); energy (B,) and fields (B, N, 3) of the old spins;
    the time step it took (the config may change between steps, from another thread)."""

    spins: torch.Tensor
    energy: torch.Tensor
    fields: torch.Tensor
    dt: float


# Component-wise products: on CPU several times faster than torch.linalg.cross and
# a sum over a last dimension of length 3.
def _cross(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a0, a1, a2 = a.unbind(-1)
    b0, b1, b2 = b.unbind(-1)
    return torch.stack((a1 * b2 - a2 * b1, a2 * b0 - a0 * b2, a0 * b1 - a1 * b0), dim=-1)


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a0, a1, a2 = a.unbind(-1)
    b0, b1, b2 = b.unbind(-1)
    return (a0 * b0 + a1 * b1 + a2 * b2).unsqueeze(-1)


def _omega(
    spins: torch.Tensor, h: torch.Tensor, eta: torch.Tensor | None, gamma: float, alpha: float
) -> torch.Tensor:
    """Omega = -gamma (H + eta)_perp + alpha (S x H), so that dS/dt = Omega x S.

    The part of H + eta along S exerts no torque (S x S = 0) and is dropped: it
    leaves the LLG equation unchanged but, left in, makes the SIB and Depondt
    rotations spin fast about an axis that is slightly off the spin, a
    discretisation error ~ |H_par|^2 dt^2 that dominates for ED fields.
    """
    drive = h if eta is None else h + eta
    drive = drive - spins * (_dot(spins, drive) / _dot(spins, spins))
    return alpha * _cross(spins, h) - gamma * drive


def _cayley(a: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Solve x = s + a x (s + x): [(1 - |a|^2) s + 2 a x s + 2 a (a.s)] / (1 + |a|^2)."""
    a2 = _dot(a, a)
    return ((1 - a2) * s + 2 * _cross(a, s) + 2 * a * _dot(a, s)) / (1 + a2)


def _rotate(w: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Rodrigues rotation of s by the angle |w| about w, smooth as |w| -> 0."""
    theta = torch.linalg.vector_norm(w, dim=-1, keepdim=True)
    sin_over = torch.sinc(theta / math.pi)  # sin(theta) / theta
    one_minus_cos_over = 0.5 * torch.sinc(theta / (2 * math.pi)) ** 2  # (1 - cos) / theta^2
    return torch.cos(theta) * s + sin_over * _cross(w, s) + one_minus_cos_over * w * _dot(w, s)


def _unit(s: torch.Tensor) -> torch.Tensor:
    return s / torch.linalg.vector_norm(s, dim=-1, keepdim=True)


def sib_step(
    provider: FieldProvider,
    spins: torch.Tensor,
    dt: float,
    *,
    gamma: float = 1.0,
    alpha: float = 0.0,
    eta: torch.Tensor | None = None,
) -> StepResult:
    """PHYSICS.md, LLG (paper Eq. 3): semi-implicit SIB step of Mentink et al. (2010)."""
    h, energy = provider.fields(spins)
    half = 0.5 * dt
    predicted = _cayley(half * _omega(spins, h, eta, gamma, alpha), spins)
    mid = 0.5 * (spins + predicted)
    h_mid, _ = provider.fields(mid)
    new = _cayley(half * _omega(mid, h_mid, eta, gamma, alpha), spins)
    return StepResult(new, energy, h, dt)


def depondt_step(
    provider: FieldProvider,
    spins: torch.Tensor,
    dt: float,
    *,
    gamma: float = 1.0,
    alpha: float = 0.0,
    eta: torch.Tensor | None = None,
) -> StepResult:
    """PHYSICS.md, LLG (paper Eq. 3): Depondt-Mertens (2009) rotation predictor-corrector step."""
    h, energy = provider.fields(spins)
    omega = _omega(spins, h, eta, gamma, alpha)
    predicted = _rotate(dt * omega, spins)
    h_pred, _ = provider.fields(predicted)
    omega_pred = _omega(predicted, h_pred, eta, gamma, alpha)
    new = _rotate(0.5 * dt * (omega + omega_pred), spins)
    return StepResult(new, energy, h, dt)


def heun_step(
    provider: FieldProvider,
    spins: torch.Tensor,
    dt: float,
    *,
    gamma: float = 1.0,
    alpha: float = 0.0,
    eta: torch.Tensor | None = None,
) -> StepResult:
    """PHYSICS.md, LLG (paper Eq. 3): Heun step, predictor and result projected onto |S| = 1."""
    h, energy = provider.fields(spins)
    rate = _cross(_omega(spins, h, eta, gamma, alpha), spins)
    predicted = _unit(spins + dt * rate)
    h_pred, _ = provider.fields(predicted)
    rate_pred = _cross(_omega(predicted, h_pred, eta, gamma, alpha), predicted)
    new = _unit(spins + 0.5 * dt * (rate + rate_pred))
    return StepResult(new, energy, h, dt)


_STEPS = {"sib": sib_step, "depondt": depondt_step, "heun": heun_step}


def check_spins(spins: torch.Tensor) -> None:
    """Raise StateError unless spins are finite unit vectors of shape (B, N, 3), B, N >= 1."""
    if not isinstance(spins, torch.Tensor):
        raise StateError(f"spins must be a torch.Tensor, got {type(spins).__name__}")
    if spins.ndim != 3 or spins.shape[-1] != 3 or spins.numel() == 0:
        raise StateError(
            f"spins must have shape (B, N, 3) with B, N >= 1, got {tuple(spins.shape)}"
        )
    if not spins.is_floating_point():
        raise StateError(f"spins must be floating point, got {spins.dtype}")
    deviation = float((_dot(spins, spins) - 1).abs().max())  # one reduction; NaN propagates
    if not deviation <= NORM_TOL:
        if not math.isfinite(deviation):
            raise StateError("spins contain NaN or inf")
        raise StateError(
            f"spins must be unit vectors: max | |S|^2 - 1 | = {deviation:.3g} > {NORM_TOL}"
        )


class LLG:
    """Stochastic LLG stepper over any FieldProvider (PHYSICS.md "LLG dynamics").

    The config is read afresh at every step, so set_config (thread safe) swaps
    temperature, alpha, dt or integrator between steps; a new seed restarts the
    noise stream. The noise generator lives on `device` (default: the spins' device).

    blocks (atoms per block, summing to N) splits the atoms into independent
    noise streams: block k draws its (B, n_k, 3) noise from seed + k, exactly
    what a stepper of block k alone with seed + k would draw. Several atomic
    configurations packed into one system (core.quench) thus get the noise
    they would get one by one. Default: one block, seed.
    """

    def __init__(
        self,
        provider: FieldProvider,
        config: LLGConfig,
        device: torch.device | str | None = None,
        blocks: Sequence[int] | None = None,
    ) -> None:
        if blocks is not None and (not blocks or min(blocks) < 1):
            raise ConfigError(f"noise blocks must be a non-empty list of sizes >= 1, got {blocks}")
        self.provider = provider
        self.device = None if device is None else torch.device(device)
        self.blocks = None if blocks is None else tuple(int(b) for b in blocks)
        self._config = config
        self._generators: list[torch.Generator] | None = None
        self._lock = threading.Lock()
        #: the config of the most recent step (None before the first)
        self.last_config: LLGConfig | None = None

    @property
    def config(self) -> LLGConfig:
        with self._lock:
            return self._config

    @config.setter
    def config(self, config: LLGConfig) -> None:
        self.set_config(config)

    def set_config(self, config: LLGConfig) -> None:
        """Replace the LLG parameters (any thread); the next step uses them."""
        if not isinstance(config, LLGConfig):
            raise TypeError(f"config must be an LLGConfig, got {type(config).__name__}")
        with self._lock:
            if config.seed != self._config.seed:
                self._generators = None
            self._config = config

    def _snapshot(self, device: torch.device) -> tuple[LLGConfig, list[torch.Generator]]:
        with self._lock:
            if self._generators is None:
                seed = self._config.seed
                self._generators = [
                    torch.Generator(device=self.device or device).manual_seed(seed + k)
                    for k in range(len(self.blocks or (0,)))
                ]
            return self._config, self._generators

    def noise_state(self) -> list[torch.Tensor]:
        """The states of the noise generators (one uint8 tensor per block), for a checkpoint."""
        _, generators = self._snapshot(self.device or torch.device("cpu"))
        return [g.get_state() for g in generators]

    def set_noise_state(self, states: Sequence[torch.Tensor]) -> None:
        """Continue the noise streams from `noise_state()` of an earlier stepper (same blocks).
        A state saved on another kind of device (a GPU run resumed on a CPU) does not fit
        these generators: each is seeded from its state's digest instead, like
        `continued_on`, so the noise goes on as a fresh stream (the same statistics, not the
        same numbers)."""
        _, generators = self._snapshot(self.device or torch.device("cpu"))
        if len(states) != len(generators):
            raise StateError(
                f"{len(states)} noise generator states for {len(generators)} noise blocks"
            )
        for generator, state in zip(generators, states, strict=True):
            state = torch.as_tensor(state, dtype=torch.uint8).cpu()
            if state.numel() == GENERATOR_STATE_BYTES.get(generator.device.type):
                generator.set_state(state)
            elif state.numel() in GENERATOR_STATE_BYTES.values():
                digest = hashlib.blake2b(state.numpy().tobytes(), digest_size=8).digest()
                generator.manual_seed(int.from_bytes(digest, "little") >> 2)
                warnings.warn(
                    f"the saved noise state comes from another kind of device (not "
                    f"{generator.device.type}): the noise goes on from a seed taken from it "
                    "(the same statistics; the numbers differ from a run on one kind of device)",
                    stacklevel=2,
                )
            else:
                raise StateError(
                    f"a noise generator state of {state.numel()} bytes is neither a CPU nor "
                    f"a CUDA generator's ({GENERATOR_STATE_BYTES})"
                )

    def continued_on(self, provider: FieldProvider, device: torch.device | str) -> LLG:
        """This stepper for `provider` on `device`, its noise streams going on: the generators'
        states where the kind of device stays, else seeds drawn from them (the state of a CPU
        generator does not fit a CUDA one). A new stepper would start them over from the seed."""
        new = LLG(provider, self.config, device=device, blocks=self.blocks)
        _, old = self._snapshot(self.device or torch.device("cpu"))
        _, fresh = new._snapshot(new.device or torch.device("cpu"))
        for g_new, g_old in zip(fresh, old, strict=True):
            if g_new.device.type == g_old.device.type:
                g_new.set_state(g_old.get_state())
            else:
                g_new.manual_seed(
                    int(torch.randint(2**62, (1,), generator=g_old, device=g_old.device))
                )
        return new

    def _noise(self, spins: torch.Tensor, generators: list[torch.Generator]) -> torch.Tensor:
        """Standard normal (B, N, 3), block k from generator k."""
        batch, n, _ = spins.shape
        sizes = self.blocks or (n,)
        if sum(sizes) != n:
            raise StateError(
                f"spins have {n} atoms but the noise blocks {sizes} add up to {sum(sizes)}"
            )
        parts = [
            torch.randn((batch, size, 3), generator=g, device=g.device, dtype=spins.dtype)
            for g, size in zip(generators, sizes, strict=True)
        ]
        return (parts[0] if len(parts) == 1 else torch.cat(parts, 1)).to(spins.device)

    def _step(self, spins: torch.Tensor) -> StepResult:
        config, generators = self._snapshot(spins.device)
        self.last_config = config
        std = config.noise_std()
        eta = std * self._noise(spins, generators) if std > 0 else None
        step = _STEPS[config.integrator]
        return step(
            self.provider, spins, config.dt, gamma=config.gamma, alpha=config.alpha, eta=eta
        )

    def step(self, spins: torch.Tensor, check: bool = True) -> StepResult:
        """PHYSICS.md, LLG (paper Eq. 3): one step with the current config's integrator and noise.
        check=False skips validating spins, which on a GPU waits for every step to finish
        before the next is queued: for loops that validate their state themselves."""
        if check:
            check_spins(spins)
        return self._step(spins)

    def run(
        self,
        spins: torch.Tensor,
        n_steps: int,
        callback: Callable[[int, StepResult], None] | None = None,
    ) -> torch.Tensor:
        """PHYSICS.md, LLG (paper Eq. 3): n_steps steps, callback(i, result) after each; final spins."""
        if not isinstance(n_steps, int) or n_steps < 0:
            raise ConfigError(f"n_steps must be an integer >= 0, got {n_steps!r}")
        check_spins(spins)
        for i in range(n_steps):
            result = self._step(spins)
            spins = result.spins
            if callback is not None:
                callback(i, result)
        return spins

"""Accuracy of a model against ED labels, judged on H_perp = S x H (PHYSICS.md "Scales that matter").

Metrics (all in t0 except the counts): rmse_hperp, mae_hperp and max_abs_hperp
over every component of S_i x H_i, ML minus ED; rel_rmse_hperp = rmse_hperp /
RMS of the ED H_perp components; rmse_energy_per_atom = RMS over frames of
(E_ML - E_ED) / N; n_frames, n_atoms.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from core.config import ElectronConfig
from core.dataset import configuration_index
from core.descriptor import DescriptorGeometry, DescriptorSpec, build_geometry, features
from core.errors import FileFormatError, StateError
from core.io import Frames
from core.model import EnergyModel, check_physical_parameters, physical_parameters
from core.system import AtomicSystem

METRIC_KEYS = (
    "rmse_hperp",
    "mae_hperp",
    "max_abs_hperp",
    "rel_rmse_hperp",
    "rmse_energy_per_atom",
    "n_frames",
    "n_atoms",
)


def cross(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a x b over the last axis (H_perp = S x H)."""
    return torch.linalg.cross(a, b, dim=-1)


def geometry_spec(model: EnergyModel) -> DescriptorSpec:
    """The descriptor the model reads: G2m only for the pairwise baseline (no triplets to build)."""
    if model.arch.kind == "pairwise":
        return model.spec.replace(include_g3m=False, include_chi=False)
    return model.spec


def net_dtype(model: EnergyModel) -> torch.dtype:
    return next(model.net.parameters()).dtype


def model_fields(
    model: EnergyModel,
    geometry: DescriptorGeometry,
    spins: torch.Tensor,
    create_graph: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """H_i = -dE/dS_i (paper Eq. 7) by autograd and E (float64) for spins (B, N, 3).

    create_graph=True keeps the graph so a loss on the fields can be trained on.
    """
    s = spins.detach().to(geometry.dtype).requires_grad_(True)
    with torch.enable_grad():
        energy = model.energy(features(geometry, s))
        (grad,) = torch.autograd.grad(energy.sum(), s, create_graph=create_graph)
    return -grad, energy


def predict(
    model: EnergyModel, geometry: DescriptorGeometry, spins: torch.Tensor, batch: int = 64
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fields (F, N, 3) and energies (F,) float64 of many frames of one configuration."""
    fields, energy = [], []
    for start in range(0, spins.shape[0], batch):
        h, e = model_fields(model, geometry, spins[start : start + batch])
        fields.append(h.detach().double())
        energy.append(e.detach())
    return torch.cat(fields), torch.cat(energy)


def hperp_metrics(
    hperp_ml: np.ndarray, hperp_ed: np.ndarray, energy_ml: np.ndarray, energy_ed: np.ndarray
) -> dict[str, float | int]:
    """The METRIC_KEYS from H_perp (F, N, 3) and energies (F,) of ML and ED."""
    err = np.asarray(hperp_ml, np.float64) - np.asarray(hperp_ed, np.float64)
    n_atoms = err.shape[1]
    rmse = float(np.sqrt(np.mean(err**2)))
    ref = float(np.sqrt(np.mean(np.asarray(hperp_ed, np.float64) ** 2)))
    de = (np.asarray(energy_ml, np.float64) - np.asarray(energy_ed, np.float64)) / n_atoms
    return {
        "rmse_hperp": rmse,
        "mae_hperp": float(np.mean(np.abs(err))),
        "max_abs_hperp": float(np.max(np.abs(err))),
        "rel_rmse_hperp": rmse / ref if ref > 0 else float("inf"),
        "rmse_energy_per_atom": float(np.sqrt(np.mean(de**2))),
        "n_frames": int(err.shape[0]),
        "n_atoms": int(n_atoms),
    }


def check_labelled(frames: Frames, what: str = "frames") -> None:
    """FileFormatError without ED fields/energy; StateError for NaN or inf anywhere in the data."""
    missing = [n for n in ("fields", "energy") if getattr(frames, n) is None]
    if missing:
        raise FileFormatError(
            f"{what} have no ED {' or '.join(missing)}: label them first (sdglass label)"
        )
    for name in ("positions", "box", "spins", "fields", "energy"):
        if not np.all(np.isfinite(getattr(frames, name))):
            raise StateError(f"{what}: {name} contain NaN or inf")


def frame_groups(frames: Frames) -> Iterator[tuple[int, np.ndarray, AtomicSystem]]:
    """(configuration id, frame indices, atomic system) for every atomic configuration."""
    ids = configuration_index(frames)
    for c in range(int(ids.max()) + 1):
        members = np.flatnonzero(ids == c)
        first = members[0]
        yield c, members, AtomicSystem(frames.positions[first], float(frames.box[first]))


def frames_physical(frames: Frames, defaults: ElectronConfig) -> dict[str, float]:
    """Physical parameters of a frames file: recorded electron attrs and mean density."""
    electrons = frames.electron_config(defaults)
    used = physical_parameters(electrons, float(np.mean(frames.n_atoms / frames.box**3)))
    recorded = {k for k, v in frames.attrs.items() if v is not None}
    return {k: v for k, v in used.items() if k in recorded or k == "density"}


def evaluate(
    model: EnergyModel,
    frames: Frames,
    device: str = "cpu",
    physical: dict[str, float] | None = None,
    plot: str | Path | None = None,
    force: bool = False,
) -> dict[str, float | int]:
    """METRIC_KEYS of the model on ED-labelled frames (module docstring).

    physical: the model's training parameters (ModelCard.physical); each one that
    differs from the file's gives a warning. plot: also write a parity figure.
    """
    check_labelled(frames)
    if physical is not None:
        check_physical_parameters(physical, frames_physical(frames, ElectronConfig()))
    ml, energy = predict_frames(model, frames, device)
    ed = np.cross(frames.spins, frames.fields)
    result: dict = hperp_metrics(ml, ed, energy, frames.energy)
    if frames.source is not None:  # separately on random and relaxation frames
        result["by_source"] = {
            label: hperp_metrics(ml[sel], ed[sel], energy[sel], frames.energy[sel])
            for code, label in enumerate(frames.source_labels)
            if (sel := frames.source == code).any()
        }
    if plot is not None:
        from core.plots import save_figure

        title = (
            f"{frames.n_frames} frames, N = {frames.n_atoms}: rmse {result['rmse_hperp']:.2e} t0"
        )
        save_figure(parity_figure(ml, ed, frames.source, frames.source_labels, title), plot, force)
    return result


def predict_frames(
    model: EnergyModel, frames: Frames, device: str = "cpu"
) -> tuple[np.ndarray, np.ndarray]:
    """The model's H_perp = S x H (F, N, 3) and energies (F,) on every frame."""
    dtype = net_dtype(model)
    model = model.to(device)
    spec = geometry_spec(model)
    ml = np.zeros_like(frames.spins)
    energy = np.zeros(frames.n_frames)
    for _, members, system in frame_groups(frames):
        geometry = build_geometry(system, spec, device, dtype)
        spins = torch.as_tensor(frames.spins[members], device=device)
        h, e = predict(model, geometry, spins)
        ml[members] = cross(spins, h.to(spins.dtype)).cpu().numpy()
        energy[members] = e.cpu().numpy()
    return ml, energy


def parity_figure(ml, ed, source=None, labels=("random", "relaxation"), title: str = ""):
    """ML vs ED H_perp components and the error histogram (like paper Fig. 3)."""
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 4))
    draw_parity(left, ml, ed, source, labels)
    draw_error_histogram(right, ml, ed, source, labels)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def _by_source(source, labels, n_frames):
    if source is None:
        return [("all", np.arange(n_frames))]
    return [(labels[k], np.flatnonzero(source == k)) for k in np.unique(source)]


def draw_parity(ax, ml, ed, source=None, labels=("random", "relaxation")) -> None:
    """Scatter of predicted vs ED H_perp components with the diagonal."""
    for name, idx in _by_source(source, labels, len(ml)):
        ax.plot(ed[idx].ravel(), ml[idx].ravel(), ".", ms=1.5, alpha=0.4, label=name)
    lim = float(np.max(np.abs(ed))) * 1.05
    ax.plot([-lim, lim], [-lim, lim], "k-", lw=0.8)
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    ax.set_aspect("equal")
    ax.set_xlabel(r"ED $(\mathbf{S}_i \times \mathbf{H}_i)_\alpha$ ($t_0$)")
    ax.set_ylabel(r"ML $(\mathbf{S}_i \times \mathbf{H}_i)_\alpha$ ($t_0$)")
    ax.legend(fontsize=7, markerscale=6)


def draw_error_histogram(ax, ml, ed, source=None, labels=("random", "relaxation")) -> None:
    """Histogram of ML - ED H_perp components per frame source, rmse in the legend."""
    err = np.asarray(ml) - np.asarray(ed)
    edges = np.linspace(-1, 1, 101) * max(float(np.max(np.abs(err))), 1e-12)
    for name, idx in _by_source(source, labels, len(err)):
        e = err[idx].ravel()
        rmse = float(np.sqrt(np.mean(e**2)))
        ax.hist(e, bins=edges, histtype="step", density=True, label=f"{name}: rmse {rmse:.2e}")
    ax.set_yscale("log")
    ax.set_xlabel(r"ML $-$ ED $H_\perp$ component ($t_0$)")
    ax.set_ylabel("density")
    ax.legend(fontsize=7)

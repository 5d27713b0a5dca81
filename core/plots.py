"""Matplotlib figures of the paper's observables (headless Agg backend), saved atomically."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FormatStrFormatter, MaxNLocator, NullLocator

from core.config import ConfigError
from core.electrons import BULK_SHARE, DensityOfStates, states_quantile
from core.io import atomic_output, check_output
from core.observables import xi_above_noise


def _format(path: str | Path) -> str:
    return Path(path).suffix.lstrip(".").lower() or "png"


def check_figure_output(path: str | Path, force: bool = False) -> Path:
    """check_output for a figure, before the work that draws it: also a file suffix that
    matplotlib can write (png, pdf, svg, ...)."""
    target = check_output(path, force)
    supported = Figure().canvas.get_supported_filetypes()
    if _format(target) not in supported:
        raise ConfigError(
            f"cannot write a figure to {target}: .{_format(target)} is not an image format; "
            f"use one of {', '.join(sorted(supported))}"
        )
    return target


def save_figure(fig: Figure, path: str | Path, force: bool = False) -> None:
    """Write a figure atomically; the format follows the file suffix (png, pdf, svg)."""
    fmt = _format(path)
    with atomic_output(path, force=force) as tmp:
        fig.savefig(tmp, format=fmt, dpi=150, bbox_inches="tight")
    plt.close(fig)


def pick_times(times: np.ndarray, count: int = 7) -> np.ndarray:
    """Indices of about `count` record times spread evenly in log t (t > 0)."""
    positive = np.flatnonzero(times > 0)
    targets = np.logspace(np.log10(times[positive[0]]), np.log10(times[-1]), count)
    picks = {int(positive[np.argmin(np.abs(np.log(times[positive] / t)))]) for t in targets}
    return np.array(sorted(picks))


def draw_correlations(
    ax, centres: np.ndarray, corr: np.ndarray, times: np.ndarray, r_min: float, picks
) -> None:
    """C(r, t) curves coloured by time, forbidden region r < r_min shaded (paper Fig. 4)."""
    cmap = plt.get_cmap("viridis")
    for rank, k in enumerate(picks):
        ax.plot(
            centres, corr[k], "o-", ms=3, color=cmap(rank / max(1, len(picks) - 1)),
            label=f"t = {times[k]:.3g}",
        )  # fmt: skip
    ax.axvspan(0, r_min, color="0.85", label=r"$r < r_{\min}$")
    ax.axhline(0, color="0.4", lw=0.8)
    ax.set_xlim(0, centres[-1] + 0.5 * (centres[1] - centres[0]))
    ax.set_xlabel(r"$r$ ($\ell$)")
    ax.set_ylabel(r"$C(r, t)$")
    ax.legend(fontsize=7, ncol=2)


def draw_xi(ax, times: np.ndarray, xi: np.ndarray, fit=None, floor_xi=None) -> None:
    """xi(t) on log-log axes, with the droplet fit (log t)^(1/psi) if given (paper Fig. 5)
    and, if given, xi with the noise taken off |C| (`xi_above_noise`) in grey."""
    ok = (times > 0) & np.isfinite(xi)
    ax.loglog(times[ok], xi[ok], "o-", ms=3, label=r"$\xi(t)$")
    if floor_xi is not None:
        ok = (times > 0) & np.isfinite(floor_xi)
        ax.loglog(
            times[ok], floor_xi[ok], "s-", ms=2.5, lw=0.8, color="0.55",
            label=r"$\xi$, noise taken off $|C|$",
        )  # fmt: skip
    if fit is not None:
        t = np.logspace(np.log10(fit.t_min), np.log10(fit.t_max), 100)
        ax.loglog(
            t, fit.curve(t), "r--",
            label=rf"$(\log t)^{{1/\psi}}$, $\psi = {fit.psi:.2f} \pm {fit.psi_err:.2f}$",
        )  # fmt: skip
    ax.set_xlabel(r"$t$ ($1/\gamma t_0$)")
    ax.set_ylabel(r"$\xi$ ($\ell$)")
    low, high = ax.get_ylim()
    if high < 10 * low:  # xi spans less than a decade: plain ticks, not only 10^0
        ticks = MaxNLocator(nbins=6).tick_values(low, high)
        ax.yaxis.set_major_locator(FixedLocator(ticks[(ticks >= low) & (ticks <= high)]))
        ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
        ax.yaxis.set_minor_locator(NullLocator())
    ax.legend(fontsize=7)


def xi_figure(traj, title: str = "", fit=None) -> Figure:
    """xi(t) of a quench run alone, with xi above the noise and the droplet fit (paper Fig. 5)."""
    fig, ax = plt.subplots(figsize=(5.5, 4))
    draw_xi(ax, traj.times, traj.xi, fit, xi_above_noise(traj.r_edges, traj.corr))
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def quench_figure(traj, title: str = "", fit=None) -> Figure:
    """Two panels: C(r, t) at several times, and xi(t) log-log (with the droplet fit if given)."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    picks = pick_times(traj.times)
    r_min = float(traj.attrs.get("r_min", traj.r_edges[0]))
    draw_correlations(left, traj.r_centres, traj.corr, traj.times, r_min, picks)
    draw_xi(right, traj.times, traj.xi, fit, xi_above_noise(traj.r_edges, traj.corr))
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def dos_figure(dos: DensityOfStates, title: str = "") -> Figure:
    """J = 0 density of states with the Fermi level dashed (paper Fig. 2)."""
    fig, ax = plt.subplots(figsize=(5, 3.5))
    draw_dos(ax, dos, title)
    fig.tight_layout()
    return fig


def draw_dos(ax, dos: DensityOfStates, title: str = "") -> None:
    """rho against eps - eps_F (the paper's zero, dashed) for the lower BULK_SHARE of the states,
    and the whole band in a log-scale inset (a few tightly bound clusters reach far up)."""
    e = dos.centres - dos.fermi_level
    ax.fill_between(e, dos.rho, step="mid", alpha=0.35)
    ax.step(e, dos.rho, where="mid", lw=1)
    ax.axvline(0.0, ls="--", color="k", label=rf"$\epsilon_F = {dos.fermi_level:.3f}\,t_0$")
    span = states_quantile(dos, BULK_SHARE) - dos.fermi_level
    ax.set_xlim(e[0] - 0.05 * (span - e[0]), span)
    ax.set_xlabel(r"$\epsilon - \epsilon_F$ ($t_0$)")
    ax.set_ylabel(r"$\rho(\epsilon)$ (states per atom per $t_0$)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8, loc="upper left")
    inset = ax.inset_axes([0.5, 0.45, 0.47, 0.4])
    inset.step(e, np.where(dos.rho > 0, dos.rho, np.nan), where="mid", lw=0.8)
    inset.axvline(0.0, ls="--", color="k", lw=0.8)
    inset.set_yscale("log")
    inset.tick_params(labelsize=6)
    inset.set_title(f"whole band (main panel: lower {BULK_SHARE:.0%} of states)", fontsize=6)


def nearest_records(times: np.ndarray, wanted) -> np.ndarray:
    """Index of the record time nearest in log t to each wanted time within the run."""
    times = np.asarray(times)
    positive = np.flatnonzero(times > 0)
    wanted = [t for t in wanted if t <= times[-1] * (1 + 1e-9)]
    return np.array(
        sorted({int(positive[np.argmin(np.abs(np.log(times[positive] / t)))]) for t in wanted}),
        dtype=int,
    )


def comparison_figure(trajs: list, labels: list[str], title: str = "", at_times=None) -> Figure:
    """C(r, t) of several runs at the same record times in one panel (solid, dashed, ...), like
    Fig. 4; at_times: the times to show (nearest records; default six spread in log t)."""
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    first = trajs[0]
    picks = [] if at_times is None else nearest_records(first.times, at_times)
    if not len(picks):  # no wanted time within the run: six spread in log t
        picks = pick_times(first.times, 6)
    cmap = plt.get_cmap("viridis")
    styles = ["o-", "s--", "^:", "d-."]
    for style, traj, label in zip(styles, trajs, labels, strict=False):
        for rank, k in enumerate(picks):
            ax.plot(
                traj.r_centres, traj.corr[k], style, ms=3, lw=1,
                color=cmap(rank / max(1, len(picks) - 1)),
                label=f"{label}, t = {traj.times[k]:.3g}",
            )  # fmt: skip
    r_min = float(first.attrs.get("r_min", first.r_edges[0]))
    ax.axvspan(0, r_min, color="0.85")
    ax.axhline(0, color="0.4", lw=0.8)
    ax.set_xlim(0, first.r_centres[-1] + 0.5 * (first.r_centres[1] - first.r_centres[0]))
    ax.set_xlabel(r"$r$ ($\ell$)")
    ax.set_ylabel(r"$C(r, t)$")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    return fig

"""Live plots docked at the bottom: C(r, t) (paper Fig. 4), xi(t) (Fig. 5) and energy per spin.

Matplotlib Qt canvases following napari's theme. `update` only stores the
latest snapshot; a timer redraws at most `REDRAW_HZ` times per second with
set_data, so the dynamics is never blocked by drawing.
"""

from __future__ import annotations

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FormatStrFormatter, ScalarFormatter
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QHBoxLayout, QLabel, QPushButton, QVBoxLayout, QWidget

from core.observables import fit_droplet
from core.plots import pick_times

REDRAW_HZ = 4
#: Most C(r, t) curves drawn at once (spread evenly in log t).
MAX_CURVES = 8


def theme_colours(theme_name: str) -> dict[str, str]:
    """Background, foreground and text colours of a napari theme as hex strings."""
    from napari.utils.theme import get_theme

    t = get_theme(theme_name)
    return {
        "background": t.background.as_hex(),
        "canvas": t.foreground.as_hex(),
        "text": t.text.as_hex(),
        "grid": t.primary.as_hex(),
    }


class LivePlots(QWidget):
    """Three canvases in a row plus the "Fit psi" button and its result."""

    def __init__(self, theme: str = "dark", r_min: float = 0.5) -> None:
        super().__init__()
        self.colours = theme_colours(theme)
        self.r_min = r_min
        self.pending = None
        self.snapshot = None
        self.fit = None
        self.redraws = 0
        self.figure = Figure(figsize=(12, 2.6), facecolor=self.colours["background"])
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(220)
        self.ax_corr, self.ax_xi, self.ax_energy = self.figure.subplots(1, 3)
        for ax in (self.ax_corr, self.ax_xi, self.ax_energy):
            self._style(ax)
        self._corr_lines: list = []
        self._corr_count = -1
        (self.xi_line,) = self.ax_xi.plot([], [], "o-", ms=3, color="#4fc3f7", label="xi(t)")
        (self.fit_line,) = self.ax_xi.plot([], [], "--", color="#ff8a65", label="fit")
        (self.energy_line,) = self.ax_energy.plot([], [], "-", color="#aed581")
        self.ax_xi.set_xscale("log")
        self.ax_xi.set_yscale("log")
        self.ax_xi.set_xlim(0.01, 10)
        self.ax_xi.set_ylim(0.5, 3)
        self.ax_xi.yaxis.set_major_formatter(ScalarFormatter())
        self.ax_xi.yaxis.set_minor_formatter(FormatStrFormatter("%.3g"))
        self.ax_energy.ticklabel_format(useOffset=False)
        self._labels()
        self.figure.subplots_adjust(left=0.06, right=0.99, bottom=0.2, top=0.9, wspace=0.28)

        self.fit_button = QPushButton("Fit psi")
        self.fit_button.setToolTip(
            "Fit the droplet law xi(t) = A (log t)^(1/psi) to the recorded xi for t >= 1.5 "
            "(1/gamma t0); the paper finds psi ~ 1.02 at N = 500."
        )
        self.fit_button.clicked.connect(self.fit_psi)
        self.fit_label = QLabel("psi: not fitted")
        row = QHBoxLayout()
        row.addWidget(self.fit_button)
        row.addWidget(self.fit_label, 1)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(2, 2, 2, 2)
        layout.addWidget(self.canvas, 1)
        layout.addLayout(row)

        self.timer = QTimer(self)
        self.timer.setInterval(int(1000 / REDRAW_HZ))
        self.timer.timeout.connect(self.flush)
        self.timer.start()

    # -------------------------------------------------------------- styling

    def _style(self, ax) -> None:
        c = self.colours
        ax.set_facecolor(c["canvas"])
        ax.tick_params(colors=c["text"], labelsize=7)
        for spine in ax.spines.values():
            spine.set_color(c["text"])
        ax.xaxis.label.set_color(c["text"])
        ax.yaxis.label.set_color(c["text"])
        ax.title.set_color(c["text"])

    def _labels(self) -> None:
        self.ax_corr.set_xlabel("r (ell)", fontsize=8)
        self.ax_corr.set_ylabel("C(r, t)", fontsize=8)
        self.ax_corr.set_title("Spin correlation C(r, t)", fontsize=9)
        self.ax_xi.set_xlabel("t (1/gamma t0)", fontsize=8)
        self.ax_xi.set_ylabel("xi (ell)", fontsize=8)
        self.ax_xi.set_title("Correlation length xi(t)", fontsize=9)
        self.ax_energy.set_xlabel("t (1/gamma t0)", fontsize=8)
        self.ax_energy.set_ylabel("E / N (t0)", fontsize=8)
        self.ax_energy.set_title("Energy per spin", fontsize=9)

    # -------------------------------------------------------------- data

    def reset(self, r_min: float) -> None:
        """Clear every curve (new system or new spins)."""
        self.r_min = r_min
        self.pending, self.snapshot, self.fit = None, None, None
        self._corr_count = -1
        for line in self._corr_lines:
            line.remove()
        self._corr_lines = []
        self.ax_corr.clear()
        self._style(self.ax_corr)
        self._labels()
        for line in (self.xi_line, self.fit_line, self.energy_line):
            line.set_data([], [])
        self.ax_xi.set_xlim(0.01, 10)
        self.ax_xi.set_ylim(0.5, 3)
        self.fit_label.setText("psi: not fitted")
        self.canvas.draw_idle()

    def update(self, snapshot) -> None:
        """Remember the latest snapshot; the timer draws it."""
        self.pending = snapshot

    def flush(self) -> None:
        """Redraw now if a new snapshot is pending."""
        snap, self.pending = self.pending, None
        if snap is None:
            return
        self.snapshot = snap
        self._draw_corr(snap)
        ok = (snap.record_times > 0) & np.isfinite(snap.xi) & (snap.xi > 0)
        self.xi_line.set_data(snap.record_times[ok], snap.xi[ok])
        self.energy_line.set_data(snap.energy_times, snap.energy_history)
        if ok.any():
            t, x = snap.record_times[ok], snap.xi[ok]
            self.ax_xi.set_xlim(t.min() / 1.5, t.max() * 1.5)
            self.ax_xi.set_ylim(x.min() / 1.15, x.max() * 1.15)
        if len(snap.energy_times):
            self.ax_energy.relim()
            self.ax_energy.autoscale_view()
        self.canvas.draw_idle()
        self.redraws += 1

    def _draw_corr(self, snap) -> None:
        times, corr = snap.record_times, snap.corr
        ax = self.ax_corr
        if len(times) != self._corr_count:  # a new record time: rebuild the curve set
            self._corr_count = len(times)
            ax.clear()
            self._style(ax)
            self._labels()
            self._corr_lines = []
            ax.axvspan(0, snap.r_min, color=self.colours["grid"], alpha=0.6, lw=0)
            ax.text(snap.r_min / 2, 0.95, "r < r_min", transform=ax.get_xaxis_transform(),
                    ha="center", va="top", fontsize=7, color=self.colours["text"])  # fmt: skip
            ax.axhline(0, color=self.colours["text"], lw=0.6, alpha=0.6)
            picks = self._picks(times)
            cmap = colormaps["plasma"]
            centres = 0.5 * (snap.r_edges[1:] + snap.r_edges[:-1])
            for rank, k in enumerate(picks):
                colour = cmap(0.15 + 0.8 * rank / max(1, len(picks) - 1))
                (line,) = ax.plot(centres, corr[k], "o-", ms=2, lw=1, color=colour,
                                  label=f"t = {times[k]:.3g}")  # fmt: skip
                line.k = k
                self._corr_lines.append(line)
            ax.set_xlim(0, snap.r_edges[-1])
            if picks.size:
                leg = ax.legend(fontsize=6, ncol=2, loc="lower right", framealpha=0.3)
                for text in leg.get_texts():
                    text.set_color(self.colours["text"])
        centres = 0.5 * (snap.r_edges[1:] + snap.r_edges[:-1])
        for line in self._corr_lines:
            line.set_data(centres, corr[line.k])
        if len(corr):
            lo, hi = float(np.min(corr)), float(np.max(corr))
            pad = 0.1 * max(hi - lo, 1e-3)
            ax.set_ylim(min(lo, 0) - pad, max(hi, 0) + pad)

    @staticmethod
    def _picks(times: np.ndarray) -> np.ndarray:
        if (times > 0).sum() == 0:
            return np.arange(len(times))
        return pick_times(times, MAX_CURVES)

    # -------------------------------------------------------------- droplet fit

    def fit_psi(self) -> None:
        """Overlay the droplet fit (log t)^(1/psi) and print psi +- its standard error."""
        self.flush()
        snap = self.snapshot
        try:
            if snap is None:
                raise ValueError("no data yet: run the dynamics first")
            fit = fit_droplet(snap.record_times, snap.xi)
        except ValueError as err:
            self.fit = None
            self.fit_line.set_data([], [])
            self.fit_label.setText(f"psi: {err}")
            self.canvas.draw_idle()
            return
        self.fit = fit
        t = np.logspace(np.log10(fit.t_min), np.log10(fit.t_max), 100)
        self.fit_line.set_data(t, fit.curve(t))
        self.fit_label.setText(
            f"psi = {fit.psi:.3f} +- {fit.psi_err:.3f}  (xi = {fit.amplitude:.3g} (log t)^(1/psi), "
            f"{fit.n_points} points, t in [{fit.t_min:.3g}, {fit.t_max:.3g}])"
        )
        self.canvas.draw_idle()

    # -------------------------------------------------------------- export

    def csv_rows(self) -> dict[str, tuple[list[str], np.ndarray]]:
        """Plot data as named tables: header and rows."""
        snap = self.snapshot
        if snap is None:
            return {}
        centres = 0.5 * (snap.r_edges[1:] + snap.r_edges[:-1])
        corr_rows = np.column_stack(
            [np.repeat(snap.record_times, len(centres)), np.tile(centres, len(snap.record_times)),
             snap.corr.reshape(-1)]
        ) if len(snap.record_times) else np.zeros((0, 3))  # fmt: skip
        return {
            "correlation": (["t", "r", "C"], corr_rows),
            "xi": (["t", "xi"], np.column_stack([snap.record_times, snap.xi])),
            "energy": (
                ["t", "energy_per_spin", "magnetisation"],
                np.column_stack(
                    [snap.energy_times, snap.energy_history, snap.magnetisation_history]
                ),
            ),
        }

"""Live plots docked at the bottom: C(r, t) (paper Fig. 4), xi(t) (Fig. 5) and energy per spin.

Three matplotlib Qt canvases following napari's theme. `update` stores the
latest snapshot and redraws at once when the last redraw is at least
1/`REDRAW_HZ` s old, so the plots change in the same event-loop turn as the 3D
layers and Qt composes the window once for both (a composition costs ~25 ms
with software OpenGL); after a full draw (True from `update`) the session moves
the layers to a later turn instead. A timer draws a snapshot that waited longer
(the run paused or ended). Redraws use set_data. The data lines are animated artists
that are blitted onto a cached background (matplotlib's blitting recipe), so a
redraw is cheap; the slow full redraw (axes, ticks) happens only when an axis
range has to grow (ranges grow with a margin, time axes double, so rarely).
C(r, t) and xi(t) are redrawn only when a record time is added. Measured with ``sdglass app --measure`` (README).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure
from matplotlib.text import Text
from matplotlib.ticker import NullFormatter, ScalarFormatter
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import (
    QDoubleSpinBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from core.observables import fit_droplet
from core.plots import pick_times

REDRAW_HZ = 4
#: Font sizes (pt) of the docked plots at napari's default interface font size: titles,
#: axis labels, tick labels, notes on the axes, the C(r, t) legend.
TITLE_PT, LABEL_PT, TICK_PT, NOTE_PT, LEGEND_PT = 9, 8, 7, 7, 6


def font_scale() -> float:
    """napari's interface font size (Preferences > Appearance) over its theme's default: 1
    unless the user made the interface larger (a projector) or smaller."""
    from napari.settings import get_settings
    from napari.utils.theme import get_theme

    appearance = get_settings().appearance
    try:  # napari's themes give "9pt"; a theme from elsewhere may not: then no scaling
        default = float(get_theme(appearance.theme).font_size.removesuffix("pt"))
    except (ValueError, AttributeError):
        return 1.0
    return appearance.font_size / default if default > 0 else 1.0


def pt(size: float) -> float:
    """A plot font size at napari's current interface scale."""
    return size * font_scale()


def rescale_fonts(figure, ratio: float) -> None:
    """Every text of `figure` `ratio` times its size, and tick labels drawn later at the
    current scale (napari's font size changed)."""
    for text in figure.findobj(Text):
        text.set_fontsize(text.get_fontsize() * ratio)
    for ax in figure.axes:
        ax.tick_params(labelsize=pt(TICK_PT))


#: Short names of changed parameters on the xi(t) and energy plots.
SHORT_NAMES = {"temperature": "kT"}

#: Most C(r, t) curves drawn at once (spread evenly in log t).
MAX_CURVES = 8
#: Relative margin added when an axis range grows.
GROW_MARGIN = 0.25
#: Margin of the time axes: the range doubles (one decade more on log axes) whenever time
#: passes its end, so a run to time t needs ~log2(t) full redraws, not one per 25 %.
TIME_MARGIN = 1.0


#: Data colours on dark and on light backgrounds: a line, the fit, the energy line, and the
#: stretch of the plasma colour map that the C(r, t) curves use (early to late).
PALETTES = {
    "dark": {"data": "#4fc3f7", "fit": "#ff8a65", "energy": "#aed581", "curves": (0.15, 0.95)},
    "light": {"data": "#0277bd", "fit": "#d84315", "energy": "#2e7d32", "curves": (0.0, 0.8)},
}


def change_label(change: dict) -> str:
    """A parameter change (core.simulation.parameter_change) in a few characters, its new
    values: "kT 0.25, alpha 0.5", "ML", "new model"."""
    parts = []
    for name, value in change.items():
        if name in ("t", "step"):
            continue
        if name == "engine":
            parts.append(str(value[1]).upper())
        elif name == "model":
            parts.append("new model")
        else:
            new = value[1]
            parts.append(f"{SHORT_NAMES.get(name, name)} {new:g}" if isinstance(new, float)
                         else f"{SHORT_NAMES.get(name, name)} {new}")  # fmt: skip
    return ", ".join(parts)


def theme_colours(theme_name: str) -> dict:
    """Background, foreground and text colours of a napari theme as hex strings, and the
    PALETTES entry that reads on its background."""
    from matplotlib.colors import to_rgb
    from napari.utils.theme import get_theme

    t = get_theme(theme_name)
    background = t.background.as_hex()
    luminance = sum(w * c for w, c in zip((0.299, 0.587, 0.114), to_rgb(background), strict=True))
    return {
        "background": background,
        "canvas": t.foreground.as_hex(),
        "text": t.text.as_hex(),
        "grid": t.primary.as_hex(),
        **PALETTES["light" if luminance > 0.5 else "dark"],
    }


def curve_colour(colours: dict, rank: int, count: int):
    """Colour of the rank-th of count C(r, t) curves (early to late) on the theme's background."""
    lo, hi = colours["curves"]
    return colormaps["plasma"](lo + (hi - lo) * rank / max(1, count - 1))


def style_axes(ax, colours: dict[str, str], title: str, xlabel: str, ylabel: str) -> None:
    """Theme colours on an axes, with its title and axis labels (small fonts for docks)."""
    ax.set_title(title, fontsize=pt(TITLE_PT))
    ax.set_xlabel(xlabel, fontsize=pt(LABEL_PT))
    ax.set_ylabel(ylabel, fontsize=pt(LABEL_PT))
    recolour(ax, colours)


def recolour(ax, colours: dict[str, str]) -> None:
    """Theme colours on an axes and its figure, texts kept (napari's theme changed)."""
    ax.figure.set_facecolor(colours["background"])
    ax.set_facecolor(colours["canvas"])
    ax.tick_params(colors=colours["text"], labelsize=pt(TICK_PT))
    for spine in ax.spines.values():
        spine.set_color(colours["text"])
    for text in (ax.title, ax.xaxis.label, ax.yaxis.label):
        text.set_color(colours["text"])


def grown(
    current: tuple[float, float],
    lo: float,
    hi: float,
    log: bool = False,
    margin: float = GROW_MARGIN,
):
    """A range holding [lo, hi] that includes `current`, None if current holds it. Only the
    ends that had to move get a margin: `margin` times the new span, on log axes `margin`
    decades (a time axis that only grows at its end keeps its start)."""
    low, high = lo < current[0], hi > current[1]
    if not (low or high):
        return None
    lo, hi = min(lo, current[0]), max(hi, current[1])
    if log:
        pad = margin * np.log(10.0)
        lo, hi = np.log(lo) - low * pad, np.log(hi) + high * pad
        return float(np.exp(lo)), float(np.exp(hi))
    pad = margin * max(hi - lo, 1e-6)
    return lo - low * pad, hi + high * pad


class BlitPlot:
    """One canvas with one axes; its data artists are animated and blitted on a cached background."""

    def __init__(self, colours: dict[str, str], title: str, xlabel: str, ylabel: str) -> None:
        self.colours = colours
        self.figure = Figure(figsize=(4, 2.6), facecolor=colours["background"])
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(220)
        self.ax = self.figure.add_subplot()
        style_axes(self.ax, colours, title, xlabel, ylabel)
        self.figure.subplots_adjust(left=0.17, right=0.97, bottom=0.2, top=0.88)
        self.artists: list = []
        self.background = None
        self.needs_full = True  # axes, ticks or legend changed: the next paint is a full draw
        self.canvas.mpl_connect("draw_event", self._on_draw)

    def animate(self, artist):
        """Register a data artist: drawn by blitting, not by full redraws."""
        artist.set_animated(True)
        self.artists.append(artist)
        return artist

    def _on_draw(self, event) -> None:
        self.background = self.canvas.copy_from_bbox(self.figure.bbox)
        self._draw_artists()

    def _draw_artists(self) -> None:
        for artist in self.artists:
            self.ax.draw_artist(artist)

    def redraw(self, full: bool = False, allow_full: bool = True) -> bool:
        """Full draw (axes, ticks, legend) when asked or needed, else a blit of the data.

        With allow_full False a needed full draw waits (nothing is drawn); returns
        whether a full draw happened.
        """
        self.needs_full |= full or self.background is None
        if self.needs_full:
            if allow_full:
                self.needs_full = False
                self.canvas.draw()
                return True
            return False
        self.canvas.restore_region(self.background)
        self._draw_artists()
        # update(), not blit(): blit repaints at once, and with napari's OpenGL canvas in the
        # window every repaint recomposes the whole window; update() lets Qt join the three
        # canvases (and whatever else changed) into one composition
        self.canvas.update()
        return False

    def save(self, path: Path, dpi: int = 150) -> Path:
        """PNG with every artist (animated ones are skipped by savefig unless switched off)."""
        for artist in self.artists:
            artist.set_animated(False)
        try:
            self.figure.savefig(path, format="png", dpi=dpi, facecolor=self.figure.get_facecolor())
        finally:
            for artist in self.artists:
                artist.set_animated(True)
        return path


#: Default first time of the droplet fit (1/gamma t0): log log t needs t > 1.
FIT_FROM_DEFAULT = 1.5


class LivePlots(QWidget):
    """Three canvases in a row plus the "Fit psi" button and its result."""

    def __init__(self, theme: str = "dark", r_min: float = 0.5, r_max: float | None = None) -> None:
        super().__init__()
        self.colours = theme_colours(theme)
        self.r_min, self.r_max = r_min, r_max
        self.pending = None
        self.snapshot = None
        self.fit = None
        self.corr = BlitPlot(self.colours, "Spin correlation C(r, t)", "r (ell)", "C(r, t)")
        self.xi = BlitPlot(self.colours, "Correlation length xi(t)", "t (1/gamma t0)", "xi (ell)")
        self.energy = BlitPlot(self.colours, "Energy per spin", "t (1/gamma t0)", "E / N (t0)")
        self.plots = {"correlation": self.corr, "xi": self.xi, "energy": self.energy}
        self._corr_count = -1
        self._corr_lines = self._curve_pool()
        self._clear_corr()
        self._records_drawn = -1
        self._decorations: list = []
        self._decorate_corr()
        self._changes: tuple[dict, ...] = ()
        self._markers: list = []
        c = self.colours
        self.xi_line = self.xi.animate(self.xi.ax.plot([], [], "o-", ms=3, color=c["data"])[0])
        self.fit_line = self.xi.animate(self.xi.ax.plot([], [], "--", color=c["fit"])[0])
        self.energy_line = self.energy.animate(
            self.energy.ax.plot([], [], "-", color=c["energy"])[0]
        )
        self.xi.ax.set_xscale("log")
        self.xi.ax.set_yscale("log")
        self.xi.ax.yaxis.set_major_formatter(ScalarFormatter())
        self.xi.ax.yaxis.set_minor_formatter(NullFormatter())
        self.energy.ax.ticklabel_format(useOffset=False)
        self._initial_limits()

        self.fit_button = QPushButton("Fit psi")
        self.fit_button.setToolTip(
            "Fit the droplet law xi(t) = A (log t)^(1/psi) to the recorded xi from the time "
            "on the right (1/gamma t0); the paper finds psi ~ 1.02 at N = 500."
        )
        self.fit_button.clicked.connect(self.fit_psi)
        self.fit_from = QDoubleSpinBox()
        self.fit_from.setPrefix("from t = ")
        self.fit_from.setDecimals(1)
        self.fit_from.setRange(FIT_FROM_DEFAULT, 1e6)
        self.fit_from.setValue(FIT_FROM_DEFAULT)
        self.fit_from.setToolTip(
            "First time of the droplet fit (1/gamma t0, > 1 since the law has log log t). "
            "xi as PHYSICS.md defines it first falls (the random start spreads |C| over all "
            "r) and grows only once short-range order has formed: start the fit where xi is "
            "smallest to fit the growth alone."
        )
        self.fit_label = QLabel("psi: not fitted")
        canvases = QHBoxLayout()
        for plot in self.plots.values():
            canvases.addWidget(plot.canvas, 1)
        row = QHBoxLayout()
        row.addWidget(self.fit_button)
        row.addWidget(self.fit_from)
        row.addWidget(self.fit_label, 1)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(2, 2, 2, 2)
        layout.addLayout(canvases, 1)
        layout.addLayout(row)

        self._last_flush, self._pending_since = -np.inf, 0.0
        self.timer = QTimer(self)
        self.timer.setInterval(int(1000 / REDRAW_HZ))
        self.timer.timeout.connect(self._flush_waiting)
        self.timer.start()

    def set_theme(self, theme: str) -> None:
        """Follow a new napari theme: recolour the axes, legend and decorations, redraw."""
        self.colours = theme_colours(theme)
        for plot in self.plots.values():
            plot.colours = self.colours
            recolour(plot.ax, self.colours)
            plot.needs_full = True
        for text in self._legend.get_texts():
            text.set_color(self.colours["text"])
        for rank, (line, handle, _) in enumerate(self._legend_rows()):
            line.set_color(curve_colour(self.colours, rank, MAX_CURVES))
            handle.set_color(line.get_color())
        for line, key in ((self.xi_line, "data"), (self.fit_line, "fit"),
                          (self.energy_line, "energy")):  # fmt: skip
            line.set_color(self.colours[key])
        self._decorate_corr(keep_limits=True)
        self._mark_changes(self._changes)
        self._paint(set(), all_full=True)

    def rescale_fonts(self, ratio: float) -> None:
        """Every text `ratio` times larger or smaller (napari's font size changed), redrawn
        in full; the axes make room for it."""
        for plot in self.plots.values():
            rescale_fonts(plot.figure, ratio)
            plot.figure.tight_layout(pad=0.4)
            plot.needs_full = True
        self._paint(set(), all_full=True)

    def _initial_limits(self) -> None:
        if self.r_max is not None:  # the range of the pair bins, before any C(r, t)
            self.corr.ax.set_xlim(0.0, self.r_max)
        self.xi.ax.set_xlim(0.01, 10)
        self.xi.ax.set_ylim(0.5, 3)
        self.energy.ax.set_xlim(0, 1)
        self.energy.ax.set_ylim(-1, 0)
        self._energy_empty = True

    # -------------------------------------------------------------- data

    def reset(self, r_min: float, r_max: float | None = None) -> None:
        """Clear every curve (new system or new spins); r_min, r_max: the pair bins' range."""
        self.r_min, self.r_max = r_min, r_max
        self.pending, self.snapshot, self.fit = None, None, None
        self._corr_count = self._records_drawn = -1
        self._clear_corr()
        self._decorate_corr()
        self._mark_changes(())
        for line in (self.xi_line, self.fit_line, self.energy_line):
            line.set_data([], [])
        self._initial_limits()
        self.fit_label.setText("psi: not fitted")
        for plot in self.plots.values():
            plot.needs_full = True
        self._paint(set(), all_full=True)

    def _curve_pool(self) -> list:
        """MAX_CURVES C(r, t) lines (colour by rank in time) and their legend, made once and
        blitted: a new record only changes data, labels and visibility."""
        lines = []
        for rank in range(MAX_CURVES):
            colour = curve_colour(self.colours, rank, MAX_CURVES)
            (line,) = self.corr.ax.plot([], [], "o-", ms=2, lw=1, color=colour, label=" ")
            lines.append(self.corr.animate(line))
        self._legend = self.corr.ax.legend(
            handles=lines, fontsize=pt(LEGEND_PT), ncol=2, loc="lower right", framealpha=0.3
        )
        for text in self._legend.get_texts():
            text.set_color(self.colours["text"])
        self.corr.animate(self._legend)
        return lines

    def _clear_corr(self) -> None:
        """Hide every curve and the legend (the static decorations stay)."""
        for line, handle, text in self._legend_rows():
            for artist in (line, handle, text):
                artist.set_visible(False)
        self._legend.set_visible(False)

    def _legend_rows(self):
        return zip(self._corr_lines, self._legend.legend_handles, self._legend.get_texts(),
                   strict=True)  # fmt: skip

    def _decorate_corr(self, keep_limits: bool = False) -> None:
        """The forbidden region r < r_min and the zero line (drawn by full redraws only);
        C from -0.1 to 0.1 unless keep_limits."""
        ax, colours = self.corr.ax, self.colours
        for artist in self._decorations:
            artist.remove()
        self._decorations = [
            ax.axvspan(0, self.r_min, color=colours["grid"], alpha=0.6, lw=0),
            ax.text(self.r_min / 2, 0.95, "r < r_min", transform=ax.get_xaxis_transform(),
                    ha="center", va="top", fontsize=pt(NOTE_PT), color=colours["text"]),
            ax.axhline(0, color=colours["text"], lw=0.6, alpha=0.6),
        ]  # fmt: skip
        if not keep_limits:
            ax.set_ylim(-0.1, 0.1)

    def _mark_changes(self, changes: tuple[dict, ...]) -> None:
        """A dotted line on the xi(t) and energy plots where parameters changed mid-run,
        labelled with the new values on the energy plot (drawn by full redraws only)."""
        for artist in self._markers:
            artist.remove()
        self._changes, self._markers = changes, []
        colour = self.colours["fit"]
        for change in changes:
            t = float(change["t"])
            for plot in (self.xi, self.energy):
                self._markers.append(plot.ax.axvline(t, color=colour, lw=0.8, ls=":"))
            self._markers.append(
                self.energy.ax.text(
                    t, 0.97, f" {change_label(change)}", transform=self.energy.ax.get_xaxis_transform(),
                    rotation=90, ha="right", va="top", fontsize=pt(LEGEND_PT), color=colour,
                )
            )  # fmt: skip
        self.xi.needs_full = self.energy.needs_full = True

    def update(self, snapshot) -> bool:
        """Take the latest snapshot: drawn now if the last redraw is 1/REDRAW_HZ s old, else
        kept for the next update (or the timer, if none comes). True if a full draw happened."""
        now = time.perf_counter()
        if self.pending is None:
            self._pending_since = now
        self.pending = snapshot
        return now - self._last_flush >= 1 / REDRAW_HZ and self.flush()

    def _flush_waiting(self) -> None:
        """Timer: draw a snapshot that no update has drawn for 1/REDRAW_HZ s."""
        if self.pending is not None and time.perf_counter() - self._pending_since >= 1 / REDRAW_HZ:
            self.flush()

    def flush(self, force_full: bool = False) -> bool:
        """Redraw now if a new snapshot is pending (force_full: also rebuild the curve set);
        True if a full draw happened."""
        self._last_flush = time.perf_counter()
        snap, self.pending = self.pending, None
        if snap is None and force_full:
            snap = self.snapshot
        changed = set() if snap is None else self._set_data(snap, force_full)
        return self._paint(changed, all_full=force_full)

    def _paint(self, changed: set, all_full: bool = False) -> bool:
        """Blit the changed plots, with at most one full draw per call unless all_full: a full
        draw costs 20-30 ms on an idle CPU and several times that beside the dynamics, so
        three at once would stall the event loop; a waiting one is drawn at the next flush."""
        did_full = False
        for plot in self.plots.values():
            if plot in changed or plot.needs_full:
                did_full |= plot.redraw(allow_full=all_full or not did_full)
        return did_full

    def _set_data(self, snap, force_full: bool) -> set:
        """Put a snapshot into the artists; returns the plots whose data changed (a plot whose
        axes must change gets needs_full)."""
        new_records = force_full or len(snap.record_times) != self._records_drawn
        self.snapshot = snap
        changed = {self.energy}
        if snap.changes != self._changes:
            self._mark_changes(snap.changes)
            changed.add(self.xi)
        if new_records:  # C(r, t) and xi(t) change only when a record is added
            self._records_drawn = len(snap.record_times)
            self.corr.needs_full |= self._draw_corr(snap, force_full)
            ok = (snap.record_times > 0) & np.isfinite(snap.xi) & (snap.xi > 0)
            self.xi_line.set_data(snap.record_times[ok], snap.xi[ok])
            full = force_full
            if ok.any():
                t, x = snap.record_times[ok], snap.xi[ok]
                full |= self._grow(self.xi.ax, "x", t.min(), t.max(), log=True)
                full |= self._grow(self.xi.ax, "y", x.min(), x.max(), log=True)
            self.xi.needs_full |= full
            changed |= {self.corr, self.xi}
        self.energy_line.set_data(snap.energy_times, snap.energy_history)
        full = force_full
        if len(snap.energy_times):
            e = np.asarray(snap.energy_history)
            if self._energy_empty:  # first data: fit the range to it
                self._energy_empty = False
                self.energy.ax.set_xlim(0, max(snap.energy_times.max(), 1e-3) * 2)
                self.energy.ax.set_ylim(e.min() - 1e-3, e.max() + 1e-3)
                full = True
            if self._grow(self.energy.ax, "x", 0.0, float(snap.energy_times.max())):
                self.energy.ax.set_xlim(left=0.0)  # time starts at 0
                full = True
            full |= self._grow(self.energy.ax, "y", float(e.min()), float(e.max()))
        self.energy.needs_full |= full
        return changed

    @staticmethod
    def _grow(ax, axis: str, lo: float, hi: float, log: bool = False) -> bool:
        """Grow an axis to hold [lo, hi]; x (time, except in C(r, t)) by TIME_MARGIN."""
        get, set_ = (ax.get_xlim, ax.set_xlim) if axis == "x" else (ax.get_ylim, ax.set_ylim)
        new = grown(get(), float(lo), float(hi), log, TIME_MARGIN if axis == "x" else GROW_MARGIN)
        if new is not None:
            set_(*new)
        return new is not None

    def _draw_corr(self, snap, force: bool = False) -> bool:
        """Update the C(r, t) curves (and their legend: blitted too); True when a full redraw is
        needed (the first data or a range that grew)."""
        times, corr = snap.record_times, snap.corr
        ax = self.corr.ax
        centres = 0.5 * (snap.r_edges[1:] + snap.r_edges[:-1])
        full = force
        if ax.get_xlim() != (0.0, float(snap.r_edges[-1])):
            ax.set_xlim(0.0, float(snap.r_edges[-1]))
            full = True
        if len(times) != self._corr_count:  # new record times: a new pick of curves
            self._corr_count = len(times)
            self._clear_corr()
            picks = self._picks(times)[-MAX_CURVES:]
            # the latest time takes the brightest colour: picks fill the last slots
            rows = list(self._legend_rows())[MAX_CURVES - len(picks) :]
            for k, (line, handle, text) in zip(picks, rows, strict=True):
                line.k = k
                text.set_text(f"t = {times[k]:.3g}")
                for artist in (line, handle, text):
                    artist.set_visible(True)
            self._legend.set_visible(bool(len(picks)))
        shown_lines = [line for line in self._corr_lines if line.get_visible()]
        for line in shown_lines:
            line.set_data(centres, corr[line.k])
        if shown_lines:
            shown = corr[[line.k for line in shown_lines]]
            full |= self._grow(ax, "y", min(float(shown.min()), 0.0), max(float(shown.max()), 0.0))
        return full

    @staticmethod
    def _picks(times: np.ndarray) -> np.ndarray:
        if (times > 0).sum() == 0:
            return np.arange(len(times))
        return pick_times(times, MAX_CURVES)

    # -------------------------------------------------------------- droplet fit

    def fit_psi(self) -> None:
        """Overlay the droplet fit (log t)^(1/psi) and print psi +- its standard error."""
        self.flush(force_full=True)
        snap = self.snapshot
        try:
            if snap is None:
                raise ValueError("no data yet: run the dynamics first")
            fit = fit_droplet(snap.record_times, snap.xi, t_min=self.fit_from.value())
        except ValueError as err:
            self.fit = None
            self.fit_line.set_data([], [])
            self.fit_label.setText(f"psi: {err}")
            self.xi.redraw()
            return
        self.fit = fit
        t = np.logspace(np.log10(fit.t_min), np.log10(fit.t_max), 100)
        self.fit_line.set_data(t, fit.curve(t))
        self.fit_label.setText(
            f"psi = {fit.psi:.3f} +- {fit.psi_err:.3f}  (xi = {fit.amplitude:.3g} (log t)^(1/psi), "
            f"{fit.n_points} points, t in [{fit.t_min:.3g}, {fit.t_max:.3g}])"
        )
        self._grow(self.xi.ax, "y", float(fit.curve(t).min()), float(fit.curve(t).max()), log=True)
        self.xi.redraw(full=True)

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

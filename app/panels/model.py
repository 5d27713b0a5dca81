"""Model panel: the ML model's card, Load..., parameter-mismatch warnings, J(R) of the pairwise baseline."""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import numpy as np
from magicgui.widgets import ComboBox, Container, FileEdit, Label, PushButton

from app.jobs import Job, say, wrap
from core.modelfile import load_model
from core.paths import PAIRWISE_MODEL, shipped_models

#: Longest card value shown whole; longer ones (a dataset's sha256) are cut, so that one
#: unbreakable word does not widen the panel beyond the dock.
CARD_VALUE_CHARS = 24


def short(value) -> str:
    """A card value as text, cut to CARD_VALUE_CHARS with an ellipsis."""
    text = str(value)
    return text if len(text) <= CARD_VALUE_CHARS else text[: CARD_VALUE_CHARS - 1] + "…"


def card_text(session) -> str:
    """Human-readable model card: architecture, descriptor, training parameters, held-out error."""
    model, card = session.model, session.card
    if model is None or card is None:
        return session.model_message or "No ML model available: the ML engine is disabled."
    spec = model.spec
    lines = [
        f"<b>{session.model_path.name}</b>",
        f"Architecture: {model.arch.describe()}",
        f"Descriptor: {spec.n_features} features, Rc = {spec.rc:g} ell"
        + (f" (triplets {spec.rc3:g} ell)" if spec.rc3 < spec.rc else "")
        + f", w = {spec.w:g} ell",
        "Trained for: "
        + ", ".join(f"{k} = {v:g}" for k, v in card.physical.items() if isinstance(v, float | int)),
    ]
    training = {k: v for k, v in card.training.items() if isinstance(v, int | float | str)}
    if training:
        lines.append(
            "Training: " + ", ".join(f"{k} = {short(v)}" for k, v in list(training.items())[:6])
        )
    metrics = {k: v for k, v in card.metrics.items() if isinstance(v, int | float)}
    if metrics:
        lines.append("Held-out: " + ", ".join(f"{k} = {v:.3g}" for k, v in metrics.items()))
    if session.model_message.startswith("Could not"):
        lines.insert(0, f"<span style='color:#ff6b6b'>⚠ {session.model_message}</span>")
    for w in [*session.warnings, session.model_note]:
        if w:
            lines.append(f"<span style='color:#ffb74d'>⚠ {w}</span>")
    return "<br>".join(lines)


def shipped_baseline(path: Path = PAIRWISE_MODEL):
    """(model, card, path) of the shipped pairwise baseline; None when it cannot be read."""
    try:
        model, card = load_model(path)
    except Exception:  # a missing or broken file: the panel says so instead of drawing
        return None
    return (model, card, path) if model.arch.kind == "pairwise" else None


def exchange_note(session, baseline) -> str:
    """What the J(R) plot shows, with the baseline's training parameters where they differ
    from the current system's."""
    if baseline is None:
        return f"No pairwise baseline ({PAIRWISE_MODEL.name} not readable): J(R) not shown."
    _, card, path = baseline
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        differ = session.sim.model_warnings(card.physical)
    lines = [
        f"Effective exchange of the pairwise baseline {path.name}: "
        "E = sum_(i<j) J(R_ij) S_i.S_j, so J < 0 aligns a pair, J > 0 anti-aligns it."
    ]
    lines += [f"<span style='color:#ffb74d'>⚠ {w}</span>" for w in differ]
    return "<br>".join(lines)


class ModelPanel(Container):
    """Shows the loaded model or says that none is available; loads another file; draws the
    effective exchange J(R) of the pairwise baseline."""

    def __init__(self, session) -> None:
        self.session = session
        self.card = Label(value="")
        self.shipped = ComboBox(
            label="Shipped model", choices=[p.name for p in shipped_models()], nullable=True,
            value=None, tooltip="Load one of the models that come with sdglass (their cards: "
            "assets/models/default.md): default, fast (shorter triplet cutoff, 1.7x faster), ...",
        )  # fmt: skip
        self.path = FileEdit(
            label="Model file", mode="r", filter="*.safetensors",
            tooltip="An sdglass model file (safetensors + JSON card), e.g. from `sdglass train`.",
        )  # fmt: skip
        self.load_button = PushButton(
            text="Load...",
            tooltip="Load the chosen model file (in the background: a run goes on meanwhile).",
        )
        self.message = Label(value="")
        self.job: Job | None = None  # a model being read
        self.exchange_label = Label(value="")
        for label in (self.card, self.message, self.exchange_label):
            wrap(label)
        self.exchange = None
        self._shipped_baseline = None
        super().__init__(
            widgets=[
                self.card,
                self.shipped,
                self.path,
                self.load_button,
                self.message,
                self.exchange_label,
            ],
            label="Model",
        )
        self.load_button.clicked.connect(lambda: self.load())
        self.shipped.changed.connect(self._load_shipped)
        session.model_changed.connect(self.refresh)
        session.system_changed.connect(self.refresh)
        session.font_scaled.connect(lambda ratio: self.refresh())  # J(R) drawn anew
        session.viewer.events.theme.connect(lambda event: self.refresh())
        self.refresh()

    def load(self, path=None) -> bool:
        """Load a model file (default: the chosen one) in a worker thread; False when a load
        is already under way. A file that is not a model gives an error notification and
        the model in use stays. With the ML engine, the new model's descriptor is set up in
        the worker too (seconds at large N), and a run goes on meanwhile."""
        if self.job is not None:
            return False
        path = Path(path or self.path.value)
        started = time.perf_counter()
        self.load_button.enabled = False

        def done(loaded) -> None:
            if self.session.adopt_model(loaded):
                say(self.message, f"Loaded {path.name} in {time.perf_counter() - started:.1f} s")
            else:
                say(self.message, "")

        def fail(err) -> None:
            say(self.message, "")
            self.session.model_failed(err)

        self.job = Job(
            lambda: self.session.read_model(path), done, fail, self._finished, self.message,
            f"Loading {path.name}", self.session.closing,
        )  # fmt: skip
        return True

    def _load_shipped(self, name) -> None:
        if name is not None and not self.load(
            next(p for p in shipped_models() if p.name == name)
        ):  # fmt: skip
            self._show_shipped()  # a load is under way: this choice is not taken

    def _show_shipped(self) -> None:
        """The shipped-model choice names the model in use (blank for another file); loads
        nothing."""
        path = self.session.model_path
        shipped = path is not None and Path(path).resolve() in shipped_models()
        with self.shipped.changed.blocked():
            self.shipped.value = Path(path).name if shipped else None

    def _finished(self) -> None:
        self.job = None
        self.load_button.enabled = True
        self._show_shipped()  # after a failed load too: the model in use stayed

    def refresh(self) -> None:
        self.card.value = card_text(self.session)
        if self.session.model_path is not None:
            self.path.value = self.session.model_path
        self._show_shipped()
        baseline = self._baseline()
        self.exchange_label.value = exchange_note(self.session, baseline)
        self._exchange_plot(baseline)

    def _baseline(self):
        """(model, card, path) whose J(R) is drawn: the loaded model when it is pairwise,
        else the shipped baseline (read once); None when neither is available."""
        loaded = self.session.model
        if loaded is not None and loaded.arch.kind == "pairwise":
            return loaded, self.session.card, self.session.model_path
        if self._shipped_baseline is None:
            self._shipped_baseline = shipped_baseline() or False
        return self._shipped_baseline or None

    def _exchange_plot(self, baseline) -> None:
        """Small J(R) plot (what the electrons do, in one curve), r < r_min shaded."""
        if baseline is None:
            if self.exchange is not None:
                self.exchange.setVisible(False)
            return
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        from app.plots import NOTE_PT, pt, style_axes, theme_colours

        c = theme_colours(str(self.session.viewer.theme))
        if self.exchange is None:
            fig = Figure(figsize=(3, 1.6), facecolor=c["background"])
            self.exchange = FigureCanvasQTAgg(fig)
            self.exchange.setMinimumHeight(150)
            self.native.layout().addWidget(self.exchange)
        model = baseline[0]
        r_min = self.session.sim.system_config.r_min
        fig = self.exchange.figure
        fig.clear()
        ax = fig.add_subplot()
        r = np.linspace(0.0, model.spec.rc, 300)
        ax.plot(r, model.exchange(r), color=c["data"])
        ax.axhline(0, color=c["text"], lw=0.5)
        ax.axvspan(0, r_min, color=c["grid"], alpha=0.6, lw=0)
        ax.text(r_min / 2, 0.95, "r < r_min", transform=ax.get_xaxis_transform(),
                ha="center", va="top", fontsize=pt(NOTE_PT), color=c["text"])  # fmt: skip
        ax.set_xlim(0, model.spec.rc)
        style_axes(ax, c, "Effective exchange J(R)", "R (ell)", "J(R) (t0)")
        fig.tight_layout()
        self.exchange.setVisible(True)
        self.exchange.draw_idle()

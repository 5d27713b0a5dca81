"""Model panel: the ML model's card, Load..., parameter-mismatch warnings, J(R) of the pairwise baseline."""

from __future__ import annotations

import numpy as np
from magicgui.widgets import Container, FileEdit, Label, PushButton


def card_text(session) -> str:
    """Human-readable model card: architecture, descriptor, training parameters, held-out error."""
    model, card = session.model, session.card
    if model is None or card is None:
        return session.model_message or "No ML model available: the ML engine is disabled."
    spec = model.spec
    lines = [
        f"<b>{session.model_path.name}</b>",
        f"Architecture: {model.arch.describe()}",
        f"Descriptor: {spec.n_features} features, Rc = {spec.rc:g} ell, w = {spec.w:g} ell",
        "Trained for: "
        + ", ".join(f"{k} = {v:g}" for k, v in card.physical.items() if isinstance(v, float | int)),
    ]
    training = {k: v for k, v in card.training.items() if isinstance(v, int | float | str)}
    if training:
        lines.append("Training: " + ", ".join(f"{k} = {v}" for k, v in list(training.items())[:6]))
    metrics = {k: v for k, v in card.metrics.items() if isinstance(v, int | float)}
    if metrics:
        lines.append("Held-out: " + ", ".join(f"{k} = {v:.3g}" for k, v in metrics.items()))
    if session.model_message.startswith("Could not"):
        lines.insert(0, f"<span style='color:#ff6b6b'>⚠ {session.model_message}</span>")
    for w in session.warnings:
        lines.append(f"<span style='color:#ffb74d'>⚠ {w}</span>")
    return "<br>".join(lines)


class ModelPanel(Container):
    """Shows the loaded model or says that none is available; loads another file."""

    def __init__(self, session) -> None:
        self.session = session
        self.card = Label(value="")
        self.card.native.setWordWrap(True)
        self.path = FileEdit(
            label="Model file", mode="r", filter="*.safetensors",
            tooltip="An sdglass model file (safetensors + JSON card), e.g. from `sdglass train`.",
        )  # fmt: skip
        self.load_button = PushButton(text="Load...", tooltip="Load the chosen model file.")
        self.exchange = None
        super().__init__(widgets=[self.card, self.path, self.load_button], label="Model")
        self.load_button.clicked.connect(self.load)
        session.model_changed.connect(self.refresh)
        session.system_changed.connect(self.refresh)
        self.refresh()

    def load(self, path=None) -> bool:
        """Load a model file; a corrupted file gives an error notification and leaves ED on."""
        return self.session.try_load_model(path or self.path.value)

    def refresh(self) -> None:
        self.card.value = card_text(self.session)
        self._exchange_plot()

    def _exchange_plot(self) -> None:
        """Small J(R) plot for the pairwise baseline (what the electrons do, in one curve)."""
        model = self.session.model
        if model is None or model.arch.kind != "pairwise":
            if self.exchange is not None:
                self.exchange.setVisible(False)
            return
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        from app.plots import style_axes, theme_colours

        c = theme_colours(str(self.session.viewer.theme))
        if self.exchange is None:
            fig = Figure(figsize=(3, 1.8), facecolor=c["background"])
            self.exchange = FigureCanvasQTAgg(fig)
            self.exchange.setMinimumHeight(150)
            self.native.layout().addWidget(self.exchange)
        fig = self.exchange.figure
        fig.clear()
        ax = fig.add_subplot()
        r = np.linspace(self.session.sim.system_config.r_min, model.spec.rc, 200)
        ax.plot(r, model.exchange(r), color="#4fc3f7")
        ax.axhline(0, color=c["text"], lw=0.5)
        style_axes(ax, c, "", "R (ell)", "J(R) (t0)")
        fig.tight_layout()
        self.exchange.setVisible(True)
        self.exchange.draw_idle()

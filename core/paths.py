"""Where sdglass finds its shipped assets (no heavy imports: the CLI reads this at start-up)."""

from pathlib import Path

ASSETS = Path(__file__).resolve().parent.parent / "assets"

#: The model sdglass uses unless told otherwise, trained by the project's own commands (its
#: card: default.md, "A faster model"). Since 2026-11-28 the faster of the two shipped
#: models; default.safetensors, the default before, made the figures in docs/.
DEFAULT_MODEL = ASSETS / "models" / "fast.safetensors"

#: The shipped pairwise baseline E = sum_{i<j} J(R_ij) S_i.S_j (the app draws its J(R)).
PAIRWISE_MODEL = ASSETS / "models" / "pairwise.safetensors"


def shipped_models() -> list[Path]:
    """Every model file shipped in assets/models, by name."""
    return sorted(DEFAULT_MODEL.parent.glob("*.safetensors"))


#: A state to start a demonstration from: the paper's system (N = 100) after an ML-LLG
#: quench to t = 300, 8 replicas (assets/examples/README.md says how it was made).
EXAMPLE_STATE = ASSETS / "examples" / "quenched-n100-t300.traj.h5"

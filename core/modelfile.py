"""Model files: safetensors weights with JSON metadata; strict loading, never unpickling.

Layout: one safetensors file whose tensors are the model's state dict
(network weights, feature_mean, feature_scale, energy_offset) and whose
header metadata holds one key, ``sdglass``, a JSON object:

    format          "sdglass-model"
    format_version  1
    descriptor      DescriptorSpec.to_dict() (includes "triplet_sum": "ordered j != k")
    architecture    {"hidden": [...], "activation": ..., "kind": "mlp" | "pairwise"}
    physical        training parameters: t0, ell, J, filling, kT_e, density
    training        provenance: dataset file and sha256, seeds, epochs, sdglass version, ...
    metrics         held-out errors (rmse_hperp, ...)

Loading checks the format, rebuilds the model from the metadata and requires
exactly its tensor names, shapes and finite values; every failure is one
FileFormatError naming the file and the problem.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from core import __version__
from core.config import ConfigError
from core.descriptor import DescriptorSpec
from core.errors import FileFormatError
from core.io import atomic_output
from core.model import Architecture, EnergyModel

MODEL_FORMAT = "sdglass-model"
MODEL_FORMAT_VERSION = 1


@dataclass
class ModelCard:
    """Everything about a model except its weights (the JSON metadata of the file)."""

    physical: dict[str, float]
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)


def save_model(path: str | Path, model: EnergyModel, card: ModelCard, force: bool = False) -> Path:
    """Write weights + metadata atomically (safetensors)."""
    meta = {
        "format": MODEL_FORMAT,
        "format_version": MODEL_FORMAT_VERSION,
        "descriptor": model.spec.to_dict(),
        "architecture": model.arch.to_dict(),
        "physical": card.physical,
        "training": {"sdglass_version": __version__, **card.training},
        "metrics": card.metrics,
    }
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_output(path, force) as tmp:
        save_file(tensors, str(tmp), metadata={"sdglass": json.dumps(meta)})
    return Path(path)


def load_model(path: str | Path) -> tuple[EnergyModel, ModelCard]:
    """Read a model file written by save_model; FileFormatError on anything else."""
    path = Path(path)
    if not path.is_file():
        raise FileFormatError(f"no such model file: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise FileFormatError(
            f"{path} is not a readable safetensors model file (truncated or corrupted?): "
            f"{str(err).splitlines()[0] if str(err) else type(err).__name__}"
        ) from None
    if "sdglass" not in header:
        raise FileFormatError(f"{path} has no sdglass metadata: not an sdglass model file")
    try:
        meta = json.loads(header["sdglass"])
    except json.JSONDecodeError as err:
        raise FileFormatError(f"{path}: corrupted sdglass metadata ({err})") from None
    if not isinstance(meta, dict) or meta.get("format") != MODEL_FORMAT:
        raise FileFormatError(f"{path} is not an {MODEL_FORMAT} file")
    if meta.get("format_version") != MODEL_FORMAT_VERSION:
        raise FileFormatError(
            f"{path}: unsupported model format_version {meta.get('format_version')!r} "
            f"(this sdglass reads {MODEL_FORMAT_VERSION})"
        )
    missing = [k for k in ("descriptor", "architecture", "physical") if k not in meta]
    if missing:
        raise FileFormatError(f"{path}: model metadata lacks {', '.join(missing)}")
    try:
        model = EnergyModel(
            DescriptorSpec.from_dict(meta["descriptor"]),
            Architecture.from_dict(meta["architecture"]),
        )
    except (ConfigError, KeyError, TypeError, ValueError) as err:
        raise FileFormatError(f"{path}: invalid model metadata ({err})") from None
    expected = model.state_dict()
    if set(tensors) != set(expected):
        lost = sorted(set(expected) - set(tensors))
        extra = sorted(set(tensors) - set(expected))
        raise FileFormatError(
            f"{path}: tensor names do not match the architecture (missing {lost}, unexpected {extra})"
        )
    for name, tensor in tensors.items():
        if tensor.shape != expected[name].shape:
            raise FileFormatError(
                f"{path}: tensor {name} has shape {tuple(tensor.shape)}, "
                f"expected {tuple(expected[name].shape)}"
            )
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise FileFormatError(f"{path}: tensor {name} contains NaN or inf")
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in tensors.items()})
    card = ModelCard(
        physical=dict(meta["physical"]),
        training=dict(meta.get("training", {})),
        metrics=dict(meta.get("metrics", {})),
    )
    return model, card

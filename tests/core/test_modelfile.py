import json

import pytest
import torch
from safetensors.torch import save_file

from core.descriptor import DescriptorSpec
from core.errors import FileFormatError, OutputExistsError
from core.model import Architecture, EnergyModel
from core.modelfile import ModelCard, load_model, save_model

SPEC = DescriptorSpec(rc=1.6, radii=(0.6, 0.9, 1.2), w=0.2, d_prime=(1.0,))
CARD = ModelCard(
    physical={"J": 6.0, "density": 0.8}, training={"epochs": 3}, metrics={"rmse_hperp": 1e-3}
)


def read_meta(path):
    """The sdglass JSON of a safetensors header, read independently of core.modelfile."""
    data = path.read_bytes()
    header = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])
    return json.loads(header["__metadata__"]["sdglass"])


@pytest.fixture
def model_file(tmp_path):
    torch.manual_seed(0)
    model = EnergyModel(SPEC, Architecture.parse("8,4"))
    for p in model.net.parameters():
        torch.nn.init.normal_(p)
    model.energy_offset.fill_(-6.08)
    path = save_model(tmp_path / "m.safetensors", model, CARD)
    return path, model


def test_round_trip_keeps_weights_and_card(model_file):
    path, model = model_file
    loaded, card = load_model(path)
    for (k, a), (k2, b) in zip(
        model.state_dict().items(), loaded.state_dict().items(), strict=True
    ):
        assert k == k2
        torch.testing.assert_close(a, b)
    assert loaded.spec == SPEC and loaded.arch == model.arch
    assert card.physical == CARD.physical and card.metrics == CARD.metrics
    assert card.training["epochs"] == 3 and "sdglass_version" in card.training
    raw = path.read_bytes()  # safetensors: 8-byte little-endian header length, JSON header
    header = json.loads(raw[8 : 8 + int.from_bytes(raw[:8], "little")])
    meta = json.loads(header["__metadata__"]["sdglass"])
    assert meta["descriptor"]["triplet_sum"] == "ordered j != k"


def test_refuses_overwrite(model_file):
    path, model = model_file
    with pytest.raises(OutputExistsError):
        save_model(path, model, CARD)


def test_truncated_file(model_file):
    path, _ = model_file
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(FileFormatError, match="truncated or corrupted"):
        load_model(path)


def test_corrupted_header(model_file):
    path, _ = model_file
    path.write_bytes(b"\x00" * 8 + b"garbage")
    with pytest.raises(FileFormatError):
        load_model(path)


def test_foreign_safetensors_file(tmp_path):
    path = tmp_path / "other.safetensors"
    save_file({"weight": torch.zeros(3)}, str(path), metadata={"producer": "someone else"})
    with pytest.raises(FileFormatError, match="not an sdglass model"):
        load_model(path)


def test_missing_file_and_text_file(tmp_path):
    with pytest.raises(FileFormatError, match="no such model file"):
        load_model(tmp_path / "none.safetensors")
    text = tmp_path / "notes.safetensors"
    text.write_text("hello")
    with pytest.raises(FileFormatError):
        load_model(text)


def test_shape_mismatch_is_named(model_file, tmp_path):
    path, model = model_file
    tensors = {k: v.clone() for k, v in model.state_dict().items()}
    tensors["net.0.weight"] = torch.zeros(5, 5)
    meta = read_meta(path)
    bad = tmp_path / "bad.safetensors"
    save_file(tensors, str(bad), metadata={"sdglass": json.dumps(meta)})
    with pytest.raises(FileFormatError, match=r"net\.0\.weight has shape"):
        load_model(bad)

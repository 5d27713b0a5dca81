"""`sdglass check`: the device against the CPU (core.devicecheck).

A CPU-only machine has no second device, so a device that computes wrong fields
is played by "cpu:0" with a field provider that adds an error there.
"""

import pytest

import core.devicecheck as devicecheck
import core.simulation as simulation
from core.devicecheck import Check, check_device, format_report
from core.electrons import EDSolver
from core.model import MLFieldProvider
from core.modelfile import load_model
from core.paths import DEFAULT_MODEL

from .cli_helpers import run

FAULTY = "cpu:0"


@pytest.fixture(scope="module")
def model():
    return load_model(DEFAULT_MODEL)[0]


def _faulty(base, error):
    class Faulty(base):
        """Adds `error` t0 to every field component when built for the FAULTY device."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            device = kwargs.get("device", args[2] if len(args) > 2 else "cpu")
            self.offset = error if str(device) == FAULTY else 0.0

        def fields(self, spins):
            h, e = super().fields(spins)
            return h + self.offset, e

        def to(self, device):  # an ML provider moved there by a device switch
            moved = super().to(device)
            moved.offset = error if str(device) == FAULTY else 0.0
            return moved

    return Faulty


def test_the_cpu_agrees_with_itself(model):
    checks, timings = check_device("cpu", model, n=100, steps=3)
    assert all(c.passed for c in checks), format_report("cpu", checks, timings)
    by_name = {c.name: c.difference for c in checks}
    assert by_name["ED fields H (eigh, float64)"] == 0.0
    assert 0 < by_name["ED fields H (purification, float64)"] < 1e-12  # another algorithm
    assert by_name["ML fields H (float32)"] == 0.0
    for engine in ("ED", "ML"):
        assert by_name[f"app dynamics, {engine}, 3 steps: spins S"] == 0.0
        assert by_name[f"app dynamics, {engine}, 3 steps: | |S| - 1 |"] < 1e-12
        assert by_name[f"app dynamics, {engine}, 3 steps: spins S, switched from cpu midway"] == 0
    assert [t.name for t in timings] == [
        "app dynamics, ED, N = 100, B = 2",
        "app dynamics, ML, N = 100, B = 2",
    ]
    assert all(t.device_rate > 0 and t.cpu_rate > 0 for t in timings)


def test_wrong_ml_fields_on_the_device_fail_and_ed_still_passes(model, monkeypatch):
    faulty = _faulty(MLFieldProvider, 1e-2)
    monkeypatch.setattr(devicecheck, "MLFieldProvider", faulty)
    monkeypatch.setattr(simulation, "MLFieldProvider", faulty)
    checks, _ = check_device(FAULTY, model, n=100, steps=3)
    failed = {c.name for c in checks if not c.passed}
    assert "ML fields H (float32)" in failed
    assert "app dynamics, ML, 3 steps: spins S" in failed  # the error moved the spins
    assert "app dynamics, ML, 3 steps: spins S, switched from cpu midway" in failed
    assert not any(name.startswith(("ED", "app dynamics, ED")) for name in failed)
    ml = next(c for c in checks if c.name == "ML fields H (float32)")
    assert ml.difference == pytest.approx(1e-2, rel=1e-3)


def test_an_error_below_the_tolerance_passes_and_one_above_fails(model, monkeypatch):
    for error, passes in ((1e-10, True), (1e-8, False)):
        monkeypatch.setattr(devicecheck, "EDSolver", _faulty(EDSolver, error))
        checks = devicecheck.field_checks(FAULTY, model, n=100)
        ed = [c for c in checks if c.name.startswith("ED fields")]
        assert len(ed) == 2 and all(c.passed == passes for c in ed)


def test_a_nan_never_passes():
    assert not Check("x", float("nan"), 1.0).passed
    assert Check("x", 0.5, 1.0).passed and not Check("x", 2.0, 1.0).passed


def test_cli_prints_the_table_and_exits_1_on_a_failed_check(capsys, monkeypatch):
    code, out, _ = run(capsys, "check", "--device", "cpu", "--steps", "2")
    assert code == 0
    assert "cpu: all 16 checks agree with the CPU" in out
    assert out.count(" ok\n") == 16

    def failing(device, model, n, steps, on_stage):
        return [Check("ML fields H (float32)", 1.0, 2e-5, "t0")], []

    monkeypatch.setattr(devicecheck, "check_device", failing)
    code, out, _ = run(capsys, "check", "--device", "cpu")
    assert code == 1
    assert "FAIL" in out and "cpu: 1 of 1 checks FAILED" in out


def test_cli_refuses_cuda_without_a_gpu(capsys, monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    code, _, err = run(capsys, "check", "--device", "cuda")
    assert code == 2 and "no CUDA device is available" in err

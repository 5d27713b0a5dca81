import time

import pytest

from core.bench import (
    batch_gains,
    format_summary,
    format_table,
    speedup_summary,
    speedups,
    time_call,
)


def test_time_call_repeats_until_both_the_count_and_the_time_are_reached():
    calls = []

    def fn():
        calls.append(1)
        time.sleep(0.01)

    best = time_call(fn, repeats=2, min_time=0.08)
    assert len(calls) >= 1 + 8  # warm-up, then at least 0.08 s of 0.01 s calls
    assert 0.01 <= best < 0.05
    calls.clear()
    time_call(fn, repeats=3, min_time=0.0)
    assert len(calls) == 4


def test_speedups_pair_ml_and_ed_rows_of_the_same_size():
    rows = [
        {"engine": "ml", "n": 500, "batch": 1, "seconds_per_eval": 0.01, "seconds_per_step": 0.02},
        {"engine": "ml", "n": 2000, "batch": 1, "seconds_per_eval": 0.04, "seconds_per_step": 0.1},
        {"engine": "ed", "n": 500, "batch": 1, "seconds_per_eval": 0.3, "seconds_per_step": 0.7},
    ]
    (s,) = speedups(rows)
    assert s["n"] == 500
    assert s["eval"] == pytest.approx(30) and s["step"] == pytest.approx(35)
    assert "30.0x faster than ED per evaluation, 35.0x per step, at N = 500" in format_table(rows)


def test_batch_gains_compare_spin_steps_per_second_with_one_replica():
    rows = [
        {"engine": "ml", "n": 500, "batch": 1, "seconds_per_eval": 0.01, "seconds_per_step": 0.02},
        {"engine": "ml", "n": 500, "batch": 20, "seconds_per_eval": 0.03, "seconds_per_step": 0.08},
    ]
    (g,) = batch_gains(rows)
    assert (g["n"], g["batch"]) == (500, 20)
    assert g["throughput_gain"] == pytest.approx(20 * 0.02 / 0.08)
    assert "B = 20 replicas in one call: 5.0x the spin-steps per second" in format_table(rows)


def test_ed_rows_name_their_method_and_ml_is_compared_with_the_faster_ed():
    from core.bench import bench_ed

    rows = bench_ed([20], repeats=1, min_time=0.0, batches=[1, 3], methods=["eigh", "purification"])
    assert [(r["method"], r["batch"]) for r in rows] == [
        ("eigh", 1), ("eigh", 3), ("purification", 1), ("purification", 3)
    ]  # fmt: skip
    assert "ed-pur" in format_table(rows)
    ml = {"engine": "ml", "n": 20, "batch": 1, "seconds_per_eval": 1e-4, "seconds_per_step": 2e-4}
    slow = {**rows[0], "seconds_per_step": 1.0}
    fast = {**rows[2], "seconds_per_step": 0.1}
    (s,) = speedups([ml, slow, fast])
    assert s["step"] == pytest.approx(0.1 / 2e-4)


def test_speedup_summary_gives_the_spread_over_rounds():
    def round_of(ml_step: float, ed_step: float) -> list[dict]:
        common = {"n": 500, "batch": 1, "seconds_per_eval": 1.0}
        return [
            {**common, "engine": "ml", "seconds_per_step": ml_step},
            {**common, "engine": "ed", "seconds_per_step": ed_step},
        ]

    (s,) = speedup_summary([round_of(0.01, 0.6), round_of(0.008, 0.7), round_of(0.006, 0.6)])
    assert s["rounds"] == 3
    assert (s["step_min"], s["step_median"], s["step_max"]) == pytest.approx((60, 87.5, 100))
    assert "60.0x to 100.0x faster than ED per step (median 87.5x)" in format_summary([s])


def test_bench_ml_skips_a_batch_that_cannot_fit_in_memory(monkeypatch):
    from core import memory
    from core.bench import bench_ml, paper_systems
    from core.descriptor import DescriptorSpec
    from core.errors import MemoryLimitError
    from core.model import Architecture, EnergyModel, MLFieldProvider

    spec = DescriptorSpec(rc=1.6, radii=(0.6, 1.2), w=0.3, d_prime=(1.0,), triplet_rc=1.2)
    model = EnergyModel(spec, Architecture.parse("8"))
    [(_, system)] = paper_systems([30])  # the system bench_ml times
    need = MLFieldProvider(model, system).working_bytes
    free = 0.5 * (need(8) + need(12))  # B = 1 and 8 fit, 12 does not (the set-up fits)
    monkeypatch.setattr(memory, "available_bytes", lambda device: free)
    skipped = []
    rows = bench_ml(
        model, [30], repeats=1, batches=[1, 12, 8], min_time=0,
        on_skip=lambda n, b, message: skipped.append((n, b, message)),
    )  # fmt: skip
    assert [(r["n"], r["batch"]) for r in rows] == [(30, 1), (30, 8)]
    assert all(r["seconds_per_step"] > 0 for r in rows)
    assert [(n, b) for n, b, _ in skipped] == [(30, 12)]
    assert skipped[0][2].startswith("ML fields of 12 replicas at N = 30 needs about")
    with pytest.raises(MemoryLimitError):  # without on_skip the refusal stops the benchmark
        bench_ml(model, [30], repeats=1, batches=[12], min_time=0)

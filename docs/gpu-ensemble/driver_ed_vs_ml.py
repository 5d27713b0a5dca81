"""ED-LLG against ML-LLG on one N = 100 configuration (Fig. 4 seeds) to the latest t that fits."""

import json
import os
import sys
import time

from core.config import LLGConfig, SystemConfig
from core.io import write_trajectory
from core.quench import QuenchConfig, run_quench, to_trajectory

OUT = os.environ["OUT"]


def run(engine, t_max, name):
    qc = QuenchConfig(
        system=SystemConfig(n=100, seed=5000),
        llg=LLGConfig(seed=5000),
        engine=engine,
        configs=1,
        replicas=20,
        t_max=t_max,
        n_records=40,
        device="cuda",
        model_path="assets/models/default.safetensors" if engine == "ml" else None,
    )
    marks = []
    start = time.perf_counter()
    res = run_quench(qc, on_steps=lambda k: marks.append(time.perf_counter()))
    rate = (len(marks) - 1) / (marks[-1] - marks[0])
    if name:
        write_trajectory(f"{OUT}/{name}.h5", to_trajectory(res))
    info = dict(
        name=name,
        engine=engine,
        t_max=t_max,
        steps=qc.n_steps,
        total_s=round(time.perf_counter() - start, 1),
        steps_per_s=round(rate, 2),
    )
    print(json.dumps(info), flush=True)
    return info


budget = float(sys.argv[1])
probe = run("ed", 2.0, None)
t_max = min(300.0, round(probe["steps_per_s"] * budget * 0.85 * 0.02, -1))
log = [probe, run("ed", t_max, "ed-n100-c0"), run("ml", t_max, "ml-n100-c0")]
with open(f"{OUT}/timings-edml.json", "w") as f:
    json.dump(log, f, indent=1)

"""Run folders for the analysis and notebook tests: real small runs, and hand-built edge cases.

Real runs (`real_runs`, on the session's local Ray; about 15 s on 2 cores): the example
experiments/synthetic_branin.yaml at a smoke size with two setups x two seeds, one setup stopping
trials early (ASHA), all in `<root>/bench/` as a comparison would be; and one SVM run on
breast_cancer (mode max, a conditional space, a refit scored on the test split) in `<root>/svm/`.

Hand-built runs (`write_run`) are for what a real run does not show on demand: GPUs on two nodes,
a crash that left only history parts, a driver that died before any trial.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

BENCH_SETUPS = {
    "random/fifo": ["searcher={name: random}"],
    "optuna-tpe/asha": ["searcher={name: optuna-tpe, n_startup_trials: 4}",
                        "scheduler={name: asha, max_t: 9, grace_period: 1, reduction_factor: 3}"],
}
BENCH_SEEDS = (0, 1)
# experiments/synthetic_branin.yaml at a smoke size: 8 trials of 9 iterations of 5 ms, 2 at once.
BENCH_TRIALS, BENCH_ITERATIONS, BENCH_CONCURRENT = 8, 9, 2
BENCH_SMOKE = [f"budget.trials={BENCH_TRIALS}", f"space.iterations={BENCH_ITERATIONS}", "space.sleep_s=0.005",
               f"budget.concurrent={BENCH_CONCURRENT}"]
SVM = {"name": "svm", "family": "svm", "data": {"source": "sklearn", "name": "breast_cancer", "seed": 0},
       "metric": {"name": "val_auc"}, "searcher": {"name": "random", "seed": 0},
       "budget": {"trials": 8, "concurrent": 2}}


def real_runs(root: Path) -> Path:
    """Runs the bench and SVM experiments under `root` (see the module docstring); returns root."""
    from orchestrator.run.driver import run
    from orchestrator.spec.load import load_spec, validate
    from tests.conftest import EXPERIMENTS

    for setup, overrides in BENCH_SETUPS.items():
        for seed in BENCH_SEEDS:
            exp = load_spec(EXPERIMENTS / "synthetic_branin.yaml", [*BENCH_SMOKE, *overrides, f"seed={seed}"])
            run(exp, root / "bench" / f"{setup.replace('/', '-')}-seed{seed}", quiet=True)
    run(validate(SVM), root / "svm" / "run", quiet=True)
    return root


def write_run(folder: Path, trials: list[dict[str, Any]], history: list[dict[str, Any]] | None = None,
              **meta: Any) -> Path:
    """A run folder written by hand: trials.parquet, history.parquet (unless history is None) and an
    experiment.json with a minimal resolved spec (`meta` overrides its keys)."""
    folder.mkdir(parents=True)
    spec = {"name": "hand", "family": "synthetic", "metric": {"name": "loss", "mode": "min"},
            "space": {"x1": {"uniform": [-5.0, 10.0]}, "x2": {"uniform": [0.0, 15.0]}},
            "searcher": {"name": "random", "seed": None}, "scheduler": {"name": "fifo"},
            "budget": {"trials": len(trials), "concurrent": 1, "time_s": None},
            "resources": {"cpu": 1.0, "gpu": 0.0}, "seed": 0}
    spec.update(meta.pop("spec", {}))
    doc = {"schema_version": 1, "run_id": folder.name, "name": spec["name"], "spec_hash": "hand0000",
           "spec": spec, "seed": spec["seed"], "metric": spec["metric"], "status": "finished",
           "started_at": "2026-01-01T00:00:00+00:00", "ended_at": "2026-01-01T00:01:00+00:00", **meta}
    (folder / "experiment.json").write_text(json.dumps(doc))
    pd.DataFrame(trials).to_parquet(folder / "trials.parquet", index=False)
    if history is not None:
        pd.DataFrame(history).to_parquet(folder / "history.parquet", index=False)
    return folder


def at(seconds: float) -> pd.Timestamp:
    """A UTC time `seconds` after the hand-built runs' epoch."""
    return pd.Timestamp("2026-01-01T00:00:00Z") + pd.Timedelta(seconds=seconds)

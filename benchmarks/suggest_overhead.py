"""Per-suggestion cost of each searcher, driven directly (no Ray trials), vs standalone Optuna.

Every searcher proposes `--trials` configs for the 2-D Branin function, one at a time, and is
told each result. For Optuna samplers the same loop through a plain `study.optimize` is the
baseline, so the ratio is what Ray's wrapper plus ours add.

    .venv/bin/python benchmarks/suggest_overhead.py --trials 100
"""

from __future__ import annotations

import argparse
import time

from experiments.synthetic import KNOWN_OPTIMUM, branin
from orchestrator.run.tuner import build_tune_config
from orchestrator.search.resumable import base_searcher
from orchestrator.search.searchers import SEARCHERS
from orchestrator.spec.load import validate

STANDALONE = {"optuna-tpe": "TPESampler", "optuna-cmaes": "CmaEsSampler", "optuna-gp": "GPSampler"}


def through_orchestrator(name: str, trials: int) -> tuple[float, float]:
    scheduler = "bohb-hyperband" if name == "bohb" else "fifo"
    exp = validate({"name": "s", "family": "synthetic", "metric": {"name": "loss"},
                    "searcher": {"name": name, "seed": 0},
                    "scheduler": {"name": scheduler}, "space": {"iterations": 81}, "budget": {"trials": trials}})
    cfg, space = build_tune_config(exp)
    alg = base_searcher(cfg.search_alg)
    if space:
        alg.set_search_properties("loss", "min", space)
    best = float("inf")
    start = time.perf_counter()
    for i in range(trials):
        config = alg.suggest(f"t{i}")
        loss = branin(config["x1"], config["x2"])
        best = min(best, loss)
        alg.on_trial_complete(f"t{i}", {"loss": loss, "training_iteration": 1})
    return (time.perf_counter() - start) / trials, best - KNOWN_OPTIMUM


def standalone_optuna(sampler_name: str, trials: int) -> tuple[float, float]:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=getattr(optuna.samplers, sampler_name)(seed=0))
    start = time.perf_counter()
    study.optimize(lambda t: branin(t.suggest_float("x1", -5, 10), t.suggest_float("x2", 0, 15)), n_trials=trials)
    return (time.perf_counter() - start) / trials, study.best_value - KNOWN_OPTIMUM


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=100)
    args = p.parse_args()
    print(f"{'searcher':14s} {'ms/suggest':>11s} {'regret':>8s} {'standalone ms':>14s} {'ratio':>6s}")
    for name in SEARCHERS:
        if name in ("random", "grid"):
            continue  # random/grid come from Ray's generator, which has no suggest() loop
        through_orchestrator(name, 3)  # warm-up: samplers import their backends (cmaes, torch) lazily
        ms, regret = through_orchestrator(name, args.trials)
        line = f"{name:14s} {ms * 1000:11.2f} {regret:8.3f}"
        if name in STANDALONE:
            standalone_optuna(STANDALONE[name], 3)
            base, _ = standalone_optuna(STANDALONE[name], args.trials)
            line += f" {base * 1000:14.2f} {ms / base:5.2f}x"
        print(line)


if __name__ == "__main__":
    main()

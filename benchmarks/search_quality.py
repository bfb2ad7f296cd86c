"""Search quality on functions with a known optimum: our searchers against the same samplers run
standalone, and our multi-fidelity schedulers against random search.

Searchers (no Ray trials): each searcher as our spec builds it (`build_tune_config(exp)`), driven
by suggest/on_trial_complete one trial at a time, against the library run standalone with its
own defaults on the same space (Optuna's `study.optimize`, HyperOpt's `fmin`, SMAC's `optimize`,
Ax's `Client` loop), and against random sampling (Optuna's RandomSampler: the same uniform
distribution as Ray's generator). Per
function, over the seeds: median final regret (best value found minus the known optimum) with its
interquartile range, the ratio of medians ours/standalone, and on how many seeds TPE ends below
random.

Schedulers (real Ray trials, one warm local Ray): the `synthetic` family, Branin with a fidelity
axis (27 iterations, noisy loss converging to the truth). Random search + FIFO is the baseline;
for each scheduler, the trial-iterations it spent before the config it ranks best (lowest loss
among trials that ran all 27 iterations) was as good as the baseline's final pick (true regret),
median over seeds, and on how many seeds it got there at all.

    flock /tmp/hpo-cpu.lock env PYTHONPATH=$PWD .venv/bin/python benchmarks/search_quality.py          # ~4 min
    flock /tmp/hpo-cpu.lock env PYTHONPATH=$PWD .venv/bin/python benchmarks/search_quality.py --quick  # < 1 min
    flock /tmp/hpo-cpu.lock env PYTHONPATH=$PWD .venv/bin/python benchmarks/search_quality.py \
        --searchers ax --seeds 4 --no-schedulers    # Ax alone: seconds per suggestion
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from experiments.synthetic import KNOWN_OPTIMUM as BRANIN_OPTIMUM
from experiments.synthetic import branin

# --- functions ---------------------------------------------------------------------------------

_H3_A = np.array([[3.0, 10, 30], [0.1, 10, 35], [3.0, 10, 30], [0.1, 10, 35]])
_H3_P = 1e-4 * np.array([[3689, 1170, 2673], [4699, 4387, 7470], [1091, 8732, 5547], [381, 5743, 8828]])
_H6_A = np.array([[10, 3, 17, 3.5, 1.7, 8], [0.05, 10, 17, 0.1, 8, 14], [3, 3.5, 1.7, 10, 17, 8],
                  [17, 8, 0.05, 10, 0.1, 14]])
_H6_P = 1e-4 * np.array([[1312, 1696, 5569, 124, 8283, 5886], [2329, 4135, 8307, 3736, 1004, 9991],
                         [2348, 1451, 3522, 2883, 3047, 6650], [4047, 8828, 8732, 5743, 1091, 381]])
_H_ALPHA = np.array([1.0, 1.2, 3.0, 3.2])


def hartmann(A: np.ndarray, P: np.ndarray) -> Callable[[dict], float]:
    """The Hartmann function on [0, 1]^d (Dixon & Szegö 1978), d = A's columns, x1..xd."""
    def f(config: dict) -> float:
        x = np.array([config[f"x{i + 1}"] for i in range(A.shape[1])])
        return float(-np.sum(_H_ALPHA * np.exp(-np.sum(A * (x - P) ** 2, axis=1))))
    return f


@dataclass(frozen=True)
class Function:
    f: Callable[[dict], float]
    optimum: float
    space: dict  # YAML-shaped, as in a spec
    trials: int


def unit_cube(d: int) -> dict:
    return {f"x{i + 1}": {"uniform": [0.0, 1.0]} for i in range(d)}


FUNCTIONS = {
    "branin": Function(lambda c: branin(c["x1"], c["x2"]), BRANIN_OPTIMUM,
                       {"x1": {"uniform": [-5.0, 10.0]}, "x2": {"uniform": [0.0, 15.0]}}, 40),
    "hartmann3": Function(hartmann(_H3_A, _H3_P), -3.86278, unit_cube(3), 40),
    "hartmann6": Function(hartmann(_H6_A, _H6_P), -3.32237, unit_cube(6), 60),
}
# Our searcher -> the standalone sampler it wraps, at the library's own defaults.
STANDALONE = {"optuna-tpe": "optuna:TPESampler", "optuna-cmaes": "optuna:CmaEsSampler",
              "optuna-gp": "optuna:GPSampler", "hyperopt-tpe": "hyperopt:tpe", "smac": "smac:hpo",
              "ax": "ax:Client"}
SLOW = ("optuna-gp", "ax")  # seconds per suggestion: left out of --quick, started first


# --- searchers, one run each ---------------------------------------------------------------

def experiment(function: str, searcher: str, seed: int, trials: int, scheduler: dict | None = None,
               concurrent: int | None = 1):
    """Our spec for this search, on the synthetic family (Branin with a fidelity axis): its space
    merged under the function's, so the searchers see the function's parameters and its constants
    (27 iterations, noise) ride along, used only by the scheduler runs."""
    from orchestrator.spec.load import validate

    return validate({"name": "quality", "family": "synthetic", "metric": {"name": "loss"},
                     "space": FUNCTIONS[function].space, "searcher": {"name": searcher, "seed": seed},
                     "scheduler": scheduler or {"name": "fifo"}, "seed": seed,
                     "budget": {"trials": trials, "concurrent": concurrent or trials}})


def ours(function: str, searcher: str, seed: int, trials: int) -> float:
    from orchestrator.run.tuner import build_tune_config
    from orchestrator.search.resumable import base_searcher

    fn = FUNCTIONS[function]
    cfg, space = build_tune_config(experiment(function, searcher, seed, trials))
    alg = base_searcher(cfg.search_alg)
    if space:
        alg.set_search_properties("loss", "min", space)
    best = math.inf
    for i in range(trials):
        value = fn.f(alg.suggest(f"t{i}"))
        best = min(best, value)
        alg.on_trial_complete(f"t{i}", {"loss": value, "training_iteration": 1})
    return best - fn.optimum


def standalone(function: str, sampler: str, seed: int, trials: int) -> float:
    library, _, name = sampler.partition(":")
    fn = FUNCTIONS[function]
    if library == "smac":
        return standalone_smac(fn, seed, trials)
    if library == "ax":
        return standalone_ax(fn, seed, trials)
    if library == "hyperopt":
        import hyperopt

        space = {k: hyperopt.hp.uniform(k, *v["uniform"]) for k, v in fn.space.items()}
        found = hyperopt.Trials()
        hyperopt.fmin(fn.f, space, algo=hyperopt.tpe.suggest, max_evals=trials, trials=found,
                      rstate=np.random.default_rng(seed), show_progressbar=False)
        return min(found.losses()) - fn.optimum
    import optuna

    from orchestrator.search.searchers import OptunaDefineByRun

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sample = OptunaDefineByRun(experiment(function, "random", seed, trials).params)  # the same suggest calls

    def objective(trial) -> float:
        sample(trial)
        return fn.f(trial.params)

    kwargs = {"warn_independent_sampling": False} if name == "GPSampler" else {}
    study = optuna.create_study(sampler=getattr(optuna.samplers, name)(seed=seed, **kwargs))
    study.optimize(objective, n_trials=trials)
    return study.best_value - fn.optimum


def standalone_smac(fn: Function, seed: int, trials: int) -> float:
    """SMAC's own optimize() loop with its HPO facade at its defaults (random forest, EI, Sobol design),
    deterministic as the functions are (else SMAC spends trials re-running configs on new seeds)."""
    from ConfigSpace import ConfigurationSpace, Float
    from smac import HyperparameterOptimizationFacade as HPO
    from smac import Scenario

    cs = ConfigurationSpace(seed=seed)
    cs.add([Float(k, tuple(v["uniform"])) for k, v in fn.space.items()])
    with tempfile.TemporaryDirectory() as out:
        scenario = Scenario(cs, deterministic=True, n_trials=trials, seed=seed, output_directory=Path(out) / "smac")
        smac = HPO(scenario, lambda config, seed=0: fn.f(dict(config)), overwrite=True, logging_level=False)
        smac.optimize()
        return min(v.cost for v in smac.runhistory.values()) - fn.optimum


def standalone_ax(fn: Function, seed: int, trials: int) -> float:
    """Ax's own ask/tell loop (`ax.api.Client`) at its defaults: its generation strategy's choice
    (center, Sobol, then BoTorch), one trial at a time."""
    from ax.api.client import Client
    from ax.api.configs import RangeParameterConfig
    from ax.utils.common.logger import set_stderr_log_level

    set_stderr_log_level(40)
    client = Client(random_seed=seed)
    client.configure_experiment([RangeParameterConfig(name=k, parameter_type="float", bounds=tuple(v["uniform"]))
                                 for k, v in fn.space.items()])
    client.configure_optimization(objective="-loss")
    best = math.inf
    for _ in range(trials):
        for index, params in client.get_next_trials(max_trials=1).items():
            value = fn.f(params)
            best = min(best, value)
            client.complete_trial(index, raw_data={"loss": value})
    return best - fn.optimum


def one_search(task: tuple) -> tuple[tuple, float, float]:
    """(function, side, method, seed, trials) -> (task, final regret, seconds); runs in a pool worker."""
    function, side, method, seed, trials = task
    start = time.perf_counter()
    regret = ours(function, method, seed, trials) if side == "ours" else standalone(function, method, seed, trials)
    return task, regret, time.perf_counter() - start


def searcher_table(seeds: int, scale: float, searchers: list[str], processes: int) -> None:
    tasks = []
    for function, fn in FUNCTIONS.items():
        trials = max(10, int(fn.trials * scale))
        for seed in range(seeds):
            tasks.append((function, "standalone", "optuna:RandomSampler", seed, trials))
            for name in searchers:
                tasks += [(function, "ours", name, seed, trials),
                          (function, "standalone", STANDALONE[name], seed, trials)]
    slow = {m for name in SLOW for m in (name, STANDALONE[name])}
    tasks.sort(key=lambda t: t[2] not in slow)  # the slow ones first
    with multiprocessing.get_context("fork").Pool(processes) as pool:
        results = {(f, side, m, s): r for (f, side, m, s, _), r, _ in pool.imap_unordered(one_search, tasks)}

    def regrets(function, side, method):
        return np.array([results[(function, side, method, s)] for s in range(seeds)])

    print(f"{'function':10s} {'searcher':13s} {'ours: median [IQR]':>28s} {'standalone: median [IQR]':>28s} "
          f"{'ratio':>6s}")
    for function, fn in FUNCTIONS.items():
        rand = regrets(function, "standalone", "optuna:RandomSampler")
        print(f"{function:10s} {'random':13s} {'':>28s} {spread(rand):>28s}")
        for name in searchers:
            a, b = regrets(function, "ours", name), regrets(function, "standalone", STANDALONE[name])
            ratio = np.median(a) / np.median(b) if np.median(b) > 0 else math.nan
            print(f"{'':10s} {name:13s} {spread(a):>28s} {spread(b):>28s} {ratio:5.2f}x")
        if "optuna-tpe" in searchers:
            a, b = regrets(function, "ours", "optuna-tpe"), regrets(function, "standalone", STANDALONE["optuna-tpe"])
            print(f"{'':10s} TPE below random on {np.sum(a < rand)}/{seeds} seeds (ours), "
                  f"{np.sum(b < rand)}/{seeds} (standalone Optuna); "
                  f"trials per search: {max(10, int(fn.trials * scale))}")


def spread(values: np.ndarray) -> str:
    q1, med, q3 = np.percentile(values, [25, 50, 75])
    return f"{med:.4g} [{q1:.3g}, {q3:.3g}]"


# --- schedulers: real Ray runs -------------------------------------------------------------

SCHEDULER_RUNS = {  # label -> (searcher, scheduler, budget.concurrent)
    "random + fifo": ("random", {"name": "fifo"}, 2),
    "random + asha": ("random", {"name": "asha", "max_t": 27, "grace_period": 1}, 2),
    "random + hyperband": ("random", {"name": "hyperband", "max_t": 27}, 2),
    # HyperBand halves a bracket once all its trials reach a rung; a concurrency cap below the
    # bracket's size keeps brackets from filling (paused trials count against it): no cap here.
    "random + hyperband, no cap": ("random", {"name": "hyperband", "max_t": 27}, None),
    "bohb + bohb-hyperband": ("bohb", {"name": "bohb-hyperband", "max_t": 27}, 2),
    "optuna-tpe + asha": ("optuna-tpe", {"name": "asha", "max_t": 27, "grace_period": 1}, 2),
    "smac + asha": ("smac", {"name": "asha", "max_t": 27, "grace_period": 1}, 2),
}


def incumbent_curve(history, max_t: int) -> tuple[np.ndarray, np.ndarray]:
    """Per trial-iteration spent (in arrival order): the true regret of the config the run ranks best
    so far (the lowest loss at the last iteration among trials that ran all `max_t`); inf before one has."""
    rows = history.sort_values("timestamp", kind="stable")
    best_loss, best_regret, curve = math.inf, math.inf, []
    for it, loss, regret in zip(rows["iteration"], rows["metric.loss"], rows["metric.regret"]):
        if it == max_t and loss < best_loss:
            best_loss, best_regret = loss, regret
        curve.append(best_regret)
    return np.arange(1, len(curve) + 1), np.array(curve)


def scheduler_table(seeds: int, trials: int) -> None:
    import pandas as pd

    from orchestrator.run.driver import run
    from orchestrator.run.ray_local import quiet_driver_logs, start_local_ray

    # A Ray temp folder of its own: `ray.init()` joins the cluster named in <temp>/ray_current_cluster,
    # and a stale one there (a killed `ray start`) makes it wait for a dead GCS for many minutes.
    os.environ["RAY_TMPDIR"] = tempfile.mkdtemp(prefix="rayq")
    t0 = time.perf_counter()
    start_local_ray()
    quiet_driver_logs()
    import ray

    print(f"(local Ray up in {time.perf_counter() - t0:.1f}s, {ray.cluster_resources()['CPU']:g} CPUs; synthetic "
          f"Branin, 27 iterations, {trials} trials, budget.concurrent 2 unless said, {seeds} seeds)")
    curves: dict[str, list] = {label: [] for label in SCHEDULER_RUNS}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(seeds):
            for label, (searcher, scheduler, concurrent) in SCHEDULER_RUNS.items():
                # each trial runs the family's 27 iterations
                exp = experiment("branin", searcher, seed, trials, scheduler, concurrent)
                out = Path(tmp) / f"{label.replace(' ', '')}-{seed}"
                run(exp, out, quiet=True)
                curves[label].append(incumbent_curve(pd.read_parquet(out / "history.parquet"), 27))
    print(f"{'searcher + scheduler':27s} {'final regret: median [IQR]':>30s} {'trial-iterations':>17s} "
          f"{'to reach random+fifo final':>27s}")
    baseline = [curve[-1] for _, curve in curves["random + fifo"]]
    for label, runs in curves.items():
        finals = np.array([curve[-1] for _, curve in runs])
        spent = np.array([steps[-1] for steps, _ in runs])
        reach = [steps[np.argmax(curve <= target)] for (steps, curve), target in zip(runs, baseline)
                 if (curve <= target).any()]
        reached = f"{np.median(reach):.0f} ({len(reach)}/{seeds} seeds)" if reach else f"never (0/{seeds})"
        print(f"{label:27s} {spread(finals):>30s} {np.median(spent):17.0f} {reached:>27s}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="3 seeds, half the trials, no optuna-gp or ax, 1 scheduler seed")
    p.add_argument("--seeds", type=int, default=8)
    p.add_argument("--scheduler-seeds", type=int, default=8)
    p.add_argument("--scheduler-trials", type=int, default=30)
    p.add_argument("--searchers", nargs="+", choices=list(STANDALONE), default=list(STANDALONE),
                   help="the searchers to compare (default: all)")
    p.add_argument("--no-schedulers", action="store_true", help="the searcher table only")
    args = p.parse_args()
    sys.stdout.reconfigure(line_buffering=True)
    searchers = args.searchers
    seeds, scale = args.seeds, 1.0
    if args.quick:
        searchers = [s for s in searchers if s not in SLOW]
        seeds, scale, args.scheduler_seeds, args.scheduler_trials = 3, 0.5, 1, 20
    start = time.perf_counter()
    print(f"searchers: {seeds} seeds, one trial at a time, 2 processes")
    searcher_table(seeds, scale, searchers, processes=2)
    print(f"({time.perf_counter() - start:.0f}s)\n")
    if args.no_schedulers:
        return
    scheduler_table(args.scheduler_seeds, args.scheduler_trials)
    print(f"(total {time.perf_counter() - start:.0f}s)")


if __name__ == "__main__":
    main()

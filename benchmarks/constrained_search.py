"""Constrained search on a function with a known feasible optimum: the searchers that take
constraints against random search with rejection (what is left without them: sample, then drop
the infeasible trials), 8 seeds by default.

The problem: Branin on [-5, 10] x [0, 15], minimised subject to g = x1 + x2 <= 4 (g reported as
a second metric; `constraints: [{metric: g, max: 4}]`). The bound cuts off all three of Branin's
global minima (0.397887 at (-pi, 12.275), (pi, 2.275) and (9.42478, 2.475)), so the feasible
optimum lies on the boundary; it is found here by SLSQP from a grid of starts and printed. About
18% of the box is feasible.

Each searcher is built by our registry with the constraint (orchestrator.search.searchers, as a
spec's `constraints:` builds it) and driven by suggest / on_trial_complete, one trial at a time,
with both metrics in each result. Per searcher: the best feasible value's regret against the
feasible optimum (median [IQR] over seeds), the share of its trials that were feasible, on how
many seeds it came within `--near` of the optimum, and seconds per search.

    flock /tmp/hpo-cpu.lock env PYTHONPATH=$PWD .venv/bin/python benchmarks/constrained_search.py   # ~32 min, Ax most
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import sys
import time

import numpy as np

from experiments.synthetic import branin

SPACE = {"x1": {"uniform": [-5.0, 10.0]}, "x2": {"uniform": [0.0, 15.0]}}
BOUND = 4.0
SEARCHERS = ("optuna-tpe", "optuna-gp", "ax")  # those that take constraints (SearcherEntry.constraints)


def g(x1: float, x2: float) -> float:
    return x1 + x2


def feasible_optimum() -> float:
    """min branin(x) s.t. g(x) <= BOUND inside the box, by SLSQP from a 12 x 12 grid of starts."""
    from scipy.optimize import minimize

    best = math.inf
    for x1 in np.linspace(-5, 10, 12):
        for x2 in np.linspace(0, 15, 12):
            r = minimize(lambda x: branin(x[0], x[1]), [x1, x2], method="SLSQP", bounds=[(-5, 10), (0, 15)],
                         constraints=[{"type": "ineq", "fun": lambda x: BOUND - g(x[0], x[1])}])
            if r.success and g(*r.x) <= BOUND + 1e-9:
                best = min(best, float(r.fun))
    return best


def one_search(task: tuple[str, int, int]) -> tuple[tuple, float, float, float]:
    """(searcher, seed, trials) -> (task, best feasible value, feasible share, seconds)."""
    from orchestrator.results.constraints import Constraint
    from orchestrator.search.searchers import SEARCHERS as REGISTRY
    from orchestrator.search.searchers import SearchContext, build_search
    from orchestrator.search.space import parse_space

    name, seed, trials = task
    start = time.perf_counter()
    params, _ = parse_space(SPACE)
    ctx = SearchContext(params=params, metric="loss", mode="min", seed=seed, trials=trials,
                        constraints=(Constraint("g", max=BOUND),))
    plan = build_search(REGISTRY[name].options(name=name, seed=seed), ctx)
    alg = plan.search_alg
    if plan.param_space:
        alg.set_search_properties("loss", "min", plan.param_space)
    best, feasible = math.inf, 0
    for i in range(trials):
        config = alg.suggest(f"t{i}")
        value, c = branin(config["x1"], config["x2"]), g(config["x1"], config["x2"])
        if c <= BOUND:
            feasible += 1
            best = min(best, value)
        alg.on_trial_complete(f"t{i}", {"loss": value, "g": c, "training_iteration": 1})
    return task, best, feasible / trials, time.perf_counter() - start


def random_with_rejection(seed: int, trials: int) -> tuple[float, float]:
    """Uniform samples (numpy, seeded), the infeasible ones dropped: best feasible value, feasible share."""
    rng = np.random.default_rng(seed)
    x1, x2 = rng.uniform(-5, 10, trials), rng.uniform(0, 15, trials)
    ok = g(x1, x2) <= BOUND
    values = [branin(a, b) for a, b in zip(x1[ok], x2[ok])]  # branin takes scalars (math.cos)
    return (min(values) if values else math.inf), float(ok.mean())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=8)
    p.add_argument("--trials", type=int, default=40)
    p.add_argument("--near", type=float, default=0.05, help="regret that counts as reaching the optimum")
    p.add_argument("--searchers", nargs="+", choices=SEARCHERS, default=list(SEARCHERS))
    args = p.parse_args()
    sys.stdout.reconfigure(line_buffering=True)
    start = time.perf_counter()
    optimum = feasible_optimum()
    print(f"Branin s.t. x1 + x2 <= {BOUND:g}: feasible optimum {optimum:.6f} (SLSQP); {args.trials} trials, "
          f"{args.seeds} seeds, one trial at a time, 2 processes")
    tasks = [(name, seed, args.trials) for name in args.searchers for seed in range(args.seeds)]
    tasks.sort(key=lambda t: t[0] not in ("ax", "optuna-gp"))  # the slow ones first
    with multiprocessing.get_context("fork").Pool(2) as pool:
        results = {t[:2]: rest for t, *rest in pool.imap_unordered(one_search, tasks)}

    def row(label: str, bests: list[float], shares: list[float], seconds: list[float] | None) -> None:
        regret = np.array(bests) - optimum
        q1, med, q3 = np.percentile(regret, [25, 50, 75])
        near = int(np.sum(regret <= args.near))
        secs = f"{np.median(seconds):8.1f}" if seconds else f"{'-':>8s}"
        print(f"{label:24s} {med:9.4g} [{q1:.3g}, {q3:.3g}]".ljust(52)
              + f"{np.mean(shares):8.0%} {near:>4d}/{args.seeds} {secs}")

    print(f"{'searcher':24s} {'regret: median [IQR]':27s} {'feasible':>8s} {'near':>9s} {'s/search':>8s}")
    rejected = [random_with_rejection(seed, args.trials) for seed in range(args.seeds)]
    row("random with rejection", [b for b, _ in rejected], [s for _, s in rejected], None)
    for name in args.searchers:
        got = [results[(name, seed)] for seed in range(args.seeds)]
        row(f"{name} + constraint", [b for b, _, _ in got], [s for _, s, _ in got], [t for _, _, t in got])
    print(f"(total {time.perf_counter() - start:.0f}s)")


if __name__ == "__main__":
    main()

"""Several metrics at once (`metric: [{name: val_error}, {name: predict_ms}]`): the Pareto front.

With more than one objective there is no single best trial, only trials no other trial beats on
every objective at once (the Pareto front). This module holds what that changes, apart from the
spec and the registries:

- `pareto_mask`: which rows are non-dominated. A trial is on the front when it `completed`
  (ran to its end: its last report is the model as finished, which is also what Optuna's
  multi-objective samplers are told) and every objective has a finite last value; trials stopped
  by the time budget, errored or interrupted never are. Ties (equal on every objective) are all
  kept: neither dominates the other.
- the registry rule `one_objective`: schedulers that compare trials on one number (ASHA,
  HyperBand, median stopping, PBT) and searchers that model one number (CMA-ES, GP, HyperOpt,
  BOHB) list it, so a pairing that cannot work is refused before Ray starts.
- `conclude`: what a multi-objective run records instead of a best trial and a refit. The refit
  on train+valid scores one config on test; a front has several, and choosing one of them is the
  user's trade-off to make, so nothing is refitted (said in experiment.json and the summary).

Everything here reads plain values (no Ray); orchestrator.results calls `pareto_mask` at each flush.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from orchestrator.errors import Problem

FRONT_STATUS = "completed"  # the only status whose last values are a finished model's
NO_REFIT = ("several objectives: no single best config to refit on train+valid; pick a trade-off from the "
            "Pareto front (trials.parquet column pareto) and refit it with a one-metric spec")


def pareto_mask(values: np.ndarray, modes: Sequence[str], eligible: Iterable[bool] | None = None) -> np.ndarray:
    """Which rows of `values` (n trials x k objectives) are non-dominated among the eligible rows
    with finite values; an ineligible or non-finite row is never on the front."""
    values = np.asarray(values, dtype=float).reshape(len(values), len(modes))
    ok = np.isfinite(values).all(axis=1)
    if eligible is not None:
        ok &= np.asarray(list(eligible), dtype=bool)
    signed = values * np.array([1.0 if m == "min" else -1.0 for m in modes])
    # Each survivor in turn removes every row it dominates: the front is what is left (a row
    # dominated by a removed one is dominated by whoever removed it). O(n * front size * k), where
    # comparing every pair took 0.4 s at 3,000 trials, on every progress update that followed an end.
    idx = np.flatnonzero(ok)
    i = 0
    while i < len(idx):
        rows, me = signed[idx], signed[idx[i]]
        dominated = (me <= rows).all(axis=1) & (me < rows).any(axis=1)
        idx = idx[~dominated]
        i = int((~dominated[:i]).sum()) + 1
    front = np.zeros(len(values), dtype=bool)
    front[idx] = True
    return front


def mark(rows: list[dict[str, Any]], objectives: Sequence[tuple[str, str]]) -> list[dict[str, Any]]:
    """trials.parquet rows with `pareto` set (a bool per row)."""
    values = [[_float(r.get(f"metric.{name}")) for name, _ in objectives] for r in rows]
    eligible = [r.get("status") == FRONT_STATUS for r in rows]
    mask = pareto_mask(np.array(values, dtype=float).reshape(len(rows), len(objectives)),
                       [m for _, m in objectives], eligible)
    return [{**r, "pareto": bool(on)} for r, on in zip(rows, mask)]


def front(rows: list[dict[str, Any]], objectives: Sequence[tuple[str, str]]) -> list[dict[str, Any]]:
    """The front's trials (id, objective values, config), best first on the first objective."""
    out = []
    for r in mark(rows, objectives):
        if r["pareto"]:
            out.append({"trial_id": r["trial_id"],
                        "values": {name: float(r[f"metric.{name}"]) for name, _ in objectives},
                        "config": {k.removeprefix("config."): v for k, v in r.items() if k.startswith("config.")}})
    first, mode = objectives[0]
    return sorted(out, key=lambda e: e["values"][first] * (1 if mode == "min" else -1))


def conclude(pareto: list[dict[str, Any]]) -> dict[str, Any]:
    """experiment.json's `evaluation` entry of a multi-objective run: why there is no refit."""
    return {"protocol": "pareto", "refit": None, "skipped": NO_REFIT, "front_size": len(pareto)}


def summary_lines(pareto: list[dict[str, Any]] | None, limit: int = 10) -> list[str]:
    """The front as `hpo run` prints it: one line per trial, best first on the first objective."""
    if not pareto:
        return []
    names = list(pareto[0]["values"])
    out = [f"Pareto front ({' vs '.join(names)}): {len(pareto)} trials; nothing refitted (several objectives)"]
    for e in pareto[:limit]:
        vals = ", ".join(f"{n}={v:.6g}" for n, v in e["values"].items())
        out.append(f"  {e['trial_id']}: {vals}  config: {_short(e['config'])}")
    if len(pareto) > limit:
        out.append(f"  ... {len(pareto) - limit} more (trials.parquet, where pareto is true)")
    return out


def no_front(objectives: Sequence[tuple[str, str]], rows: list[dict[str, Any]]) -> str:
    """Why a multi-objective run that ended normally has no front, naming a metric no trial reported."""
    names = [n for n, _ in objectives]
    done = [r for r in rows if r.get("status") == FRONT_STATUS]
    reported = sorted({k.removeprefix("metric.") for r in done for k, v in r.items()
                       if k.startswith("metric.") and v is not None})
    never = [n for n in names if n not in reported]
    if done and never:
        return (f"no completed trial reported {', '.join(never)}: they reported {', '.join(reported)}; list metrics "
                f"the trials report (metric: [...]), or report them at each trial's end")
    return (f"no trial completed with a finite value of every objective ({', '.join(names)}); see trials.parquet "
            f"(status, error, metric.*)")


def one_objective(opts: Any, strategy: Any) -> list[Problem]:
    """A registry rule (see orchestrator.rules): this searcher or scheduler works on one metric only."""
    if len(strategy.objectives) < 2:
        return []
    if opts.section == "scheduler":
        return [Problem("scheduler.name", f"{opts.name} compares trials on one metric, and the spec lists "
                                          f"{len(strategy.objectives)}; use scheduler: {{name: fifo}}, or one metric")]
    return [Problem("searcher.name", f"{opts.name} optimises one metric, and the spec lists "
                                     f"{len(strategy.objectives)}; use optuna-nsga2, optuna-tpe, random or grid, "
                                     f"or one metric")]


def _float(v: Any) -> float:
    try:
        return float(v) if v is not None else math.nan
    except (TypeError, ValueError):
        return math.nan


def _short(config: Mapping[str, Any]) -> str:
    return "{" + ", ".join(f"{k}: {v:.4g}" if isinstance(v, float) else f"{k}: {v}" for k, v in config.items()) + "}"

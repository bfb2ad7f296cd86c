"""Several metrics at once (`metric: [{name: val_error}, {name: predict_ms}]`): the Pareto front.

With more than one objective there is no single best trial, only trials no other trial beats on
every objective at once (the Pareto front). A trial is on the front when it `completed` (ran to
its end: its last report is the model as finished, which is also what Optuna's multi-objective
samplers are told) and every objective has a finite last value; trials stopped by the time
budget, errored or interrupted never are, nor, with constraints, a trial not known to be
feasible (`feasible` true: orchestrator.results.constraints). Ties (equal on every objective) are all kept: neither
dominates the other.

Everything here reads plain values (no Ray); the writer calls `mark` at each flush. What a
multi-objective run changes elsewhere: the registry rule `one_objective`
(orchestrator.search.rules) and the run's conclusion without a refit (orchestrator.run.outcome).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

FRONT_STATUS = "completed"  # the only status whose last values are a finished model's


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


def mark(rows: list[dict[str, Any]], objectives: Sequence[tuple[str, str]],
         constrained: bool = False) -> list[dict[str, Any]]:
    """trials.parquet rows with `pareto` set (a bool per row); `constrained`: the spec has
    constraints, and only rows whose `feasible` is true may be on the front."""
    values = [[_float(r.get(f"metric.{name}")) for name, _ in objectives] for r in rows]
    eligible = [r.get("status") == FRONT_STATUS and (not constrained or r.get("feasible") is True) for r in rows]
    mask = pareto_mask(np.array(values, dtype=float).reshape(len(rows), len(objectives)),
                       [m for _, m in objectives], eligible)
    return [{**r, "pareto": bool(on)} for r, on in zip(rows, mask)]


def front(rows: list[dict[str, Any]], objectives: Sequence[tuple[str, str]],
          constrained: bool = False) -> list[dict[str, Any]]:
    """The front's trials (id, objective values, config), best first on the first objective."""
    out = []
    for r in mark(rows, objectives, constrained):
        if r["pareto"]:
            out.append({"trial_id": r["trial_id"],
                        "values": {name: float(r[f"metric.{name}"]) for name, _ in objectives},
                        "config": {k.removeprefix("config."): v for k, v in r.items() if k.startswith("config.")}})
    first, mode = objectives[0]
    return sorted(out, key=lambda e: e["values"][first] * (1 if mode == "min" else -1))


def _float(v: Any) -> float:
    try:
        return float(v) if v is not None else math.nan
    except (TypeError, ValueError):
        return math.nan

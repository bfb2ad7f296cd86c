"""Constraints (`constraints: [{metric: model_size, max: 50000}]`): which trials are feasible.

A trial is judged on the last value it reported of each constrained metric, as the Pareto front
is (orchestrator.results.pareto): that is the finished model's value (cost metrics such as
`predict_ms` and `model_size` are measured only at a trial's last report), what the refit
reproduces, and what Ray's Optuna wrapper tells the sampler when the trial ends. A constraint's
value is Optuna's: `value - max` or `min - value`, feasible when at most 0, so the numbers in
trials.parquet (`constraint.<metric>`), the sampler (`trial.set_constraint`) and an exported
study are the same numbers.

`feasible` is True when every constraint holds, False when one is broken (even if another metric
was never reported), and None when nothing is broken but a metric is missing (a trial the
scheduler stopped before its last report has no cost metrics): such a trial is not known to be
feasible, so it is never the best and never on the front either.

Plain values only (no Ray, no Optuna): the writer, the searcher wrapper and the export all read
the same rule from here.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

PREFIX = "constraint."  # trials.parquet: `constraint.<metric>`, the constraint's value (<= 0 holds)
FEASIBLE = "feasible"  # trials.parquet: bool, or null (no constraints; a constrained metric unreported)


@dataclass(frozen=True)
class Constraint:
    """One bound on one reported metric: `max` (value <= max) or `min` (value >= min)."""

    metric: str
    max: float | None = None
    min: float | None = None

    def value(self, reported: float | None) -> float | None:
        """Optuna's constraint value (feasible when <= 0) of a reported value; None when there is
        none (unreported, or not a finite number)."""
        if reported is None or not isinstance(reported, (int, float)) or not math.isfinite(reported):
            return None
        return float(reported) - self.max if self.max is not None else self.min - float(reported)

    def __str__(self) -> str:
        return f"{self.metric} <= {self.max:g}" if self.max is not None else f"{self.metric} >= {self.min:g}"


def judge(constraints: Sequence[Constraint],
          metrics: Mapping[str, float]) -> tuple[dict[str, float | None], bool | None]:
    """Each constraint's value (by metric) from a trial's last reported `metrics`, and whether
    the trial is feasible (True, False, or None: nothing broken but a metric unreported)."""
    values = {c.metric: c.value(metrics.get(c.metric)) for c in constraints}
    if any(v is not None and v > 0 for v in values.values()):
        return values, False
    if any(v is None for v in values.values()):
        return values, None
    return values, True


def feasibility_line(constraints: Sequence[Constraint], verdicts: Iterable[bool | None]) -> str:
    """How many trials met the constraints, for the end of `hpo run` and for `hpo results`:
    feasible, infeasible, and unknown (a constrained metric never reported, as by a trial the
    scheduler stopped before its last report)."""
    verdicts = list(verdicts)
    yes, no = sum(v is True for v in verdicts), sum(v is False for v in verdicts)
    return (f"constraints {'; '.join(map(str, constraints))}: {yes} feasible, {no} infeasible, "
            f"{len(verdicts) - yes - no} unknown")

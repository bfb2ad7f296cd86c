"""What a trial's result looks like on the driver: the trainable's own values apart from the keys
Ray Tune adds, and the check that a result holds the spec's metric.

Ray adds bookkeeping keys to every result (`training_iteration`, `time_total_s`, `date`, ...);
`metric.*` columns and the trackers get only what the trainable reported itself. A result's
nested dicts are flattened with dots (`{"val": {"loss": 1}}` -> `val.loss`), as Ray's own loggers
do.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

from orchestrator.results.contract import HELD, RESTORED, SCHEDULE

# Keys Ray adds to every result: kept out of `metric.*` (the useful ones get their own column).
RAY_RESULT_KEYS = frozenset({
    HELD, SCHEDULE, RESTORED, "done", "trial_id", "date", "timestamp", "pid", "hostname", "node_ip", "config",
    "time_since_restore", "iterations_since_restore", "checkpoint_dir_name", "should_checkpoint", "experiment_tag",
    "time_this_iter_s", "time_total_s", "training_iteration", "episodes_total", "timesteps_total",
    "timesteps_since_restore", "experiment_id", "__duplicate__",
})


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, f"{key}."))
        else:
            out[key] = v
    return out


def _numeric(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def reported_metrics(result: Mapping[str, Any]) -> dict[str, float]:
    """The numeric values a trainable reported in one result, without the keys Ray adds."""
    return {k: float(v) for k, v in flatten({k: v for k, v in result.items() if k not in RAY_RESULT_KEYS}).items()
            if _numeric(v)}


def metric_problem(trial_id: str, metric: str, result: Mapping[str, Any]) -> str | None:
    """Why a trial's result has no value of the spec's metric, naming what it did report; or None.

    A result holding nothing but `done` is Ray's record of a trainable that returned without
    ever reporting: said as such at the end of the first trial, not after the whole budget.
    """
    metrics = reported_metrics(result)
    if metric in metrics or metric in flatten(result):
        return None
    if not metrics and result.get("done"):
        return (f"trial {trial_id} ended without reporting anything: the trainable returned before its first "
                f"report; call ray.tune.report({{{metric!r}: ...}}) at every iteration (in a family: trial.report)")
    close = difflib.get_close_matches(metric, list(metrics), n=1)
    hint = f"; did you mean metric.name: {close[0]}?" if close else ""
    return (f"the trainable never reports the spec's metric {metric!r}: trial {trial_id} reported "
            f"{', '.join(sorted(metrics)) or 'no numeric values'}{hint} Change metric.name to one it reports, "
            f"or report it with ray.tune.report({{{metric!r}: ...}})")

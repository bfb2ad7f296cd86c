"""A run as an Optuna study: for Optuna's importance evaluators, its plots and optuna-dashboard.

No Ray Tune run can be opened in Optuna's tools as it is; this builds the study those tools read
from the run folder alone:

- distributions come from the resolved spec's `space` in experiment.json, through the same
  table the Optuna searchers use (`orchestrator.search.space.optuna_distributions`), so a log range
  stays a log range and an integer range an integer one; `grid:` entries become categoricals and
  constants are left out (Optuna does not sample them).
- one objective per metric of the spec (several for a multi-objective run), each with its mode's
  direction; `set_metric_names` names them.
- `completed` trials are COMPLETE with their `score` (the best value they reported: what hpo ranks
  trials by, and what a warm start hands an Optuna sampler) or, with several metrics, their last
  value of each (what the Pareto front is taken on); `stopped` ones are PRUNED with every reported
  value as intermediate values and, as Optuna records a pruned trial, the last of them as value
  (no value with several metrics: Optuna prunes single-objective studies only); `errored` ones are
  FAIL; unfinished ones (`running`, `pending`, `interrupted`, `unknown`: a run still going, cut off
  by Ctrl-C or killed) are RUNNING, since `hpo resume` may still finish them; the status is kept in
  the user attribute `hpo_status`.
- A conditional parameter is set only in the trials where it was active.
- With `constraints:` in the spec, a COMPLETE trial that reported every constrained metric
  carries Optuna's constraint values (`trial.constraints`, value - max or min - value, feasible at
  <= 0), so optuna-dashboard shows the infeasible ones as such.
- Each trial keeps its start and end time (Optuna's timeline plot), hpo's trial id, status,
  iterations, node and last metrics as user attributes; the study keeps the run's setup.

The live journal a run writes with `dashboard: true` (orchestrator.tracking.journal) builds each
trial with the same `trial` function, from the same record, so a study read from it and one
exported here after the run agree (tests/test_dashboard.py compares them).

A trial whose config lies outside the spec's space (a space edited after the run, or a q-rounded
value past the high end) cannot be a trial of that study: it is left out and counted in the study's
user attribute `hpo_skipped_trials`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from orchestrator.analysis.runs import Runs, final_lineage, load_runs
from orchestrator.errors import ResultsError
from orchestrator.results.constraints import Constraint, judge
from orchestrator.search.space import optuna_distributions, parse_space

# A trial's status (results.contract.STATUSES) as an Optuna TrialState name; unfinished ones stay
# RUNNING, so that `hpo resume` goes on with the same Optuna trial in a live journal.
STATES = {"completed": "COMPLETE", "stopped": "PRUNED", "errored": "FAIL", "running": "RUNNING",
          "pending": "RUNNING", "interrupted": "RUNNING", "unknown": "RUNNING"}
STUDY_ATTRS = ("run", "name", "family", "searcher", "scheduler", "seed", "spec_hash", "path")


def distributions(space: dict[str, Any]) -> dict[str, Any]:
    """Optuna distributions of a resolved spec's `space` (experiment.json), constants left out."""
    params, problems = parse_space(space)
    if problems:
        raise ResultsError(f"the run's space does not parse: {problems[0]}")
    return optuna_distributions(params)


def objectives(meta: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(name, mode) of each metric the run tuned, from its experiment.json: several with `objectives`."""
    listed = meta.get("objectives") or [meta.get("metric") or (meta.get("spec") or {}).get("metric") or {}]
    return [(o.get("name"), o.get("mode")) for o in listed]


def constraints(meta: Mapping[str, Any]) -> tuple[Constraint, ...]:
    """The run's constraints (`constraints:` in its resolved spec), none for a run without."""
    listed = (meta.get("spec") or {}).get("constraints") or []
    return tuple(Constraint(c["metric"], c.get("max"), c.get("min")) for c in listed)


def study_attrs(meta: Mapping[str, Any], path: str | Path) -> dict[str, Any]:
    """The study's user attributes (`hpo_<key>` for each of STUDY_ATTRS) from the run's experiment.json."""
    spec = meta.get("spec") or {}
    searcher, scheduler = spec.get("searcher") or {}, spec.get("scheduler") or {}
    values = {"run": meta.get("run_id") or Path(path).name, "name": meta.get("name"), "family": spec.get("family"),
              "searcher": searcher.get("name"), "scheduler": scheduler.get("name"),
              "seed": meta.get("seed", spec.get("seed")), "spec_hash": meta.get("spec_hash"), "path": str(path)}
    return {f"hpo_{k}": _scalar(values[k]) for k in STUDY_ATTRS}


def default_study_name(meta: Mapping[str, Any], path: str | Path) -> str:
    """`<name>/<run id>`: what `hpo export optuna` and the live journal call a run's study."""
    return f"{meta.get('name')}/{meta.get('run_id') or Path(path).name}"


def create_study(storage: Any, study_name: str | None, meta: Mapping[str, Any], path: str | Path):
    """An empty study for the run in `storage`: its directions, metric names and setup attributes."""
    import optuna

    objs = objectives(meta)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.create_study(storage=storage, study_name=study_name,
                                    directions=["minimize" if mode == "min" else "maximize" for _, mode in objs])
    except optuna.exceptions.DuplicatedStudyError:
        raise ResultsError(f"a study named {study_name!r} is already in that storage; choose another name "
                           f"(--study-name) or another file") from None
    with warnings.catch_warnings():  # experimental since Optuna 3.2, and what the dashboard shows
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names([name for name, _ in objs])
    for key, value in study_attrs(meta, path).items():
        study.set_user_attr(key, value)
    return study


def to_study(run: Runs | str | Path, storage: Any = None, study_name: str | None = None):
    """The run (a one-run `Runs` or a run folder) as an Optuna study, in `storage` (default in
    memory; any Optuna storage or URL, e.g. a JournalStorage for optuna-dashboard)."""
    runs = run if isinstance(run, Runs) else load_runs(run)
    if len(runs) != 1:
        raise ResultsError(f"one run at a time, got {len(runs)} runs: give one run folder")
    row = runs.runs.iloc[0]
    meta = runs.meta[row["run"]]
    meta = {**meta, "run_id": row["run"], "metric": {"name": row["metric"], "mode": row["mode"]}}
    dists = distributions((meta.get("spec") or {}).get("space") or {})
    objs, bounds = objectives(meta), constraints(meta)
    study = create_study(storage, study_name, meta, row["path"])
    history = curves(runs.history, objs[0][0])
    trials, skipped = [], []
    ordered = runs.trials.sort_values("started_at", kind="stable") if "started_at" in runs.trials else runs.trials
    for t in ordered.to_dict("records"):
        try:
            trials.append(trial(t, dists, history.get(t["trial_id"], {}), objs, bounds))
        except ValueError:
            skipped.append(t["trial_id"])
    study.add_trials(trials)
    study.set_user_attr("hpo_skipped_trials", skipped)
    return study


def curves(history: pd.DataFrame, metric: str) -> dict[str, dict[int, float]]:
    """Each trial's intermediate values: `metric` along its final lineage (a repeated iteration counts
    once, as the trial's final state went through it; orchestrator.analysis.runs.final_lineage)."""
    lineage = final_lineage(history)
    column = f"metric.{metric}"
    if not len(lineage) or column not in lineage:
        return {}
    return {str(tid): intermediate(zip(h["iteration"], h[column])) for tid, h in lineage.groupby("trial_id")}


def intermediate(pairs) -> dict[int, float]:
    """(iteration, value) pairs as Optuna's intermediate values: finite values only, the last per step."""
    return {int(i): float(v) for i, v in pairs if v is not None and math.isfinite(v)}


def outcome(t: Mapping[str, Any], steps: Mapping[int, float], objs: list[tuple[str, str]]):
    """(TrialState, values or None) of a trials.parquet row, given its intermediate values."""
    from optuna.trial import TrialState

    state = TrialState[STATES.get(t["status"], "FAIL")]
    if state == TrialState.COMPLETE:
        if len(objs) > 1:
            values = [_scalar(t.get(f"metric.{name}")) for name, _ in objs]
            ok = all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)
        else:
            values = [_scalar(t.get("score"))]
            ok = values[0] is not None
        return (state, values) if ok else (TrialState.FAIL, None)  # finished but never reported the metric
    if state == TrialState.PRUNED:
        if len(objs) > 1:
            return state, None
        return (state, [steps[max(steps)]]) if steps else (TrialState.FAIL, None)
    return state, None


def trial(t: Mapping[str, Any], dists: dict[str, Any], steps: Mapping[int, float], objs: list[tuple[str, str]],
          bounds: Sequence[Constraint] = ()):
    """The Optuna trial of a trials.parquet row (or a live `TrialRecord.row()`); ValueError if its
    config lies outside the distributions. With the run's constraints (`bounds`), a completed
    trial carries their values as Optuna's own constraints (`trial.constraints`; optuna-dashboard
    shows a trial with one above 0 as infeasible), recomputed from its last values
    (`metric.<name>`) as the run judged them; a value it never reported is +inf (infeasible: Optuna
    would count a trial without constraints as feasible, and the run never did)."""
    import optuna

    state, values = outcome(t, steps, objs)
    params = {}
    for name, dist in dists.items():
        value = _scalar(t.get(f"config.{name}"))
        if value is not None:
            params[name] = _as_in(dist, value)
    frozen = optuna.trial.create_trial(
        state=state, values=values, params=params, distributions={k: dists[k] for k in params},
        intermediate_values=dict(steps), user_attrs={k: v for k, v in attrs(t).items() if v is not None})
    if bounds and state.name == "COMPLETE":
        values_of, _ = judge(bounds, {c.metric: _scalar(t.get(f"metric.{c.metric}")) for c in bounds})
        for metric, value in values_of.items():  # unknown: infeasible, as the run never counted it feasible
            frozen.set_constraint(metric, math.inf if value is None else value)
    frozen.datetime_start = _datetime(t.get("started_at")) or frozen.datetime_start
    if state.is_finished():
        frozen.datetime_complete = _datetime(t.get("ended_at")) or frozen.datetime_complete
    return frozen


def attrs(t: Mapping[str, Any]) -> dict[str, Any]:
    """A trial's user attributes: hpo's trial id and status, and what trials.parquet says of it."""
    out = {"hpo_trial_id": t["trial_id"], "hpo_status": t["status"]}
    for key in ("iterations", "score_iteration", "wall_s", "node_ip", "gpus", "gpu_ids", "error"):
        out[key] = _scalar(t.get(key))
    out.update({k: _scalar(v) for k, v in t.items() if k.startswith("metric.")})
    return out


def _as_in(dist, value: Any) -> Any:
    """The value as the distribution holds it: Parquet may have turned a mixed choice into text
    and an integer column with gaps into floats."""
    from optuna.distributions import CategoricalDistribution, IntDistribution

    if isinstance(dist, CategoricalDistribution):
        match = [c for c in dist.choices if c == value or str(c) == str(value)]
        if not match:
            raise ValueError(value)
        value = match[0]
    elif isinstance(dist, IntDistribution) and float(value).is_integer():
        value = int(value)
    return value  # Optuna's create_trial refuses it (ValueError) if it lies outside


def _scalar(value: Any) -> Any:
    """A Python scalar for Optuna's JSON storages; None for a missing value."""
    if value is None or value is pd.NaT or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, np.generic):
        return _scalar(value.item())
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    return value


def _datetime(value: Any):
    """Optuna keeps naive local times (datetime.now()); ours are UTC."""
    if value is None or pd.isna(value):
        return None
    return pd.Timestamp(value).floor("us").to_pydatetime().astimezone().replace(tzinfo=None)


def export_journal(run_dir: str | Path, path: str | Path, study_name: str | None = None):
    """Writes the run into an Optuna journal file (`JournalFileBackend`), which `optuna-dashboard
    FILE` opens; several runs can share one file under different study names (default
    `<name>/<run id>`). Returns the study."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    runs = load_runs(run_dir)
    name = study_name or f"{runs.runs['name'].iloc[0]}/{runs.runs['run'].iloc[0]}"
    path = Path(path)
    if path.is_dir():
        raise ResultsError(f"{path} is a folder; --storage takes a journal file path, e.g. {path / 'optuna.log'}")
    path.parent.mkdir(parents=True, exist_ok=True)
    return to_study(runs, JournalStorage(JournalFileBackend(str(path))), name)

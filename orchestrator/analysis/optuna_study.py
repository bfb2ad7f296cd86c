"""A run as an Optuna study: for Optuna's importance evaluators, its plots and optuna-dashboard.

No Ray Tune run can be opened in Optuna's tools as it is; this builds the study those tools read
from the run folder alone:

- distributions come from the resolved spec's `space` in experiment.json, through the same
  table the Optuna searchers use (`orchestrator.search.space.optuna_distributions`), so a log range
  stays a log range and an integer range an integer one; `grid:` entries become categoricals and
  constants are left out (Optuna does not sample them).
- `completed` trials are COMPLETE with their `score` (the best value they reported: what hpo ranks
  trials by, and what a warm start hands an Optuna sampler); `stopped` ones are PRUNED with every
  reported value as intermediate values and, as Optuna records a pruned trial, the last of them as
  value; `errored` ones are FAIL; `running`/`pending` ones (a crashed or unfinished run) are FAIL
  too, their status kept in the user attribute `hpo_status`.
- A conditional parameter is set only in the trials where it was active.
- Each trial keeps its start and end time (Optuna's timeline plot), hpo's trial id, status,
  iterations, node and last metrics as user attributes; the study keeps the run's setup.

A trial whose config lies outside the spec's space (a space edited after the run, or a q-rounded
value past the high end) cannot be a trial of that study: it is left out and counted in the study's
user attribute `hpo_skipped_trials`.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from orchestrator.analysis.runs import Runs, final_lineage, load_runs
from orchestrator.errors import ResultsError
from orchestrator.search.space import optuna_distributions, parse_space

STATES = {"completed": "COMPLETE", "stopped": "PRUNED", "errored": "FAIL", "running": "FAIL", "pending": "FAIL"}


def distributions(space: dict[str, Any]) -> dict[str, Any]:
    """Optuna distributions of a resolved spec's `space` (experiment.json), constants left out."""
    params, problems = parse_space(space)
    if problems:
        raise ResultsError(f"the run's space does not parse: {problems[0]}")
    return optuna_distributions(params)


def to_study(run: Runs | str | Path, storage: Any = None, study_name: str | None = None):
    """The run (a one-run `Runs` or a run folder) as an Optuna study, in `storage` (default in
    memory; any Optuna storage or URL, e.g. a JournalStorage for optuna-dashboard)."""
    import optuna

    runs = run if isinstance(run, Runs) else load_runs(run)
    if len(runs) != 1:
        raise ResultsError(f"one run at a time, got {len(runs)} runs: give one run folder")
    row = runs.runs.iloc[0]
    meta = runs.meta[row["run"]]
    dists = distributions((meta.get("spec") or {}).get("space") or {})
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.create_study(storage=storage, study_name=study_name,
                                    direction="minimize" if row["mode"] == "min" else "maximize")
    except optuna.exceptions.DuplicatedStudyError:
        raise ResultsError(f"a study named {study_name!r} is already in that storage; choose another name "
                           f"(--study-name) or another file") from None
    with warnings.catch_warnings():  # experimental since Optuna 3.2, and what the dashboard shows
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names([row["metric"]])
    for key in ("run", "name", "family", "searcher", "scheduler", "seed", "spec_hash", "path"):
        study.set_user_attr(f"hpo_{key}", _scalar(row[key]))
    # Intermediate values along each trial's final lineage (a repeated iteration counts once).
    lineage = final_lineage(runs.history)
    history = lineage.groupby("trial_id") if len(lineage) else None
    metric = f"metric.{row['metric']}"
    trials, skipped = [], []
    ordered = runs.trials.sort_values("started_at", kind="stable") if "started_at" in runs.trials else runs.trials
    for t in ordered.to_dict("records"):
        h = history.get_group(t["trial_id"]) if history is not None and t["trial_id"] in history.groups else None
        steps = _intermediate(h, metric)
        try:
            trials.append(_trial(t, dists, steps))
        except ValueError:
            skipped.append(t["trial_id"])
    study.add_trials(trials)
    study.set_user_attr("hpo_skipped_trials", skipped)
    return study


def _trial(t: dict[str, Any], dists: dict[str, Any], steps: dict[int, float]):
    import optuna
    from optuna.trial import TrialState

    state = TrialState[STATES.get(t["status"], "FAIL")]
    params = {}
    for name, dist in dists.items():
        value = _scalar(t.get(f"config.{name}"))
        if value is not None:
            params[name] = _as_in(dist, value)
    if state == TrialState.COMPLETE:
        value = _scalar(t.get("score"))
        if value is None:  # finished but never reported the metric
            state, value = TrialState.FAIL, None
    else:
        value = steps[max(steps)] if state == TrialState.PRUNED and steps else None
        state = TrialState.FAIL if state == TrialState.PRUNED and value is None else state
    trial = optuna.trial.create_trial(
        state=state, value=value, params=params, distributions={k: dists[k] for k in params},
        intermediate_values=steps,
        user_attrs={k: v for k, v in _attrs(t).items() if v is not None})
    trial.datetime_start = _datetime(t.get("started_at")) or trial.datetime_start
    if state.is_finished():
        trial.datetime_complete = _datetime(t.get("ended_at")) or trial.datetime_complete
    return trial


def _attrs(t: dict[str, Any]) -> dict[str, Any]:
    attrs = {"hpo_trial_id": t["trial_id"], "hpo_status": t["status"]}
    for key in ("iterations", "score_iteration", "wall_s", "node_ip", "gpus", "gpu_ids", "error"):
        attrs[key] = _scalar(t.get(key))
    attrs.update({k: _scalar(v) for k, v in t.items() if k.startswith("metric.")})
    return attrs


def _intermediate(h: pd.DataFrame | None, metric: str) -> dict[int, float]:
    if h is None or metric not in h:
        return {}
    return {int(i): float(v) for i, v in zip(h["iteration"], h[metric]) if v is not None and math.isfinite(v)}


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

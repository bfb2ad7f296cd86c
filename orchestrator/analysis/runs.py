"""Run folders -> tidy frames for analysis: one run or many, finished, failed or crashed.

Everything here reads the results contract (docs/results.md) and nothing else: no Ray, no spec
file, no family code, so a notebook can open a cluster's results on a laptop. A run folder is
recognised by its `experiment.json` (the runner writes it before the first trial starts); its
trials and history come from `orchestrator.results.writer.load`, which also reads a crashed run's
`history.parts/`.

The frames carry the columns that tell runs apart (`RUN_COLUMNS`: run, setup, searcher,
scheduler, seed, spec_hash) on every row, so comparisons are plain group-bys. `setup` is
`searcher/scheduler`: what a comparison of strategies varies, while `seed` is what it repeats.

Times: Ray stamps each result with whole seconds only, so a result's time is taken as its trial's
start plus Ray's `time_total_s` (sub-millisecond), or the stamped second when that is later (a
paused and resumed trial: `time_total_s` leaves the pause out). `elapsed_s` counts from the run's
first trial start, so Ray's own start-up does not count against a searcher.

The other analysis modules build on `load_runs`: `orchestrator.analysis.anytime` (best-so-far curves,
ranks, regret, `hpo compare`), `orchestrator.analysis.usage` (where trials ran, GPU-hours),
`orchestrator.analysis.optuna_study` (a run as an Optuna study) and `orchestrator.analysis.importance`; figures are
in `orchestrator.analysis.plots`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from orchestrator.errors import ResultsError
from orchestrator.results.constraints import FEASIBLE, Constraint, feasibility_line
from orchestrator.results.contract import EXPERIMENT, HISTORY, SCHEMA_KEY, SCHEMA_VERSION, TRIALS
from orchestrator.results.reader import load

META = EXPERIMENT
RUN_COLUMNS = ("run", "setup", "searcher", "scheduler", "seed", "spec_hash")
ENV = "HPO_RESULTS"


@dataclass(frozen=True)
class Runs:
    """One or more runs, loaded.

    Attributes:
        runs: one row per run folder (see `load_runs` for the columns).
        trials: every run's trials.parquet, each row led by `RUN_COLUMNS`.
        history: every run's reported iterations, led by `RUN_COLUMNS`, plus `elapsed_s`
            (seconds since the run's first trial started, see the module docstring).
        meta: each run's experiment.json, by run.
    """

    runs: pd.DataFrame
    trials: pd.DataFrame
    history: pd.DataFrame
    meta: dict[str, dict[str, Any]]

    def __len__(self) -> int:
        return len(self.runs)

    @property
    def metric(self) -> str:
        """The metric every run tuned; runs that tuned different metrics do not compare."""
        return self._shared("metric")

    @property
    def mode(self) -> str:
        return self._shared("mode")

    def _shared(self, column: str) -> str:
        values = self.runs[column].dropna().unique()
        if len(values) != 1:
            raise ResultsError(f"the runs do not share one {column} ({', '.join(map(str, values)) or 'none'}): "
                               f"analyse them separately, or pick runs of the same experiment")
        return str(values[0])

    def select(self, runs: str | Iterable[str]) -> Runs:
        """The same frames restricted to some runs (by their `run` label)."""
        keep = {runs} if isinstance(runs, str) else set(runs)
        if unknown := keep - set(self.runs["run"]):
            raise ResultsError(f"no run {sorted(unknown)[0]!r}; loaded: {', '.join(self.runs['run'])}")
        return Runs(self.runs[self.runs["run"].isin(keep)].reset_index(drop=True),
                    self.trials[self.trials["run"].isin(keep)].reset_index(drop=True),
                    self.history[self.history["run"].isin(keep)].reset_index(drop=True),
                    {k: v for k, v in self.meta.items() if k in keep})


# --- finding run folders -----------------------------------------------------------------------

def run_folders(paths: str | Path | Iterable[str | Path]) -> list[Path]:
    """Run folders named by `paths`: each is a run folder, its trials.parquet, or a folder holding
    runs (all runs below it, e.g. `results/<name>/`), in that order without repeats."""
    items = [paths] if isinstance(paths, (str, Path)) else list(paths)
    if not items:
        raise ResultsError("no run folder given")
    found: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_file() and path.name in (TRIALS, HISTORY, META):
            path = path.parent
        if not path.is_dir():
            raise ResultsError(f"{path}: no such run folder")
        below = [path] if (path / META).is_file() else _runs_below(path)
        if not below:
            raise ResultsError(f"{path}: not a run folder (no {META}) and no run below it; "
                               f"give results/<name>/<run-id>/ or a folder of runs")
        found += [p for p in below if p not in found]
    return found


def _runs_below(root: Path) -> list[Path]:
    """Run folders below `root`, not descending into a run (nested evaluation keeps searches there)."""
    runs = sorted(p.parent for p in root.rglob(META))
    return [r for r in runs if not any(other in r.parents for other in runs)]


def runs_from_env(root: str | Path | None = None, siblings: bool = False) -> list[Path]:
    """The run folders a notebook analyses: `$HPO_RESULTS` (colon-separated paths), else the newest
    run under `results/` (looked for here, then one level up, where a notebook's kernel starts).

    Args:
        siblings: without `$HPO_RESULTS`, take every run of the newest run's experiment
            (`results/<name>/*`), as a comparison of strategies wants.
    """
    if env := os.environ.get(ENV, "").strip():
        return run_folders([p for p in env.split(os.pathsep) if p])
    candidates = [Path(root)] if root else [Path("results"), Path("..") / "results"]
    base = next((c for c in candidates if c.is_dir()), None)
    runs = _runs_below(base) if base else []
    if not runs:
        raise ResultsError(f"no run under {' or '.join(map(str, candidates))}; run `make run` or `hpo run SPEC`, "
                           f"or set {ENV}=path/to/run[:path/to/run...]")
    newest = max(runs, key=_started)
    return sorted(r for r in runs if r.parent == newest.parent) if siblings else [newest]


def _started(folder: Path) -> tuple[str, float]:
    """When a run started (whole seconds, from experiment.json), ties broken by its last write."""
    path = folder / META
    try:
        return json.loads(path.read_text()).get("started_at") or "", path.stat().st_mtime
    except (OSError, ValueError):
        return "", 0.0


# --- loading -----------------------------------------------------------------------------------

def load_runs(paths: str | Path | Iterable[str | Path]) -> Runs:
    """Loads run folders (see `run_folders`) into one `Runs`.

    `runs` has, per run: run (its run id), path, name, family, setup, searcher, scheduler, seed
    (the spec's), searcher_seed, spec_hash, metric, mode, status (experiment.json's: finished,
    failed, interrupted, or running for a run in progress or one whose driver died), partial
    (history only from flushed parts: the run did not close), started_at, ended_at, cpu and gpu
    (requested per trial), budget_trials, budget_time_s, trials and a count per trial status,
    best_trial, best_score, and the test evaluation: test_metric, valid, test_score, gap.
    """
    loaded = [_load_one(folder) for folder in run_folders(paths)]
    labels = _unique([row["run"] for row, *_ in loaded])
    rows, trials, history, meta = [], [], [], {}
    for label, (row, t, h, m) in zip(labels, loaded):
        row["run"] = label
        keys = {c: row[c] for c in RUN_COLUMNS}
        trials.append(_lead(t, keys))
        history.append(_lead(h, keys))
        rows.append(row)
        meta[label] = m
    return Runs(pd.DataFrame(rows), _concat(trials), _concat(history), meta)


def _load_one(folder: Path) -> tuple[dict[str, Any], pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    try:
        meta = json.loads((folder / META).read_text())
    except (OSError, ValueError) as exc:
        raise ResultsError(f"{folder / META}: cannot read it ({exc})") from None
    version = meta.get(SCHEMA_KEY, SCHEMA_VERSION)
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise ResultsError(f"{folder}: results {SCHEMA_KEY} {version!r}, newer than this hpo-orchestrator reads "
                           f"({SCHEMA_VERSION}); upgrade it to analyse this run")
    if (folder / TRIALS).is_file():
        trials, history = load(folder)
    else:  # the driver died before the first flush: a run without trials
        trials, history = pd.DataFrame({"trial_id": pd.Series(dtype=str)}), pd.DataFrame()
    history = _with_elapsed(history, trials)
    return _run_row(folder, meta, trials), trials, history, meta


def _run_row(folder: Path, meta: dict[str, Any], trials: pd.DataFrame) -> dict[str, Any]:
    spec = meta.get("spec") or {}
    searcher, scheduler = spec.get("searcher") or {}, spec.get("scheduler") or {}
    metric = meta.get("metric") or spec.get("metric") or {}
    evaluation = meta.get("evaluation") or {}
    mode = metric.get("mode")
    statuses = trials["status"].value_counts() if "status" in trials else pd.Series(dtype=int)
    best = best_trials_of(trials, mode, 1) if mode else trials.iloc[0:0]
    return {
        "run": meta.get("run_id") or folder.name,
        "path": str(folder),
        "name": meta.get("name"),
        "family": spec.get("family"),
        "setup": f"{searcher.get('name')}/{scheduler.get('name')}",
        "searcher": searcher.get("name"),
        "scheduler": scheduler.get("name"),
        "seed": meta.get("seed", spec.get("seed")),
        "searcher_seed": searcher["seed"] if searcher.get("seed") is not None else meta.get("seed"),
        "spec_hash": meta.get("spec_hash"),
        "metric": metric.get("name"),
        "mode": mode,
        "status": meta.get("status"),
        "partial": not (folder / HISTORY).is_file(),
        "started_at": pd.to_datetime(meta.get("started_at"), utc=True),
        "ended_at": pd.to_datetime(meta.get("ended_at"), utc=True),
        "cpu": (spec.get("resources") or {}).get("cpu", 1.0),
        "gpu": (spec.get("resources") or {}).get("gpu", 0.0),
        "budget_trials": (spec.get("budget") or {}).get("trials"),
        "budget_time_s": (spec.get("budget") or {}).get("time_s"),
        "trials": len(trials),
        **{s: int(statuses.get(s, 0)) for s in ("completed", "stopped", "errored", "running", "pending")},
        "best_trial": best["trial_id"].iloc[0] if len(best) else None,
        "best_score": float(best["score"].iloc[0]) if len(best) else np.nan,
        "test_metric": evaluation.get("test_metric"),
        "valid": evaluation.get("valid"),
        "test_score": evaluation.get("test_score"),
        "gap": evaluation.get("gap"),
        # several metrics (orchestrator.results.pareto): their names, and the front's size
        "objectives": ", ".join(o["name"] for o in meta["objectives"]) if meta.get("objectives") else None,
        "pareto": int(trials["pareto"].fillna(False).astype(bool).sum()) if "pareto" in trials else None,
    }


def _with_elapsed(history: pd.DataFrame, trials: pd.DataFrame) -> pd.DataFrame:
    """Adds `elapsed_s` to each history row: see the module docstring for why not `timestamp`."""
    if history.empty:
        return history.assign(elapsed_s=pd.Series(dtype=float))
    started = history["trial_id"].map(trials.set_index("trial_id")["started_at"]) if "started_at" in trials else None
    at = history["timestamp"]
    if started is not None and "time_total_s" in history:
        precise = started + pd.to_timedelta(history["time_total_s"].astype(float), unit="s")
        at = precise.where(precise.notna() & (precise > at), at)
    t0 = pd.Series([trials["started_at"].min() if "started_at" in trials else pd.NaT, at.min()]).min()
    return history.assign(elapsed_s=(at - t0).dt.total_seconds())


def _lead(df: pd.DataFrame, keys: dict[str, Any]) -> pd.DataFrame:
    return pd.concat([pd.DataFrame({k: [v] * len(df) for k, v in keys.items()}, index=df.index), df], axis=1)


def _concat(frames: list[pd.DataFrame]) -> pd.DataFrame:
    non_empty = [f for f in frames if len(f)]
    return pd.concat(non_empty, ignore_index=True) if non_empty else frames[0].iloc[0:0]


def _unique(labels: list[str]) -> list[str]:
    """Run ids are unique per spec and second; two copies of a run get `#2`, `#3` suffixes."""
    seen: dict[str, int] = {}
    out = []
    for label in labels:
        seen[label] = seen.get(label, 0) + 1
        out.append(label if seen[label] == 1 else f"{label}#{seen[label]}")
    return out


# --- one run's trials --------------------------------------------------------------------------

def best_trials_of(trials: pd.DataFrame, mode: str, k: int) -> pd.DataFrame:
    """The k trials with the best score (trials without one last), best first. In a run with
    constraints, trials not known to meet them (`feasible` false or null) come after every feasible
    one, as the run itself judged its best (orchestrator.results.constraints)."""
    if "score" not in trials:
        return trials.iloc[0:0]
    ranked = trials.sort_values("score", ascending=mode == "min", na_position="last", kind="stable")
    if "feasible" in ranked and ranked["feasible"].notna().any():
        ranked = ranked.sort_values("feasible", key=lambda f: ~f.eq(True), kind="stable")
    return ranked.head(k)


def best_trials(runs: Runs, k: int = 5) -> pd.DataFrame:
    """Top-k trials of each run: rank, trial_id, status, score and where it was reached, wall time
    and the config (parameters the run did not vary are left out); `test_score` is set on the trial
    that was refitted and scored on the test split after the search (experiment.json)."""
    out = []
    for row in runs.runs.itertuples():
        t = runs.trials[runs.trials["run"] == row.run]
        top = best_trials_of(t, row.mode, k).copy()
        top.insert(1, "rank", range(1, len(top) + 1))
        top["test_score"] = np.where(top["trial_id"] == (runs.meta[row.run].get("evaluation") or {}).get("trial_id"),
                                     row.test_score if row.test_score is not None else np.nan, np.nan)
        out.append(top)
    top = _concat(out) if out else runs.trials.iloc[0:0]
    keep = ["run", "rank", "trial_id", "status", "score", "score_iteration", "iterations", "wall_s", "test_score"]
    return top[[c for c in keep if c in top] + [f"config.{p}" for p in varied_params(runs)]].reset_index(drop=True)


def varied_params(runs: Runs) -> list[str]:
    """The parameters that took more than one value across the trials (constants left out)."""
    return [c.removeprefix("config.") for c in runs.trials.columns
            if c.startswith("config.") and runs.trials[c].dropna().astype(str).nunique() > 1]


def learning_curves(runs: Runs, metric: str | None = None) -> pd.DataFrame:
    """Each trial's curve of `metric` (default: the tuned one) by iteration, with the trial's final
    status (stopped and errored trials included) and `last` on its final report, so a plot can
    mark where a trial ended and why.

    A curve is the trial's final lineage (`final_lineage`): what its final state went through. A
    trial retried, resumed or restarted by PBT reported some iterations more than once, and after
    a PBT exploit its early iterations are another trial's; history.parquet keeps every one of
    those reports (column `attempt`), the curve keeps the ones its final state descends from."""
    metric = metric or runs.metric
    column = f"metric.{metric}"
    if column not in runs.history:
        known = sorted(c.removeprefix("metric.") for c in runs.history if c.startswith("metric."))
        raise ResultsError(f"no metric {metric!r} in the history; reported: {', '.join(known) or 'nothing'}")
    history = final_lineage(runs.history)
    h = history[["run", "trial_id", "iteration", "elapsed_s", column]].rename(columns={column: "value"})
    status = runs.trials.set_index(["run", "trial_id"])["status"]
    h = h.join(status, on=["run", "trial_id"]).fillna({"status": "running"})
    h = h.sort_values(["run", "trial_id", "iteration"], kind="stable")
    h["last"] = ~h.duplicated(["run", "trial_id"], keep="last")
    return h.reset_index(drop=True)


def final_lineage(history: pd.DataFrame) -> pd.DataFrame:
    """Each trial's curve as history rows: the rows of its last attempt, preceded, when that attempt
    started from a checkpoint (`restored_from` = `<trial>@<k>`), by the rows, up to k, of the attempt
    that last reported iteration k before this attempt began, followed back the same way. An attempt
    that started afresh stands alone. A row can be in several curves (PBT clones share their
    source's early rows): in the frame returned, `trial_id` is the curve's trial and `reported_by`
    the trial that reported the row. History without attempts (results contract version 1) is one
    attempt per trial: every row is its own trial's."""
    if "attempt" not in history or history.empty:
        return history.assign(reported_by=history["trial_id"]) if "trial_id" in history else history
    key = ["run", "trial_id"] if "run" in history else ["trial_id"]
    groups = {k if isinstance(k, tuple) else (k,): g for k, g in history.groupby(key, sort=False)}

    def follow(group: tuple, upto: int | None, before: Any, depth: int) -> list[pd.Index]:
        h = groups.get(group)
        if h is None or depth > len(groups):  # an unknown source, or a cycle that cannot happen
            return []
        if before is not None and "timestamp" in h:
            h = h[h["timestamp"] < before]  # what the source had reported when it was restored from
        if upto is not None:
            h = h[h["iteration"] <= upto]
        if h.empty:
            return []
        # The attempt that made the checkpoint: the latest to report its iteration. Not simply the latest
        # attempt: a PBT trial paused at k goes on from its own checkpoint@k, and a clone of that
        # checkpoint taken later finds the source's newer attempt, which reported only iterations > k.
        latest = h if upto is None else h[h["iteration"] == h["iteration"].max()]
        mine = h[h["attempt"] == latest["attempt"].max()]
        origin = mine["restored_from"].dropna() if "restored_from" in mine else ()
        if not len(origin):
            return [mine.index]
        source, _, k = str(origin.iloc[0]).rpartition("@")
        start = mine["timestamp"].min() if "timestamp" in mine else None
        return [*follow((*group[:-1], source), int(k), start, depth + 1), mine.index]

    curves = []
    for group in groups:
        rows = history.loc[[i for index in follow(group, None, None, 0) for i in index]]
        curves.append(rows.assign(reported_by=rows["trial_id"], trial_id=group[-1]))
    return pd.concat(curves, ignore_index=True)


def feasibility_lines(runs: Runs, run: str) -> list[str]:
    """With `constraints:`, how many of the run's trials met them (results.constraints.feasibility_line)."""
    bounds = (runs.meta.get(run, {}).get("spec") or {}).get("constraints") or []
    if not bounds:
        return []
    trials = runs.trials[runs.trials["run"] == run]
    column = trials[FEASIBLE] if FEASIBLE in trials else [None] * len(trials)
    verdicts = [None if pd.isna(v) else bool(v) for v in column]
    constraints = [Constraint(c["metric"], c.get("max"), c.get("min")) for c in bounds]
    return [f"  {feasibility_line(constraints, verdicts)}"]


def describe(runs: Runs) -> list[str]:
    """Summary lines for `hpo results`: what ran, how trials ended, the best and the test gap."""
    lines = []
    for r in runs.runs.itertuples():
        state = f"{r.status}{', partial: history from flushed parts only' if r.partial else ''}"
        lines.append(f"run {r.run} ({r.name}, family {r.family}): {state}")
        lines.append(f"  searcher {r.searcher}, scheduler {r.scheduler}, seed {r.seed}, spec {r.spec_hash}")
        lines.append(f"  {r.trials} trials: {r.completed} completed, {r.stopped} stopped early, {r.errored} errored"
                     + (f", {r.running + r.pending} unfinished" if r.running + r.pending else ""))
        if stop_reason := runs.meta.get(r.run, {}).get("stop_reason"):  # budget.stop, cpu_hours, gpu_hours
            lines.append(f"  search ended early, {stop_reason}")
        lines += feasibility_lines(runs, r.run)
        if r.best_trial is not None:
            lines.append(f"  best {r.metric}={r.best_score:.6g} (trial {r.best_trial}, mode {r.mode})")
        if r.objectives:
            lines.append(f"  Pareto front of {r.objectives}: {r.pareto} trials (trials.parquet, where pareto is "
                         f"true); 'best' above is on {r.metric} alone")
        if r.test_score is not None and not pd.isna(r.test_score):
            gap = f", gap {r.gap:+.4g}" if r.gap is not None and not pd.isna(r.gap) else ""
            lines.append(f"  test {r.test_metric}={r.test_score:.6g} after refitting the best config "
                         f"(its {r.metric}={r.valid:.6g}{gap})")
    return lines

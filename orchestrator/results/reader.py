"""Reading a run folder back: `load(run_dir)` -> (trials, history), for a finished run or for one
whose driver died (from its flushed history parts). Analysis builds on it (orchestrator.analysis)."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from orchestrator.results.contract import EXPERIMENT, HISTORY, PARTS, TRIALS
from orchestrator.results.parquet import frame, merge, part_files
from orchestrator.results.rundir import read_json


def load(run_dir: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(trials, history) of a finished run, or of a crashed one from its flushed parts.

    Without trials.parquet (a run that died, or whose disk filled, before its first full
    flush), the trials table is rebuilt from the history: one row per trial with status
    `unknown`, its iterations, last metrics and config, and its score when experiment.json
    names the metric.
    """
    run_dir = Path(run_dir)
    if (run_dir / HISTORY).exists():
        history = pd.read_parquet(run_dir / HISTORY)
    else:
        history = merge(part_files(run_dir, PARTS))
    if (run_dir / TRIALS).exists():
        return pd.read_parquet(run_dir / TRIALS), history
    if history.empty:
        raise FileNotFoundError(f"{run_dir} holds neither {TRIALS} nor any history: no trial reported anything")
    return _trials_from_history(history, _target(run_dir)), history


def _target(run_dir: Path) -> tuple[str, str] | None:
    try:
        metric = read_json(run_dir / EXPERIMENT)["metric"]
        return metric["name"], metric["mode"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _trials_from_history(history: pd.DataFrame, target: tuple[str, str] | None) -> pd.DataFrame:
    rows = []
    # Rows are in the order they were reported: a trial's last row is its latest report.
    for trial_id, h in history.groupby("trial_id", sort=True):
        last = h.iloc[-1]
        row = {"trial_id": trial_id, "status": "unknown", "iterations": int(last["iteration"]),
               "score": None, "score_iteration": None}
        if target and f"metric.{target[0]}" in h:
            scores = h[f"metric.{target[0]}"].astype(float)
            scores = scores[scores.map(math.isfinite)]
            if len(scores):
                at = scores.idxmin() if target[1] == "min" else scores.idxmax()
                row.update(score=float(scores[at]), score_iteration=int(h.loc[at, "iteration"]))
        row.update({c: last[c] for c in h.columns if c.startswith(("config.", "metric."))})
        rows.append(row)
    return frame(rows)

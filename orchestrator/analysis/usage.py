"""Where trials ran and what they held: GPU-hours and allocation per run and per node, a timeline.

Each trial's row in trials.parquet says which node ran it and what Ray granted it (`cpus`, `gpus`,
`gpu_ids`: recorded inside the worker, see orchestrator.trial.placement). From those alone:

- GPU-hours = sum of gpus x wall_s / 3600 (a half-GPU trial counts half).
- Allocation = resource-seconds held by trials / (resources seen x the run's span): the share of
  the run's wall time during which the GPUs the run used were granted to some trial. It is not
  SM utilisation (Ray does not record it), and the capacity is the GPUs trials were seen on,
  since trials.parquet does not know a node's idle GPUs. The span is the run's, first trial start
  to last trial end, so a node that idled while others worked shows it.
- Concurrency: mean (trial-seconds / span) and peak trials running at once.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from orchestrator.analysis.runs import Runs

NODE = "node_ip"
USAGE_COLUMNS = ("trials", "span_s", "trial_s", "mean_concurrent", "peak_concurrent", "cpu_s", "gpu_s", "gpu_hours",
                 "gpus_seen", "gpu_allocation")
TIMELINE_COLUMNS = ("run", NODE, "lane", "start_s", "end_s", "trial_id", "status", "gpu_ids")


def usage(runs: Runs, by: str = "run") -> pd.DataFrame:
    """Resource use per run (`by="run"`) or per run and node (`by="node"`).

    Columns: run[, node_ip], trials, span_s, trial_s (summed wall time), mean_concurrent,
    peak_concurrent, cpu_s, gpu_s, gpu_hours, gpus_seen (distinct GPU ids), gpu_allocation
    (NaN without GPUs)."""
    if by not in ("run", "node"):
        raise ValueError(f"by must be 'run' or 'node', got {by!r}")
    t = _timed(runs)
    keys = ["run"] if by == "run" else ["run", NODE]
    if t.empty:
        return pd.DataFrame(columns=[*keys, *USAGE_COLUMNS])
    span = t.groupby("run")["end_s"].max() - t.groupby("run")["start_s"].min()
    rows = []
    for key, g in t.groupby(keys, sort=False, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        run_span = float(span[key[0]])
        gpu_ids = {(n, i) for n, ids in zip(g[NODE], g["gpu_ids"]) for i in _ids(ids)}
        gpu_s = float((g["gpus"] * g["wall"]).sum())
        rows.append({
            **dict(zip(keys, key)),
            "trials": len(g),
            "span_s": run_span,
            "trial_s": float(g["wall"].sum()),
            "mean_concurrent": float(g["wall"].sum()) / run_span if run_span > 0 else np.nan,
            "peak_concurrent": peak(g["start_s"].to_numpy(), g["end_s"].to_numpy()),
            "cpu_s": float((g["cpus"] * g["wall"]).sum()),
            "gpu_s": gpu_s,
            "gpu_hours": gpu_s / 3600,
            "gpus_seen": len(gpu_ids),
            "gpu_allocation": gpu_s / (len(gpu_ids) * run_span) if gpu_ids and run_span > 0 else np.nan,
        })
    return pd.DataFrame(rows)


def timeline(runs: Runs) -> pd.DataFrame:
    """One bar per trial for a Gantt chart: run, node_ip, lane (trials on a node that overlap in
    time get different lanes), start_s, end_s (seconds since the run's first trial start),
    trial_id, status, gpu_ids."""
    t = _timed(runs)
    if t.empty:
        return pd.DataFrame(columns=list(TIMELINE_COLUMNS))
    t["lane"] = 0
    for _, g in t.groupby(["run", NODE], sort=False, dropna=False):
        t.loc[g.index, "lane"] = lanes(g["start_s"].to_numpy(), g["end_s"].to_numpy())
    return t[list(TIMELINE_COLUMNS)].reset_index(drop=True)


def _timed(runs: Runs) -> pd.DataFrame:
    """Trials that started, with start/end in seconds from their run's first start and the grant
    filled in from the spec where the worker did not record it."""
    if "started_at" not in runs.trials or runs.trials["started_at"].isna().all():
        return pd.DataFrame()
    t = runs.trials[runs.trials["started_at"].notna()].copy()
    requested = runs.runs.set_index("run")[["cpu", "gpu"]]
    t0 = t.groupby("run")["started_at"].transform("min")
    t["start_s"] = (t["started_at"] - t0).dt.total_seconds()
    t["wall"] = t["wall_s"].astype(float).fillna(0.0)
    t["end_s"] = t["start_s"] + t["wall"]
    for column, spec_column in (("cpus", "cpu"), ("gpus", "gpu")):
        given = t[column].astype(float) if column in t else pd.Series(np.nan, index=t.index)
        t[column] = given.fillna(t["run"].map(requested[spec_column]))
    for column in (NODE, "gpu_ids"):
        if column not in t:
            t[column] = None
    return t


def _ids(value) -> list[str]:
    """'0,1' -> ['0', '1']: the CUDA_VISIBLE_DEVICES a trial saw."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return []
    return [i.strip() for i in str(value).split(",") if i.strip()]


def peak(start: np.ndarray, end: np.ndarray) -> int:
    """Most intervals open at once (an interval ending exactly when another starts does not overlap)."""
    events = sorted([(s, 1) for s in start] + [(e, -1) for e in end], key=lambda ev: (ev[0], ev[1]))
    running = best = 0
    for _, step in events:
        running += step
        best = max(best, running)
    return best


def lanes(start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """Greedy interval partitioning: each interval gets the lowest lane free at its start."""
    free_at: list[float] = []
    out = np.zeros(len(start), dtype=int)
    for i in np.argsort(start, kind="stable"):
        lane = next((k for k, f in enumerate(free_at) if f <= start[i]), len(free_at))
        if lane == len(free_at):
            free_at.append(end[i])
        else:
            free_at[lane] = end[i]
        out[i] = lane
    return out

"""Comparing strategies on equal budget: best-so-far curves, their spread over seeds, mean ranks.

The presentation follows Syne Tune's benchmarking and HPOBench: for each run, the best value of
the metric seen so far ("anytime" performance) after every reported result, against wall time
and against compute; runs of one setup (searcher/scheduler) repeated over seeds are summarised by
the median and the interquartile range at common points of the x axis (a mean would let one
lucky seed decide); and setups are ranked within each seed, the ranks then averaged, so that
seeds of different difficulty weigh the same. Where the optimum is known, regret (distance to
it) replaces the raw value.

Compute is what Ray *reserved*, not what was used: a trial holds `cpus` (and `gpus`) from its
start to its end, so CPU-seconds after t is the sum over trials of cpus x their time running
before t. Trial-iterations count reported results. Every reported value counts, at any fidelity,
as in Syne Tune: a strategy that stops trials early is credited with what it saw.

Ranks pair runs across setups by the spec's `seed` and use only the seeds every setup ran: a seed
that only one setup ran would rank it first for free. (`budget_notes` says when seeds differ.)
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd

from orchestrator.analysis.runs import RUN_COLUMNS, Runs
from orchestrator.errors import ResultsError

Axis = Literal["elapsed_s", "trial_iterations", "cpu_s", "gpu_s"]
AXES: dict[str, str] = {
    "elapsed_s": "wall time since the first trial started (s)",
    "trial_iterations": "trial-iterations (reported results)",
    "cpu_s": "CPU-seconds reserved by trials",
    "gpu_s": "GPU-seconds reserved by trials",
}


def known_optimum(runs: Runs) -> float | None:
    """The optimum of the runs' metric where their family knows it (the `synthetic` Branin family
    writes it into experiment.json as `optima`) and every run agrees, else None; pass your own to
    `anytime(..., optimum=...)` for other tasks."""
    found = {(runs.meta[run].get("optima") or {}).get(runs.metric) for run in runs.runs["run"]}
    return float(found.pop()) if len(found) == 1 and None not in found else None


def anytime(runs: Runs, optimum: float | None = None) -> pd.DataFrame:
    """Best-so-far curves: one row per reported result of each run, in time order.

    Columns: `RUN_COLUMNS`, trial_id, the x axes (`elapsed_s`, `trial_iterations`, `cpu_s`, and
    `gpu_s` when any trial held a GPU), `value` (the result's metric), `best` (best so far in the
    run) and, with an optimum, `regret` (how far `best` is from it; may dip below 0 on a noisy
    metric).
    """
    metric, mode = runs.metric, runs.mode
    column = f"metric.{metric}"
    if runs.history.empty or column not in runs.history:
        raise ResultsError(f"no reported {metric!r} in these runs: nothing to draw a curve from")
    curves = []
    for run in runs.runs.itertuples():
        h = runs.history[runs.history["run"] == run.run].sort_values("elapsed_s", kind="stable")
        t = runs.trials[runs.trials["run"] == run.run]
        value = h[column].astype(float)
        best = (value.cummin() if mode == "min" else value.cummax()).ffill()
        at = h["elapsed_s"].to_numpy()
        curve = h[[*RUN_COLUMNS, "trial_id", "elapsed_s"]].assign(
            trial_iterations=np.arange(1, len(h) + 1),
            cpu_s=reserved(t, h, at, "cpus", run.cpu),
            gpu_s=reserved(t, h, at, "gpus", run.gpu),
            value=value, best=best)
        curves.append(curve)
    out = pd.concat(curves, ignore_index=True)
    if not (out["gpu_s"] > 0).any():
        out = out.drop(columns="gpu_s")
    if optimum is not None:
        out["regret"] = out["best"] - optimum if mode == "min" else optimum - out["best"]
    return out


def reserved(trials: pd.DataFrame, history: pd.DataFrame, at: np.ndarray, column: str,
             requested: float) -> np.ndarray:
    """Resource-seconds (`cpus` or `gpus` x time) all trials of a run had reserved by each time in
    `at` (seconds since the run's first trial start). A trial without a recorded grant counts what
    the spec requested; one without an end (a crashed run) ends at its last report."""
    if trials.empty or at.size == 0:
        return np.zeros(at.size)
    t0 = trials["started_at"].min()
    start = (trials["started_at"] - t0).dt.total_seconds().to_numpy()
    last = history.groupby("trial_id")["elapsed_s"].max()
    end = (trials["ended_at"] - t0).dt.total_seconds().to_numpy()
    end = np.where(np.isnan(end), trials["trial_id"].map(last).to_numpy(dtype=float), end)
    end = np.where(np.isnan(end), start, end)
    if column in trials:
        grant = trials[column].astype(float).fillna(requested).to_numpy()
    else:
        grant = np.full(len(trials), requested)
    held = np.clip(at[:, None] - start[None, :], 0, np.maximum(end - start, 0)[None, :])
    return np.nan_to_num(held) @ np.nan_to_num(grant)


def on_grid(curves: pd.DataFrame, x: Axis = "elapsed_s", y: str = "best", points: int = 60,
            log: bool = False) -> pd.DataFrame:
    """Each run's step curve read at common x points: index x, one column per run (NaN before the
    run's first result; after its last, it keeps its final value)."""
    if x not in curves:
        raise ResultsError(f"no {x} in the curves (no trial held a GPU?); use one of: "
                           f"{', '.join(a for a in AXES if a in curves)}")
    lo, hi = curves[x].min(), curves[x].max()
    grid = np.geomspace(max(lo, 1e-9), hi, points) if log and hi > 0 else np.linspace(lo, hi, points)
    wide = {}
    for run, c in curves.groupby("run", sort=False):
        xs, ys = c[x].to_numpy(), c[y].to_numpy()
        idx = np.searchsorted(xs, grid, side="right") - 1
        wide[run] = np.where(idx >= 0, ys[np.clip(idx, 0, None)], np.nan)
    return pd.DataFrame(wide, index=pd.Index(grid, name=x))


def aggregate(curves: pd.DataFrame, x: Axis = "elapsed_s", y: str = "best", points: int = 60,
              log: bool = False) -> pd.DataFrame:
    """Median and interquartile range of `y` over each setup's runs (its seeds) at common x points.

    Columns: setup, x, median, q25, q75, runs (how many runs have a value there)."""
    wide = on_grid(curves, x, y, points, log)
    setup_of = curves.drop_duplicates("run").set_index("run")["setup"]
    out = []
    for setup, members in setup_of.groupby(setup_of, sort=False):
        values = wide[members.index].to_numpy()
        has = ~np.isnan(values)
        with np.errstate(all="ignore"):
            q = np.full((3, len(wide)), np.nan)
            rows = has.any(axis=1)
            q[:, rows] = np.nanquantile(values[rows], [0.25, 0.5, 0.75], axis=1)
        out.append(pd.DataFrame({"setup": setup, x: wide.index, "median": q[1], "q25": q[0], "q75": q[2],
                                 "runs": has.sum(axis=1)}))
    return pd.concat(out, ignore_index=True)


def ranks(curves: pd.DataFrame, mode: str, x: Axis = "elapsed_s", y: str = "best", points: int = 60,
          log: bool = False) -> pd.DataFrame:
    """Mean rank of each setup over time (1 = best): setups ranked within each seed that every
    setup ran, at every x point (a setup with no result yet ranks last, ties share), then averaged
    over those seeds.

    Columns: setup, x, mean_rank, seeds."""
    wide = on_grid(curves, x, y, points, log)
    keys = paired(curves.drop_duplicates("run").set_index("run")[["setup", "seed"]])
    per_seed = []
    for _, members in keys.groupby("seed", sort=False):
        # Several runs of one setup and seed: their median stands for the setup.
        by_setup = wide[members.index].T.groupby(members["setup"]).median().T
        per_seed.append(by_setup.rank(axis=1, ascending=mode == "min", na_option="bottom"))
    stacked = pd.concat(per_seed, keys=range(len(per_seed)), names=["seed_group", x])
    mean = stacked.groupby(level=x, sort=True).mean()
    seeds = stacked.notna().groupby(level=x, sort=True).sum()
    long = mean.stack().rename("mean_rank").reset_index().rename(columns={"level_1": "setup"})
    long["seeds"] = seeds.stack().to_numpy()
    return long[["setup", x, "mean_rank", "seeds"]].sort_values(["setup", x], ignore_index=True)


def paired(keys: pd.DataFrame) -> pd.DataFrame:
    """The rows (one per run: setup, seed) whose seed every setup ran."""
    setups = keys.groupby("seed")["setup"].nunique()
    common = setups.index[setups == keys["setup"].nunique()]
    if common.empty:
        raise ResultsError("no seed was run by every setup, so runs cannot be ranked against each other; "
                           "run each setup with the same seeds (--set seed=N)")
    return keys[keys["seed"].isin(common)]


def compare(runs: Runs, optimum: float | None = None, x: Axis = "elapsed_s") -> pd.DataFrame:
    """One row per setup, best first: searcher, scheduler, runs and seeds, the best score (median
    and IQR over seeds), regret where an optimum is given, the wall time, trial-iterations and
    CPU-seconds (GPU-seconds when used) each run took to first reach its final best (medians),
    the final mean rank and the mean rank averaged over the `x` axis (rewards getting there early)."""
    curves = anytime(runs, optimum)
    mode = runs.mode
    finals = []
    for run, c in curves.groupby("run", sort=False):
        final = c["best"].iloc[-1]
        reached = c[c["best"] == final].iloc[0]
        finals.append({"run": run, "setup": c["setup"].iloc[0], "seed": c["seed"].iloc[0], "final": final,
                       **{f"{a}_to_best": reached[a] for a in AXES if a in c},
                       **({"regret": c["regret"].iloc[-1]} if optimum is not None else {})})
    finals = pd.DataFrame(finals)
    final_rank = paired(finals.set_index("run")[["setup", "seed", "final"]])
    final_rank = final_rank.pivot_table(index="seed", columns="setup", values="final", aggfunc="median")
    final_rank = final_rank.rank(axis=1, ascending=mode == "min", na_option="bottom").mean()
    over_time = ranks(curves, mode, x).groupby("setup")["mean_rank"].mean()
    g = finals.groupby("setup", sort=False)
    table = pd.DataFrame({
        "searcher": runs.runs.groupby("setup")["searcher"].first(),
        "scheduler": runs.runs.groupby("setup")["scheduler"].first(),
        "runs": g.size(),
        "seeds": g["seed"].agg(lambda s: ",".join(map(str, sorted(s.unique())))),
        "best_median": g["final"].median(),
        "best_q25": g["final"].quantile(0.25),
        "best_q75": g["final"].quantile(0.75),
        **({"regret_median": g["regret"].median()} if optimum is not None else {}),
        **{f"{a}_to_best": g[f"{a}_to_best"].median() for a in AXES if f"{a}_to_best" in finals},
        "final_rank": final_rank,
        f"mean_rank_over_{x}": over_time,
    })
    table = table.dropna(subset=["runs"]).sort_values(["final_rank", "best_median"],
                                                      ascending=[True, mode == "min"])
    return table.rename_axis("setup").reset_index()


def budget_notes(runs: Runs) -> list[str]:
    """What makes a comparison unequal: different budgets, unpaired seeds, unfinished runs."""
    notes = []
    r = runs.runs
    for column, what in (("budget_trials", "budget.trials"), ("budget_time_s", "budget.time_s"),
                         ("cpu", "resources.cpu"), ("gpu", "resources.gpu")):
        if r[column].astype(str).nunique() > 1:
            values = ", ".join(f"{s}: {v}" for s, v in r.groupby("setup")[column].first().items())
            notes.append(f"not on equal budget: {what} differs ({values})")
    seeds = r.groupby("setup")["seed"].agg(lambda s: frozenset(s))
    if seeds.nunique() > 1:
        notes.append("setups ran different seeds: " + "; ".join(f"{s}: {sorted(v)}" for s, v in seeds.items())
                     + " (ranks use the seeds every setup ran)")
    if unfinished := list(r.loc[r["status"] != "finished", "run"]):
        notes.append(f"not finished (failed, interrupted or crashed): {', '.join(unfinished)}")
    return notes

"""What a finished run reports: the `RunSummary` the runner returns, and the lines `hpo run` prints.

The CLI and the cluster job's entry point (orchestrator.job_entry) print the same lines, so
both read them from here rather than one calling the other.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping


@dataclass(frozen=True)
class RunSummary:
    run_dir: Path
    run_id: str
    metric: str
    counts: dict[str, int]
    best: dict[str, Any] | None
    evaluation: dict[str, Any] | None = None  # refit on train+valid and test score; see orchestrator.refit
    status: str = "finished"  # as experiment.json: finished | failed | interrupted
    error: str | None = None  # why it failed or was interrupted


def lines(summary: RunSummary) -> list[str]:
    """The run's counts, its best trial and config, the test score, and where the results are."""
    c = summary.counts
    ended = "" if summary.status == "finished" else f" ({summary.status})"
    extra = "".join(f", {c[k]} {what}" for k, what in (("interrupted", "interrupted"), ("not_started", "never started"))
                    if c.get(k))
    out = [f"run {summary.run_id}{ended}: {c['completed']} completed, {c['stopped']} stopped early, "
           f"{c['errored']} errored{extra}"]
    best = summary.best
    if best:
        cfg = {k.removeprefix("config."): v for k, v in best.items() if k.startswith("config.")}
        out.append(f"best trial {best['trial_id']}: {summary.metric}={best['score']:.6g} "
                   f"at iteration {best['score_iteration']}")
        out.append(f"  config: {json.dumps(cfg, default=str)}")
    out += evaluation_lines(summary.evaluation)
    out.append(f"results: {summary.run_dir}/ (trials.parquet, history.parquet, experiment.json)")
    return out


def report(summary: RunSummary) -> int:
    """Prints a finished run's summary; returns its exit code, 0. (A failed or interrupted run
    raises RunError carrying its summary, which the CLI and the job entry print the same way.)"""
    print("\n".join(lines(summary)))
    return 0


def evaluation_lines(entry: Mapping[str, Any] | None) -> list[str]:
    """The refit's test score (and the nested estimate) as summary lines."""
    if not entry:
        return []
    out = []
    if entry.get("test_score") is not None:
        gap = entry.get("gap")
        gap_text = f", gap {gap:+.4g}" if gap is not None else ""
        out.append(f"test {entry['test_metric']}={entry['test_score']:.6g} (best config refitted on train+valid; "
                     f"its {entry['metric']}={entry['valid']:.6g}{gap_text})")
    out += refit_lines(entry.get("refit"), entry.get("trial_id"))
    nested = entry.get("nested")
    if nested and nested.get("mean") is not None:
        out.append(f"nested estimate of the tuning procedure: {entry['test_metric']}={nested['mean']:.6g} "
                     f"± {nested['std']:.3g} over {nested['outer_folds']} outer folds "
                     f"(their searches' best {entry['metric']}: {nested['mean_valid']:.6g})")
    if entry.get("error"):
        out.append(f"evaluation: {entry['error']}")
    return out


def refit_lines(plan: Mapping[str, Any] | None, trial_id: str | None) -> list[str]:
    """How the refit trained: a PBT schedule as the parameters that changed and where."""
    if not plan or plan.get("method") != "replay-schedule":
        return []
    schedule = plan["schedule"]
    changed = sorted({k for seg in schedule for k, v in seg["config"].items() if v != schedule[0]["config"].get(k)})
    steps = "; ".join(f"from iteration {seg['from_iteration'] + 1}: "
                      + (", ".join(f"{k}={_short(seg['config'].get(k))}" for k in changed) or "its config")
                      for seg in schedule)
    configs = f"{len(schedule)} config{'s' if len(schedule) > 1 else ''}"
    return [f"  refit replayed trial {trial_id}'s PBT schedule ({configs}): {steps}"]


def _short(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)

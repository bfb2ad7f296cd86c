"""What a finished run reports: the `RunSummary` the runner returns, and the lines `hpo run` prints.

The CLI and the cluster job's entry point (orchestrator.job_entry) print the same lines and give
the same exit codes, so both read them from here rather than one calling the other.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.errors import HpoError, RunError, RunInterrupted, SpecError
from orchestrator.results.contract import JOURNAL

TOP_K = 5  # trials in the table printed after a run


@dataclass(frozen=True)
class RunSummary:
    run_dir: Path
    run_id: str
    metric: str
    counts: dict[str, int]
    best: dict[str, Any] | None
    evaluation: dict[str, Any] | None = None  # refit on train+valid and test score; see orchestrator.run.refit
    status: str = "finished"  # as experiment.json: finished | failed | interrupted
    error: str | None = None  # why it failed or was interrupted
    top: tuple[dict[str, Any], ...] = ()  # the best trials, best first (top_trials)
    pareto: list[dict[str, Any]] | None = None  # several metrics: the front, best first on the first metric
    model: dict[str, Any] | None = None  # experiment.json's `model`: the saved model, or why there is none
    stop_reason: str | None = None  # why the search ended before its budget (budget.stop, cpu_hours, gpu_hours)
    feasibility: str | None = None  # with constraints: how many trials met them (results.constraints.feasibility_line)


def lines(summary: RunSummary) -> list[str]:
    """The run's counts, its best trial and config, the top trials, the test score, and where the
    results are: plain text, for logs (`report` draws the table with rich on a terminal)."""
    out: list[str] = []
    for part in _parts(summary):
        out += _text_lines(part) if not isinstance(part, str) else [part]
    return out


def _parts(summary: RunSummary) -> list:
    """The summary's lines, with the top-trials table as a rich Table in its place."""
    c = summary.counts
    ended = "" if summary.status == "finished" else f" ({summary.status})"
    extra = "".join(f", {c[k]} {what}" for k, what in (("interrupted", "interrupted"), ("not_started", "never started"))
                    if c.get(k))
    out = [f"run {summary.run_id}{ended}: {c['completed']} completed, {c['stopped']} stopped early, "
           f"{c['errored']} errored{extra}"]
    if summary.stop_reason:
        out.append(f"search ended early, {summary.stop_reason}")
    if summary.feasibility:
        out.append(summary.feasibility)
    best = summary.best
    if best:
        cfg = {k.removeprefix("config."): v for k, v in best.items() if k.startswith("config.")}
        out.append(f"best trial {best['trial_id']}: {summary.metric}={best['score']:.6g} "
                   f"at iteration {best['score_iteration']}")
        out.append(f"  config: {json.dumps(cfg, default=str)}")
    if len(summary.top) > 1:  # one trial is the best trial above
        out.append(top_table(summary.top, summary.metric))
    out += pareto_lines(summary.pareto)
    out += evaluation_lines(summary.evaluation)
    out += model_lines(summary.model, summary.run_dir)
    journal = (Path(summary.run_dir) / JOURNAL).is_file()  # `dashboard: true`: and how to open it
    out.append(f"results: {summary.run_dir}/ (trials.parquet, history.parquet, experiment.json"
               + (f", {JOURNAL}: hpo dashboard {summary.run_dir})" if journal else ")"))
    return out


def report(summary: RunSummary) -> int:
    """Prints a finished run's summary; returns its exit code, 0. (A failed or interrupted run
    raises RunError carrying its summary, which the CLI and the job entry print the same way.)"""
    if sys.stdout.isatty():
        from rich.console import Console

        console = Console()
        for part in _parts(summary):
            if isinstance(part, str):
                console.print(part, highlight=False, markup=False, soft_wrap=True)
            else:
                console.print(part)
    else:
        print("\n".join(lines(summary)))
    return 0


def report_failure(exc: BaseException, help_hint: str | None = None) -> int:
    """Prints why a command failed in one line (a failed run's summary first); returns its exit
    code. The one mapping from errors to exit codes, for `hpo` and the cluster job's process:
    a user's mistake (SpecError, InputError, ResultsError) 2, a failed run 1 with its results
    kept, a signal 128 + its number, a disk that refused a write 1; never a traceback."""
    if isinstance(exc, SpecError):
        print(f"error: {exc}", file=sys.stderr)
        if help_hint:
            print(f"(see `{help_hint}`)", file=sys.stderr)
        return exc.exit_code
    if isinstance(exc, RunError):
        if exc.summary is not None:  # the run got going: its counts and best trial so far
            print("\n".join(lines(exc.summary)))
        print(str(exc) if isinstance(exc, RunInterrupted) else f"error: run failed: {exc}", file=sys.stderr)
        return exc.exit_code
    if isinstance(exc, KeyboardInterrupt):  # Ctrl-C before the run's own handling began (data, Ray's start)
        print("interrupted before the run started; nothing was recorded", file=sys.stderr)
        return 130
    if isinstance(exc, HpoError):
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    if isinstance(exc, OSError):  # a full or read-only disk, a file that vanished: the machine's, not a bug
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"error: {exc.strerror or exc}{where}; results written so far are kept", file=sys.stderr)
        return 1
    raise exc


def top_trials(trials, mode: str, k: int = TOP_K) -> tuple[dict[str, Any], ...]:
    """The k best trials among those that ended normally with a finite score (the ones the best
    trial is chosen from: orchestrator.results.writer.ELIGIBLE), best first, as trials.parquet rows with
    only the config parameters that varied across all trials."""
    trials = list(trials)
    ok = [t for t in trials if t.eligible]  # with constraints, the feasible ones only
    ok.sort(key=lambda t: t.score if mode == "min" else -t.score)
    varied = {k for k in {k for t in trials for k in t.config}
              if len({json.dumps(t.config.get(k), default=str) for t in trials}) > 1}
    keep = ("trial_id", "status", "score", "score_iteration", "iterations", "wall_s")
    return tuple({**{c: row[c] for c in keep},
                  **{c: v for c, v in row.items() if c.startswith("config.") and c[7:] in varied}}
                 for row in (t.row() for t in ok[:k]))


def top_table(top: tuple[dict[str, Any], ...], metric: str):
    """The top trials as a rich Table: rank, trial, status, score, where it was reached, wall time,
    and the parameters that varied (a parameter a trial did not have, being inactive, is blank)."""
    from rich.table import Table

    params = list(dict.fromkeys(c for row in top for c in row if c.startswith("config.")))
    table = Table(title=f"top {len(top)} trials", title_justify="left")
    rows = [[str(rank), row["trial_id"], row["status"], f"{row['score']:.6g}", str(row["score_iteration"]),
             str(row["iterations"]), f"{row['wall_s']:.1f}" if row.get("wall_s") is not None else "",
             *(_cell(row.get(p)) for p in params)] for rank, row in enumerate(top, 1)]
    for i, name in enumerate(("#", "trial", "status", metric, "at iter", "iters", "wall s", *(p[7:] for p in params))):
        if i < 7:  # never squeezed on a narrow terminal: the parameters wrap instead
            width = max(len(name), *(len(r[i]) for r in rows))
            table.add_column(name, justify="left" if i in (1, 2) else "right", min_width=width, no_wrap=True)
        else:
            table.add_column(name, justify="right", overflow="fold")
    for r in rows:
        table.add_row(*r)
    return table


def _cell(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _text_lines(table) -> list[str]:
    """A rich Table as plain lines: no colours, no box characters, wide enough not to wrap."""
    import io

    from rich import box
    from rich.console import Console

    table.box, table.title_style, table.header_style = box.SIMPLE_HEAD, "", ""
    buf = io.StringIO()
    Console(file=buf, width=400, color_system=None, force_terminal=False).print(table)
    return [ln.rstrip() for ln in buf.getvalue().splitlines() if ln.strip()]


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


def model_lines(model: Mapping[str, Any] | None, run_dir: Path) -> list[str]:
    """Where the saved model is and how to predict with it, or in one line why there is none."""
    if not model:
        return []
    if model.get("error"):
        return [f"model: not saved: {model['error']}"]
    if model.get("skipped"):
        return [f"model: none ({model['skipped']})"]
    if model.get("checkpoint"):
        return [f"model: {run_dir / model['path']}/model.json links your trainable's checkpoint {model['checkpoint']}"]
    differs = ", ".join(f"{k}={v:.6g}" for k, v in (model.get("differs") or {}).items())
    checked = "reproduces the test score" if model.get("reproduced") else \
        f"loaded back on the CPU it scores {differs or 'differently'}, not exactly the refit's test score"
    return [f"model: {run_dir / model['path']}/ ({model['format']}, {_size(model['bytes'])}; {checked})",
            f"  predict: hpo predict {run_dir} DATA.csv --output predictions.parquet"]


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.0f} kB"


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


def pareto_lines(pareto: list[dict[str, Any]] | None, limit: int = 10) -> list[str]:
    """The front as `hpo run` prints it: one line per trial, best first on the first objective."""
    if not pareto:
        return []
    names = list(pareto[0]["values"])
    out = [f"Pareto front ({' vs '.join(names)}): {len(pareto)} trials; nothing refitted (several objectives)"]
    for e in pareto[:limit]:
        vals = ", ".join(f"{n}={v:.6g}" for n, v in e["values"].items())
        out.append(f"  {e['trial_id']}: {vals}  config: {_config(e['config'])}")
    if len(pareto) > limit:
        out.append(f"  ... {len(pareto) - limit} more (trials.parquet, where pareto is true)")
    return out


def _config(config: Mapping[str, Any]) -> str:
    return "{" + ", ".join(f"{k}: {_short(v)}" for k, v in config.items()) + "}"

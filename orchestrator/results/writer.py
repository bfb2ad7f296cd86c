"""The write side of the results contract: the `Recorder`, fed by a Ray Tune callback, streams every
trial's state and history into the run folder.

Files it writes (columns: docs/results.md):
- `history.parquet`: one row per result a trial reported, in the order reported: `trial_id`,
  `iteration`, `attempt` (the trial's n-th start: a retry, a resume or a PBT exploit starts it
  again, and it may report an iteration again), `restored_from` (`<trial>@<iteration>` of the
  checkpoint that attempt started from), `time_total_s`, `metric.<name>` for every numeric value
  reported, `config.<param>` as the trial ran it (PBT changes a trial's config mid-run, so config
  belongs to each row). Nothing a trial reported is dropped: the analysis picks the rows of each
  trial's final lineage (orchestrator.analysis.runs.final_lineage).
- `trials.parquet`: one row per trial: `trial_id`, `status` (see contract.STATUSES), `iterations`,
  `score` (best value of the spec's metric) and `score_iteration`, `wall_s`, `started_at`,
  `ended_at`, `node_ip`, `error`, where it ran: `node_id`, `cpus`, `gpus` (Ray's grant; 0.5 for a
  half GPU) and `gpu_ids` (its CUDA_VISIBLE_DEVICES, e.g. "1"), recorded in the worker (see
  orchestrator.trial.placement), so GPU-hours = sum(gpus * wall_s) / 3600, `config.<param>`,
  `metric.<name>` (last reported values); with several metrics in the spec, `pareto` (bool): on
  the Pareto front of the completed trials (orchestrator.results.pareto); with `constraints:` in
  the spec, `feasible` (bool, null when a constrained metric was never reported) and
  `constraint.<metric>` (its value, Optuna's convention: feasible when <= 0), judged on the last
  reported values (orchestrator.results.constraints). `feasible` is null throughout without
  constraints.

History rows are flushed every few seconds to numbered part files under `history.parts/`, and
`trials.parquet` is rewritten at each flush, so a crash loses at most one flush interval. At the
end the parts are merged into `history.parquet` and removed. Ray's own per-trial JSON/CSV logger
files are not used. This module knows nothing of Ray: a Tune callback (orchestrator.run.callbacks)
feeds the `Recorder`, and analysis reads the files with `orchestrator.results.reader.load` alone.

The best trial is chosen among trials that ended normally (completed, or stopped early by the
scheduler) with a finite score: a trial that reported 0.001 and then crashed, or reported -inf,
is never "best"; with constraints, only a feasible one (`feasible` true) is. A failed write (a
full disk) never removes what an earlier flush wrote: files are replaced atomically, history
parts are deleted only once merged, and the reader rebuilds the trials table from the history
parts if trials.parquet was never written.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from orchestrator.results.constraints import FEASIBLE, Constraint, judge
from orchestrator.results.constraints import PREFIX as CONSTRAINT_PREFIX
from orchestrator.results.contract import ELIGIBLE, HELD, HISTORY, PARTS, RESTORED, SCHEDULE, STATUSES, TRIALS
from orchestrator.results.pareto import front, mark
from orchestrator.results.parquet import frame, merge, part_files, write
from orchestrator.results.reports import flatten, reported_metrics


@dataclass
class TrialRecord:
    trial_id: str
    config: dict[str, Any]
    status: str = "pending"
    iterations: int = 0
    score: float | None = None
    score_iteration: int | None = None
    last: dict[str, float] = field(default_factory=dict)
    started_at: float | None = None
    ended_at: float | None = None
    node_ip: str | None = None
    node_id: str | None = None
    cpus: float | None = None
    gpus: float | None = None
    gpu_ids: str | None = None
    error: str | None = None  # also why it was last retried, when it then finished (retries > 0)
    retries: int = 0  # times Ray restarted it after a failure (budget.max_failures)
    attempts: int = 0  # times it was started: 1, plus each retry, resume, unpause or PBT exploit
    restored_from: str | None = None  # the checkpoint its current attempt started from (contract.RESTORED)
    stop_requested: bool = False  # its last result ended it (the scheduler, a stopper, or itself)
    schedule: list[dict[str, Any]] | None = None  # the configs its final state trained with (PBT), see SCHEDULE
    # With constraints in the spec: each one's value by metric (None: unreported) and the verdict
    # (orchestrator.results.constraints.judge); None without constraints.
    constraints: dict[str, float | None] | None = None
    feasible: bool | None = None
    # row()'s last answer for an ended trial, dropped by any assignment to the record (__setattr__):
    # trials.parquet is rewritten at every flush, and rebuilding 10,000 unchanged rows each time made
    # Parquet 2.9% of a 10,000-trial run (docs/performance.md, "Bookkeeping at scale").
    _row: dict[str, Any] | None = field(default=None, init=False, repr=False, compare=False)

    def __setattr__(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)
        if name != "_row":
            object.__setattr__(self, "_row", None)

    @property
    def eligible(self) -> bool:
        """Whether its score may be the best: it ended normally with a finite score and, when the
        spec has constraints, is known to meet them."""
        return self.status in ELIGIBLE and _finite(self.score) and (self.constraints is None or self.feasible is True)

    def row(self) -> dict[str, Any]:
        """Its trials.parquet row (a new dict each call). A running trial's `wall_s` grows with the
        clock, so only an ended trial's row is kept."""
        if self._row is not None:
            return dict(self._row)
        end = self.ended_at or time.time()
        row = {
            "trial_id": self.trial_id,
            "status": self.status,
            "iterations": self.iterations,
            "score": self.score,
            "score_iteration": self.score_iteration,
            "wall_s": (end - self.started_at) if self.started_at else None,
            "started_at": _ts(self.started_at),
            "ended_at": _ts(self.ended_at),
            "node_ip": self.node_ip,
            "node_id": self.node_id,
            "cpus": self.cpus,
            "gpus": self.gpus,
            "gpu_ids": self.gpu_ids,
            "error": self.error,
            "retries": self.retries,
            "attempts": self.attempts,
            **{f"config.{k}": v for k, v in self.config.items()},
            **{f"metric.{k}": v for k, v in self.last.items()},
            **({"schedule": json.dumps(self.schedule, default=_json_value)} if self.schedule else {}),
            FEASIBLE: self.feasible,
            **{f"{CONSTRAINT_PREFIX}{k}": v for k, v in (self.constraints or {}).items()},
        }
        if self.ended_at is not None:
            object.__setattr__(self, "_row", row)
            return dict(row)
        return row


def trial_from_row(row: Mapping[str, Any]) -> TrialRecord:
    """A trials.parquet row back into the record that wrote it."""
    def value(v):
        return None if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NaT else v

    def seconds(v):
        return value(v).timestamp() if value(v) is not None else None

    rec = TrialRecord(row["trial_id"], {k[7:]: value(v) for k, v in row.items() if k.startswith("config.")})
    rec.status, rec.iterations, rec.error = row["status"], int(row["iterations"] or 0), value(row.get("error"))
    rec.retries = int(value(row.get("retries")) or 0)
    rec.attempts = int(value(row.get("attempts")) or 0)
    rec.score, rec.score_iteration = value(row.get("score")), value(row.get("score_iteration"))
    rec.started_at, rec.ended_at = seconds(row.get("started_at")), seconds(row.get("ended_at"))
    rec.last = {k[7:]: v for k, v in row.items() if k.startswith("metric.") and value(v) is not None}
    for name in ("node_ip", "node_id", "cpus", "gpus", "gpu_ids"):
        setattr(rec, name, value(row.get(name)))
    rec.config = {k: v for k, v in rec.config.items() if v is not None}  # inactive conditional parameters
    rec.schedule = json.loads(value(row.get("schedule"))) if value(row.get("schedule")) else None
    return rec


def _attempts_in(parts: list[Path]) -> dict[str, int]:
    """trial id -> the highest attempt the history part files hold for it."""
    highest: dict[str, int] = {}
    for part in parts:
        try:
            rows = pd.read_parquet(part, columns=["trial_id", "attempt"])
        except (OSError, ValueError, KeyError):  # a part cut short by a kill, or one written before attempts
            continue
        for trial_id, attempt in rows.groupby("trial_id")["attempt"].max().items():
            highest[trial_id] = max(highest.get(trial_id, 0), int(attempt))
    return highest


def _json_value(v: Any) -> Any:
    """A numpy scalar in a config (Ray's domains sample them) as the Python value JSON can hold."""
    return v.item() if hasattr(v, "item") else str(v)


def _finite(v: float | None) -> bool:
    return v is not None and math.isfinite(v)


def _ts(t: float | None):
    return pd.Timestamp(t, unit="s", tz="UTC") if t else None


class Recorder:
    """Keeps every trial's state and history; knows nothing of Ray (the callback feeds it).

    Args:
        run_dir: where the Parquet files go.
        metric, mode: the spec's target, to keep each trial's best score.
        max_t: iterations after which a scheduler's stop means "completed", not "stopped early".
        flush_every_s: how often buffered history goes to disk.
        objectives: (name, mode) of every metric of a multi-objective spec; trials.parquet then
            gets a `pareto` column.
        constraints: the spec's constraints; only feasible trials can be the best or on the front.
    """

    def __init__(self, run_dir: Path, metric: str, mode: str, max_t: int | None = None,
                 flush_every_s: float = 5.0, on_flush: Callable[[Recorder], None] | None = None,
                 objectives: tuple[tuple[str, str], ...] = (), constraints: tuple[Constraint, ...] = ()):
        self.run_dir = Path(run_dir)
        self.metric, self.mode, self.max_t = metric, mode, max_t
        self.objectives = tuple(objectives)
        self.constraints: tuple[Constraint, ...] = tuple(constraints)  # each trial judged on its last values
        self.flush_every_s = flush_every_s
        self.trials: dict[str, TrialRecord] = {}
        self._pending_rows: list[dict[str, Any]] = []
        self._parts = 0
        self._earlier_attempts: dict[str, int] = {}  # after a kill, from history parts (reopen)
        self._last_flush = time.monotonic()
        self._on_flush = on_flush
        # What writing Parquet costs the driver: flush() calls, and perf_counter seconds spent in their
        # writes and in close()'s merge (benchmarks/bookkeeping.py reads them from experiment.json).
        self.flushes = 0
        self.flush_s = 0.0
        # Told of every trial start, history row and trial end, on the driver (so they must be cheap):
        # orchestrator.tracking.listener.Tracking, which queues them for its own thread.
        self.listeners: list[Any] = []

    def judge(self, rec: TrialRecord) -> None:
        """Sets `rec`'s constraint values and `feasible` from its last values (a trial's end does it;
        `hpo resume` again when Tune's snapshot gives a trial the last values its flush missed)."""
        if self.constraints:
            rec.constraints, rec.feasible = judge(self.constraints, rec.last)
        else:
            rec.constraints, rec.feasible = None, None

    @classmethod
    def reopen(cls, run_dir: Path, metric: str, mode: str, max_t: int | None = None, **kwargs) -> Recorder:
        """A Recorder that carries on an earlier run's folder (`hpo resume`): its trials as they were
        written, its history kept as the first part file, new parts numbered after the existing ones."""
        rec = cls(run_dir, metric, mode, max_t, **kwargs)
        parts = rec.run_dir / PARTS
        if (rec.run_dir / HISTORY).exists():  # an interrupted run merged its parts: they become part 0
            parts.mkdir(exist_ok=True)
            (rec.run_dir / HISTORY).replace(parts / "part-00000.parquet")
        rec._parts = max((int(p.stem.split("-")[1]) for p in parts.glob("part-*.parquet")), default=0)
        if (rec.run_dir / TRIALS).exists():
            for row in pd.read_parquet(rec.run_dir / TRIALS).to_dict("records"):
                rec.trials[row["trial_id"]] = trial_from_row(row)
                rec.judge(rec.trials[row["trial_id"]])
        # A kill can land after a trial's history rows reached a part file but before trials.parquet
        # named it: its attempts then count from what history holds, so a restart is a new attempt and
        # no (trial, attempt, iteration) is written twice (benchmarks/chaos.py, TPE + ASHA, kill -9 twice).
        rec._earlier_attempts = _attempts_in(sorted(parts.glob("part-*.parquet")))
        for trial_id, attempts in rec._earlier_attempts.items():
            if trial_id in rec.trials:
                rec.trials[trial_id].attempts = max(rec.trials[trial_id].attempts, attempts)
        return rec

    def _new_record(self, trial_id: str, config: Mapping[str, Any]) -> TrialRecord:
        rec = TrialRecord(trial_id, flatten(config))
        rec.attempts = self._earlier_attempts.get(trial_id, 0)
        return rec

    @property
    def best(self) -> TrialRecord | None:
        """The trial with the best finite score among those that ended normally (see ELIGIBLE) and,
        with constraints, are feasible (TrialRecord.eligible)."""
        best = None
        for rec in self.trials.values():
            if rec.eligible and (best is None or self.better(rec.score, best.score)):
                best = rec
        return best

    def pareto(self) -> list[dict[str, Any]]:
        """The Pareto front of a multi-objective run (see orchestrator.results.pareto.front)."""
        return front([r.row() for r in self.trials.values()], self.objectives, constrained=bool(self.constraints))

    def rows(self) -> list[dict[str, Any]]:
        """trials.parquet's rows, with `pareto` when the spec lists several metrics."""
        rows = [r.row() for r in self.trials.values()]
        return mark(rows, self.objectives, constrained=bool(self.constraints)) if len(self.objectives) > 1 else rows

    # -- events -------------------------------------------------------------------------------
    def start(self, trial_id: str, config: Mapping[str, Any]) -> None:
        """Tune started the trial: the first time, or again (a retry, `hpo resume`, HyperBand
        resuming a paused trial, PBT's exploit): each start is an attempt of its own in history."""
        rec = self.trials.get(trial_id)
        if rec is None:
            rec = self.trials[trial_id] = self._new_record(trial_id, config)
        rec.status, rec.started_at, rec.ended_at = "running", rec.started_at or time.time(), None
        rec.attempts, rec.restored_from = rec.attempts + 1, None
        self._tell("trial_started", rec)

    def result(self, trial_id: str, config: Mapping[str, Any], result: Mapping[str, Any]) -> None:
        """One result from Tune; a batched one (see orchestrator.trial.context) first replays the iterations
        its trial held back, each with its own iteration number and time."""
        held = result.get(HELD) or ()
        total, sent_at = result.get("time_total_s"), held[-1]["at"] if held else None
        for row in held[:-1]:
            elapsed = total - (sent_at - row["at"]) if total is not None else None
            self._iteration(trial_id, config, row["metrics"], row["iteration"], elapsed, row["at"], result)
        iteration = int(result.get("training_iteration", 0)) or None
        # Ray's own `timestamp` is whole seconds: the arrival time (or the trial's own clock) is finer.
        self._iteration(trial_id, config, result, iteration, total, sent_at or time.time(), result)
        self.trials[trial_id].stop_requested = bool(result.get("done"))
        if result.get(SCHEDULE):
            self.trials[trial_id].schedule = result[SCHEDULE]

    def _iteration(self, trial_id: str, config: Mapping[str, Any], values: Mapping[str, Any],
                   iteration: int | None, time_total_s: float | None, timestamp: float | None,
                   result: Mapping[str, Any]) -> None:
        rec = self.trials.get(trial_id)
        if rec is None:  # a result before its start event: this is its start
            rec = self.trials[trial_id] = self._new_record(trial_id, config)
            rec.attempts += 1
        if rec.started_at is None:
            rec.started_at, rec.status, rec.attempts = time.time(), "running", max(1, rec.attempts)
            self._tell("trial_started", rec)
        rec.restored_from = result.get(RESTORED, rec.restored_from)
        rec.config = flatten(config)
        metrics = reported_metrics(values)
        iteration = iteration or rec.iterations + 1
        rec.iterations = iteration
        rec.last = metrics
        self.judge(rec)
        rec.node_ip = result.get("node_ip", rec.node_ip)
        value = metrics.get(self.metric)
        if _finite(value) and (rec.score is None or self.better(value, rec.score)):  # NaN and ±inf never count
            rec.score, rec.score_iteration = value, iteration
        timestamp = timestamp or time.time()
        self._tell("iteration", rec, iteration, timestamp, metrics)
        self._pending_rows.append({
            "trial_id": trial_id,
            "iteration": iteration,
            "attempt": max(1, rec.attempts),
            "restored_from": rec.restored_from,
            "time_total_s": time_total_s,
            "timestamp": _ts(timestamp),
            **{f"metric.{k}": v for k, v in metrics.items()},
            **{f"config.{k}": v for k, v in rec.config.items()},
        })

    def placement(self, trial_id: str, info: Mapping[str, Any]) -> None:
        """Where the trial runs (node, CPUs, GPUs, GPU ids), as its worker recorded it."""
        rec = self.trials.get(trial_id)
        if rec is None:
            return
        rec.node_ip = rec.node_ip or info.get("node_ip")
        rec.node_id, rec.cpus, rec.gpus, rec.gpu_ids = (info.get("node_id"), info.get("cpus"), info.get("gpus"),
                                                        info.get("gpu_ids"))

    def complete(self, trial_id: str, ended_itself: bool = False, stopped_waiting: bool = False) -> None:
        """The trial ended without error. `ended_itself`: its own last result said `done` (as
        Ray's pbt_function example does), so it completed, whatever its iteration count.
        `stopped_waiting`: the scheduler stopped it while it was paused (HyperBand's losers at a
        rung), so no result of its own carried the stop."""
        rec = self.trials[trial_id]
        stopped = rec.stop_requested or stopped_waiting
        early = stopped and not ended_itself and (self.max_t is None or rec.iterations < self.max_t)
        rec.status, rec.ended_at = ("stopped" if early else "completed"), time.time()
        self._tell("trial_ended", rec)

    def error(self, trial_id: str, message: str) -> None:
        rec = self.trials[trial_id]
        rec.status, rec.ended_at, rec.error = "errored", time.time(), message
        self._tell("trial_ended", rec)

    def _tell(self, event: str, *args) -> None:
        for listener in self.listeners:
            getattr(listener, event)(*args)

    def retry(self, trial_id: str, message: str) -> None:
        """Ray restarts the trial after a failure (a lost node, a crashed worker): it runs again from
        its last checkpoint, or from the start, and its history repeats those iterations."""
        rec = self.trials.get(trial_id)
        if rec is not None:
            rec.status, rec.error, rec.retries = "pending", message, rec.retries + 1

    def better(self, a: float, b: float) -> bool:
        """Whether score `a` beats `b` in the spec's mode."""
        return a < b if self.mode == "min" else a > b

    # -- summaries ----------------------------------------------------------------------------
    def counts(self) -> dict[str, int]:
        out = {s: 0 for s in STATUSES}
        for rec in self.trials.values():
            out[rec.status] = out.get(rec.status, 0) + 1
        return out

    # -- disk ---------------------------------------------------------------------------------
    def maybe_flush(self) -> None:
        if time.monotonic() - self._last_flush >= self.flush_every_s:
            self.flush()

    def flush(self) -> None:
        """Appends buffered history as one part file and rewrites trials.parquet (atomically)."""
        self._last_flush = time.monotonic()
        began = time.perf_counter()
        try:
            if self._pending_rows:
                parts = self.run_dir / PARTS
                parts.mkdir(parents=True, exist_ok=True)
                self._parts += 1
                write(frame(self._pending_rows), parts / f"part-{self._parts:05d}.parquet")
                self._pending_rows = []
            if self.trials:
                write(frame(self.rows()), self.run_dir / TRIALS)
        finally:
            self.flushes += 1
            self.flush_s += time.perf_counter() - began
        if self._on_flush:
            self._on_flush(self)

    def close(self, cut_off: str = "stopped", at: float | None = None) -> None:
        """Final flush, then merges the history parts into history.parquet and removes them.

        Args:
            cut_off: the status of trials still running: `stopped` when the time budget (or a
                rule of orchestrator.run.stopping) ended them, `interrupted` when a signal did.
            at: when they were stopped (seconds since the epoch), if known; else now.
        """
        end = time.time() if at is None else at
        for rec in self.trials.values():
            if rec.status in ("running", "pending"):
                rec.status, rec.ended_at = cut_off, rec.ended_at or max(end, rec.started_at or end)
                self._tell("trial_ended", rec)
        self.flush()
        began = time.perf_counter()
        try:
            parts = part_files(self.run_dir, PARTS)
            history = merge(parts)
            write(history, self.run_dir / HISTORY)
            for p in parts:
                p.unlink()
            if (self.run_dir / PARTS).exists():
                (self.run_dir / PARTS).rmdir()
            if not self.trials:
                write(frame([]), self.run_dir / TRIALS)
        finally:
            self.flush_s += time.perf_counter() - began

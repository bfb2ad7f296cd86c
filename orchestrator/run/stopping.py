"""Ending a whole search before `budget.trials`: `budget.stop` (patience, the regret bound) and the cost budgets
(`budget.cpu_hours`, `budget.gpu_hours`).

Ray Tune has no rule of either kind that fits: `ExperimentPlateauStopper` judges the top trials'
spread at every result, not the best score over finished trials, and `time_budget_s` counts
seconds, not the resources trials hold. So each rule here is plain Python over the Recorder's
trial records, and `SearchStop` is one of the Recorder's listeners (told of each trial's start
and end, on the driver): it owns the rules, keeps what they have counted, and says why the search
must end. The run's stopper (orchestrator.run.callbacks.RunStopper) asks it at each step of Tune's
loop; once it gives a reason, no new trial starts, and `budget.in_flight` says what the trials
already running do:

- `stop` (the default): Tune ends the search as at the end of `budget.time_s`, stopping them at
  once (recorded `stopped`, ended when the reason was found);
- `finish`: they run on until they end as they would have (their scheduler may still stop them
  early), and trials proposed but not started yet are dropped (ray_api.finish_in_flight_when_asked);
  on a cost budget they go on spending past it, by at most what they cost to their end.

Either way the run is `finished` with the reason in experiment.json's `stop_reason`, and its best
is refitted and saved.

- `Patience`: trials count in the order they finish (completed, stopped early or errored; cut off
  by a signal they did not finish). A finished trial improves when its score beats the best by
  more than `min_delta`; the first finite score is the first best. The search ends once
  `patience` trials have finished since the last improvement. Before any finite score there is
  nothing to improve on, so nothing is counted (the run's end then says why there is no best).
- `RegretBound` (orchestrator.run.regret_bound): told the same finished trials with their configs,
  a Gaussian process bounds what the search can still find; the search ends once that bound falls
  below the noise of its early trials. It evaluates on its own thread and answers when asked.
- `CostMeter`: resource-hours = sum over trials of (CPUs or GPUs Ray granted the trial) x its wall
  time, trials still running counted to now. The grant is the worker's record
  (orchestrator.trial.placement) where it was read, else the spec's `resources`, which is what
  Ray grants.

`hpo resume` carries both on from the run's Parquet: the reopened Recorder holds every trial
finished before, so `Patience` is told them in the order they finished; the hours spent before are
worked out from trials.parquet and history.parquet (`hours_recorded`), kept in experiment.json's
`resumes[]` as `spent_s` is for the time budget, and only time after the resume is added to them.
tests/test_budget_stop.py checks the rules on hand-made records and on real runs.
"""

from __future__ import annotations

import datetime as dt
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd

from orchestrator.results.writer import TrialRecord
from orchestrator.run.regret_bound import RegretBound

FINISHED = ("completed", "stopped", "errored")  # a trial that counts toward patience
COST_CHECK_EVERY_S = 0.2  # the least time between two sums of the hours running trials hold


class Patience:
    """`budget.stop: {patience, min_delta}`: told each finished trial in the order they finish."""

    def __init__(self, patience: int, min_delta: float, mode: str):
        self.patience, self.min_delta, self.mode = patience, min_delta, mode
        self.finished = 0  # trials told so far
        self.best: float | None = None  # the score of the last improvement
        self.best_at: tuple[int, str] | None = None  # (its place among finished trials, 1-based; its trial id)

    def improves(self, score: float) -> bool:
        if self.best is None:
            return True
        return score < self.best - self.min_delta if self.mode == "min" else score > self.best + self.min_delta

    def observe(self, trial_id: str, score: float | None) -> None:
        """One more finished trial; `score` None when it has none that could be the best."""
        self.finished += 1
        if score is not None and math.isfinite(score) and self.improves(score):
            self.best, self.best_at = score, (self.finished, trial_id)

    def reason(self) -> str | None:
        if self.best_at is None or self.finished - self.best_at[0] < self.patience:
            return None
        place, trial_id = self.best_at
        return (f"patience: no improvement > {self.min_delta:g} in {self.finished - place} completed trials "
                f"(best {self.best:.6g} at trial #{place}, {trial_id})")


@dataclass(frozen=True)
class Hours:
    cpu: float = 0.0
    gpu: float = 0.0

    def __add__(self, other: Hours) -> Hours:
        return Hours(self.cpu + other.cpu, self.gpu + other.gpu)


def trial_hours(rec: TrialRecord, start: float, end: float, cpu: float, gpu: float) -> Hours:
    """What one trial held from `start` to `end` (seconds since the epoch): its grant x the time.
    `cpu`, `gpu`: the spec's grant, for a trial whose worker's record was not read yet."""
    seconds = max(0.0, end - start) / 3600
    cpus, gpus = (rec.cpus if rec.cpus is not None else cpu), (rec.gpus if rec.gpus is not None else gpu)
    return Hours(float(cpus) * seconds, float(gpus) * seconds)


class CostMeter:
    """The resource-hours a run has spent: `base` (sessions before the last `hpo resume`) plus what
    trials held since `since` (that resume's start; None for a fresh run)."""

    def __init__(self, cpu: float, gpu: float, base: Hours = Hours(), since: float | None = None):
        self.cpu, self.gpu, self.base, self.since = cpu, gpu, base, since
        self.closed = Hours()  # trials that ended in this session
        self.running: dict[str, TrialRecord] = {}

    def _held(self, rec: TrialRecord, end: float) -> Hours:
        if rec.started_at is None:
            return Hours()
        return trial_hours(rec, max(rec.started_at, self.since or rec.started_at), end, self.cpu, self.gpu)

    def started(self, rec: TrialRecord) -> None:
        self.running[rec.trial_id] = rec

    def ended(self, rec: TrialRecord) -> None:
        if self.running.pop(rec.trial_id, None) is not None:
            self.closed = self.closed + self._held(rec, rec.ended_at or time.time())

    def spent(self, now: float | None = None) -> Hours:
        now = time.time() if now is None else now
        total = self.base + self.closed
        for rec in self.running.values():
            total = total + self._held(rec, now)
        return total


class SearchStop:
    """The spec's rules for ending a search early, fed as a listener of the run's Recorder.

    Args:
        budget: the spec's `budget` section (`stop`, `cpu_hours`, `gpu_hours`, `in_flight`).
        mode: the metric's mode, `cpu`/`gpu`: the spec's grant per trial.
        base, since: see `CostMeter` (`for_run` reads them from experiment.json).
    """

    def __init__(self, budget: Any, mode: str, cpu: float, gpu: float, base: Hours = Hours(),
                 since: float | None = None, regret_bound: RegretBound | None = None):
        stop = budget.stop
        self.patience = Patience(stop.patience, stop.min_delta, mode) if stop and stop.patience else None
        self.regret_bound = regret_bound
        self.limits = {k: v for k, v in (("cpu", budget.cpu_hours), ("gpu", budget.gpu_hours)) if v is not None}
        self.meter = CostMeter(cpu, gpu, base, since) if self.limits else None
        self.in_flight: str = budget.in_flight  # stop | finish: the trials running when a reason is found
        self.started: set[str] = set()  # trials that ever started (after a resume, before it too)
        self.stop_reason: str | None = None
        self.stopped_at: float | None = None  # when the reason was found: the cut-off trials' end
        self._looked = 0.0

    @classmethod
    def for_run(cls, exp: Any, trials: Mapping[str, TrialRecord], meta: Mapping[str, Any] | None = None
                ) -> SearchStop | None:
        """The run's SearchStop, None when its spec sets no such rule; `trials` are the records kept
        from before a resume (told to patience in the order they finished), `meta` experiment.json."""
        budget = exp.spec.budget
        if budget.stop is None and budget.cpu_hours is None and budget.gpu_hours is None:
            return None
        resumes = (meta or {}).get("resumes") or []
        base = Hours(resumes[-1].get("spent_cpu_h", 0.0), resumes[-1].get("spent_gpu_h", 0.0)) if resumes else Hours()
        since = dt.datetime.fromisoformat(resumes[-1]["at"]).timestamp() if resumes else None
        bound = None
        if budget.stop is not None and budget.stop.regret_bound is not None:
            seed = budget.stop.regret_bound.seed
            bound = RegretBound(exp.params, exp.mode, exp.spec.seed if seed is None else seed)
        stop = cls(budget, exp.mode, exp.spec.resources.cpu, exp.spec.resources.gpu, base, since, bound)
        for rec in sorted((r for r in trials.values() if r.status in FINISHED), key=lambda r: r.ended_at or 0.0):
            stop.trial_ended(rec)  # already counted in `base`: the meter never saw them start
        stop.started.update(trials)  # restored trials started before the resume: in flight, not new
        return stop

    # -- the Recorder's listener events (cheap: on the driver, at every trial start and end) --------
    def trial_started(self, rec: TrialRecord) -> None:
        self.started.add(rec.trial_id)
        if self.meter is not None:
            self.meter.started(rec)

    def iteration(self, rec: TrialRecord, iteration: int, timestamp: float, metrics: Mapping[str, float]) -> None:
        pass

    def trial_ended(self, rec: TrialRecord) -> None:
        if self.meter is not None:  # after the reason too: trials finishing (in_flight: finish) stop costing
            self.meter.ended(rec)
        if self.stop_reason is not None:  # the search is over: nothing more to count toward it
            return
        if rec.status not in FINISHED:
            return
        score = rec.score if rec.eligible else None  # feasible, with constraints
        if self.patience is not None:
            self.patience.observe(rec.trial_id, score)
            if reason := self.patience.reason():
                self._stop(reason)
        if self.regret_bound is not None:
            self.regret_bound.observe(rec.trial_id, rec.config, score)

    # -- asked by the run's stopper ---------------------------------------------------------------
    def reason(self) -> str | None:
        """Why the search must end now, or None; the cost is summed at most every COST_CHECK_EVERY_S,
        and the regret bound answers with its latest evaluation (it runs on its own thread)."""
        if self.stop_reason is None and self.regret_bound is not None and (reason := self.regret_bound.reason()):
            self._stop(reason)
        if self.stop_reason is None and self.meter is not None and \
                time.monotonic() - self._looked >= COST_CHECK_EVERY_S:
            self._looked = time.monotonic()
            spent = self.meter.spent()
            for kind, limit in self.limits.items():
                if getattr(spent, kind) >= limit:
                    self._stop(f"{kind}_hours: {getattr(spent, kind):.4f} spent of {limit:.4f}")
                    break
        return self.stop_reason

    def close(self) -> None:
        if self.regret_bound is not None:
            self.regret_bound.close()

    def _stop(self, reason: str) -> None:
        self.stop_reason, self.stopped_at = reason, time.time()

    @property
    def finishing(self) -> bool:
        """A reason was found and the trials running run on to their end (`in_flight: finish`)."""
        return self.stop_reason is not None and self.in_flight == "finish"

    @property
    def cut_off_at(self) -> float | None:
        """When the trials still running at the end were stopped, for their record: when the
        reason was found (`in_flight: stop`); None when they ran on, so something else (the time
        budget) stopped them, at the end."""
        return self.stopped_at if self.in_flight == "stop" else None

    def progress(self) -> str:
        """For the progress line: each cost budget's hours spent and left; once the search is over
        and its running trials finish, which rule ended it."""
        parts = []
        if self.finishing:
            parts.append(f"search stopped by {self.stop_reason.partition(':')[0]}, running trials finish")
        if self.meter is not None:
            spent = self.meter.spent()
            parts += [f"{kind.upper()}-h {getattr(spent, kind):.4g} spent, "
                      f"{max(0.0, limit - getattr(spent, kind)):.4g} left" for kind, limit in self.limits.items()]
        return "; ".join(parts)


def hours_recorded(meta: Mapping[str, Any], trials: pd.DataFrame, history: pd.DataFrame, cpu: float,
                   gpu: float) -> Hours:
    """The hours spent before `hpo resume`, from the run's Parquet: what the last resume recorded,
    plus what each trial held in the session since (from that session's start to the trial's end,
    or to the newest record of the run for a trial a kill left running), as `resume.spent_s` does
    for seconds."""
    resumes = meta.get("resumes") or []
    base = Hours(resumes[-1].get("spent_cpu_h", 0.0), resumes[-1].get("spent_gpu_h", 0.0)) if resumes else Hours()
    since = dt.datetime.fromisoformat(resumes[-1]["at"] if resumes else meta["started_at"]).timestamp()
    if "started_at" not in trials or not len(trials):
        return base
    stamps = [ts.timestamp() for col in ("started_at", "ended_at") for ts in trials[col].dropna()] if \
        "ended_at" in trials else []
    stamps += [ts.timestamp() for ts in history["timestamp"].dropna()] if "timestamp" in history else []
    last = max(stamps, default=since)
    total = base
    for row in trials.to_dict("records"):
        started, ended = _seconds(row.get("started_at")), _seconds(row.get("ended_at"))
        if started is None:
            continue
        rec = TrialRecord(row["trial_id"], {})
        rec.cpus, rec.gpus = _number(row.get("cpus")), _number(row.get("gpus"))
        total = total + trial_hours(rec, max(started, since), ended if ended is not None else last, cpu, gpu)
    return total


def _seconds(value: Any) -> float | None:
    return None if value is None or value is pd.NaT or pd.isna(value) else pd.Timestamp(value).timestamp()


def _number(value: Any) -> float | None:
    return None if value is None or pd.isna(value) else float(value)

"""`hpo resume RUN_DIR`: finish a run that was stopped (Ctrl-C, SIGTERM, `hpo stop`) or killed
(kill -9, OOM, a lost head) in its folder, to exactly its budget.

Ray Tune snapshots its experiment into `RUN_DIR/tune/` (at the start, then every 10 s or more):
every trial with its status, config and latest checkpoint, and the searcher's state. Resuming
restores that with `Tuner.restore`, so the searcher continues from what it had learned and
unfinished trials continue from their last checkpoint where the scheduler made the family
checkpoint (HyperBand, PBT), else from the beginning, under their own trial ids.

After Ctrl-C that snapshot is exact: Tune takes one last when its loop ends (orchestrator.run.signals).
After a kill it is up to ~10 s older than the run's Parquet, which is the record of what ran, so
the two are reconciled before Tune restores (`reconcile`), trial by trial:

- finished in the record, running in the snapshot: Tune is told it finished (its status in the
  snapshot is rewritten) and the searcher is told its result; it is not run again;
- finished in the record, created after the snapshot: the searcher is told its config and result,
  and it counts toward `budget.trials` (orchestrator.search.resumable);
- finished in the snapshot, still running in the record (its end fell between two flushes): the
  record takes Tune's status and last result;
- created after the snapshot and unfinished: it is created again under its own id and config
  (listed under `resumes[].cut_off_after_snapshot`), from its start.

So a resumed run ends with exactly `budget.trials` finished trials (completed, stopped, errored),
each kept once with the scores it recorded. `budget.time_s` counts the time already spent,
`budget.cpu_hours`/`gpu_hours` the resource-hours, `budget.stop` the trials finished before
(orchestrator.run.stopping), and experiment.json records each resume.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from orchestrator import ray_api
from orchestrator.errors import InputError, Problem, SpecError
from orchestrator.results import rundir
from orchestrator.results.contract import EXPERIMENT
from orchestrator.results.reader import load
from orchestrator.results.reports import reported_metrics
from orchestrator.results.writer import Recorder, TrialRecord
from orchestrator.run import lifecycle
from orchestrator.run.driver import load_data
from orchestrator.run.stopping import hours_recorded
from orchestrator.run.summary import RunSummary
from orchestrator.run.tuner import TUNE_DIR, can_restore, restore_tuner
from orchestrator.search.resumable import AfterSnapshot
from orchestrator.spec.experiment import Experiment
from orchestrator.spec.load import validate

RESUMABLE = ("running", "interrupted", "failed")
CUT_OFF = "interrupted"  # a trial status: ended by the run's end, not by the scheduler
FINISHED = {"completed": "TERMINATED", "stopped": "TERMINATED", "errored": "ERROR"}  # ours -> Tune's
TUNE_FINISHED = ("TERMINATED", "ERROR")


def resume(run_dir: str | Path, *, quiet: bool = False, ray_address: str | None = None,
           overrides: list[str] | None = None) -> RunSummary:
    """Finishes a stopped or killed run to its budget; with `overrides` (`budget.trials=N`,
    `budget.time_s=S`, the other `EXTENDABLE` budget keys, and no others), continues a run to a new
    budget, a finished one too (unless `budget.stop` or a cost budget ended it)."""
    run_dir = Path(run_dir)
    meta = _read(run_dir, extending=bool(overrides))
    exp = _experiment(meta, run_dir)
    extension = _extend(meta, exp, overrides or [], run_dir) if overrides else None
    if extension is not None:
        exp = extension
    # Everything the user can get wrong is checked before the claim and Ray's start-up.
    if not can_restore(run_dir):
        raise InputError(f"{run_dir} has no Ray Tune state to resume from (the run ended before Tune's "
                         f"first snapshot); run the spec again")
    try:  # read once, here: a snapshot that cannot be read is refused before the claim and Ray's start
        snapshot, known = ray_api.snapshot_trials((run_dir / TUNE_DIR).resolve())
    except ray_api.TornSnapshot as exc:
        raise InputError(f"{run_dir}: Ray Tune's last snapshot of the run cannot be read ({exc}: the run was "
                         f"killed while Tune wrote it); run the spec again") from None
    dataset = load_data(exp)
    try:
        claim = rundir.take_over(run_dir)
    except rundir.FolderTaken as exc:
        raise InputError(str(exc)) from None
    after_snapshot: list[AfterSnapshot] = []  # filled by begin(), told to the restored search algorithm

    def begin() -> tuple[dict[str, Any], Recorder]:
        trials, history = _recorded(run_dir)
        spent = spent_s(meta, trials, history)
        res = exp.spec.resources  # budget.cpu_hours/gpu_hours count on from here (orchestrator.run.stopping)
        hours = hours_recorded(meta, trials, history, res.cpu, res.gpu)
        recorder = Recorder.reopen(run_dir, exp.metric, exp.mode, max_t=exp.max_t,
                                   on_flush=lambda _: claim.beat(), objectives=exp.objectives,
                                   constraints=exp.constraints)
        told_before = {t for r in meta.get("resumes", []) for t in r.get("told_searcher", [])}
        plan = reconcile(recorder, known, exp, history, told_before)
        if snapshot is not None and plan.finished_in_record:
            ray_api.set_snapshot_statuses(snapshot, plan.finished_in_record)
        after_snapshot.extend(plan.told)
        budget = {}
        if extension is not None:  # the run's spec is the extended one from now on
            budget = {"budget": {"from": meta["spec"]["budget"], "to": extension.resolved()["budget"]}}
            meta["spec"] = extension.resolved()
        meta.setdefault("resumes", []).append({
            "at": rundir.now(), "status_before": meta["status"], "spent_s": round(spent, 3),
            "spent_cpu_h": round(hours.cpu, 6), "spent_gpu_h": round(hours.gpu, 6), **budget,
            "finished_after_snapshot": [t.trial_id for t in plan.told if t.finished and not t.known],
            "told_searcher": [t.trial_id for t in plan.told if t.finished],
            "settled_from_snapshot": plan.settled, "cut_off_after_snapshot": plan.cut_off})
        meta.update(status="running", error=None, ended_at=None, signal=None,
                    owner={k: claim.owner[k] for k in ("host", "pid")})  # its claim: owner.json
        rundir.write_json(run_dir / EXPERIMENT, meta)
        return meta, recorder

    return lifecycle.drive(exp, run_dir, dataset, begin, restore_tuner(meta, after_snapshot, exp.total_trials),
                           quiet=quiet, ray_address=ray_address)


EXTENDABLE = ("budget.trials", "budget.time_s", "budget.cpu_hours", "budget.gpu_hours", "budget.stop",
              "budget.stop.patience", "budget.stop.min_delta")


def _extend(meta: dict[str, Any], exp: Experiment, overrides: list[str], run_dir: Path) -> Experiment:
    """The run's spec with a new budget (`hpo resume --set budget.trials=N`); anything else is refused
    before Ray starts, since the search and its recorded trials would no longer match the spec."""
    import copy

    from orchestrator.spec.load import apply_override

    raw = copy.deepcopy(meta["spec"])
    for item in overrides:
        key = item.partition("=")[0].strip()
        if key not in EXTENDABLE:
            raise SpecError(Problem(f"--set {key}", f"a resumed run takes a new budget only ({', '.join(EXTENDABLE)}): "
                                                   f"to change anything else, run the spec again"), str(run_dir))
        apply_override(raw, item, str(run_dir))
    extended = validate(raw, base_dir=Path(meta.get("base_dir") or "."), source=f"{run_dir} --set")
    trials, _ = _recorded(run_dir)
    done = int(trials["status"].isin(list(FINISHED)).sum()) if "status" in trials else 0
    if extended.total_trials < done:
        raise SpecError(Problem("--set budget.trials", f"{extended.spec.budget.trials} is below the {done} trials "
                                                       f"this run already finished; give at least that many"),
                        str(run_dir))
    if meta["status"] == "finished" and meta.get("stop_reason"):
        # Tune's snapshot holds the search as finished (a stop rule ends it as the time budget does),
        # and the restored searcher would propose nothing more.
        raise SpecError(Problem("--set", f"the run's search ended early ({meta['stop_reason']}) and cannot be "
                                         f"extended; run the spec again with a larger budget"), str(run_dir))
    if meta["status"] == "finished" and extended.total_trials <= exp.total_trials and \
            (extended.spec.budget.time_s or 0) <= (exp.spec.budget.time_s or 0):
        raise SpecError(Problem("--set budget.trials", f"the run finished its budget of {exp.spec.budget.trials} "
                                                       f"trials; raise budget.trials (or budget.time_s) to extend it"),
                        str(run_dir))
    return extended


@dataclass
class Reconciliation:
    """What a resume does where the run's record and Tune's last snapshot differ (module docstring)."""

    told: list[AfterSnapshot] = field(default_factory=list)  # for the restored search algorithm
    finished_in_record: dict[str, str] = field(default_factory=dict)  # snapshot statuses to rewrite
    settled: list[str] = field(default_factory=list)  # finished per the snapshot: the record takes its end
    cut_off: list[str] = field(default_factory=list)  # created after the snapshot and unfinished: run again


def reconcile(recorder: Recorder, snapshot: dict[str, dict[str, Any]], exp: Experiment, history: pd.DataFrame,
              told_before: set[str] = frozenset()) -> Reconciliation:
    """Compares the reopened record with Tune's last snapshot (`ray_api.snapshot_trials`) and settles
    the record where Tune knows better; returns what the snapshot and the searcher must be told.

    `told_before`: trials an earlier resume told the searcher. Told again: the searcher's state in
    the snapshot says whether it already has them (a resume killed before Tune's next snapshot
    left a state without them), and it skips the ones it has (orchestrator.search.resumable)."""
    out = Reconciliation()
    for trial_id, rec in recorder.trials.items():
        tune_status = (snapshot.get(trial_id) or {}).get("status")
        finished = rec.status in FINISHED
        if tune_status is None:
            if finished:
                out.told.append(_after_snapshot(rec, exp, history, known=False))
            elif rec.status in ("running", "pending", CUT_OFF):
                rec.status, rec.ended_at = CUT_OFF, rec.ended_at or rec.started_at
                out.cut_off.append(trial_id)
                out.told.append(AfterSnapshot(trial_id, dict(rec.config), None, known=False, finished=False))
        elif tune_status in TUNE_FINISHED:
            if not finished:
                _settle(rec, tune_status, snapshot[trial_id]["last_result"], recorder)
                out.settled.append(trial_id)
            elif trial_id in told_before:
                out.told.append(_after_snapshot(rec, exp, history, known=True))
        elif finished:  # running, pending or paused in the snapshot
            out.told.append(_after_snapshot(rec, exp, history, known=True))
            out.finished_in_record[trial_id] = FINISHED[rec.status]
    return out


def _after_snapshot(rec: TrialRecord, exp: Experiment, history: pd.DataFrame, known: bool) -> AfterSnapshot:
    sampled = {n for n, p in exp.params.items() if not p.is_constant}
    config = {k: v for k, v in rec.config.items() if k in sampled}
    result = None if rec.status == "errored" else dict(rec.last)
    column = f"metric.{exp.metric}"
    curve: tuple[float, ...] = ()
    if column in history and len(history):
        mine = history[history["trial_id"] == rec.trial_id]
        if "attempt" in mine and len(mine):
            mine = mine[mine["attempt"] == mine["attempt"].max()]
        curve = tuple(float(v) for v in mine[column] if v is not None and math.isfinite(v))
    return AfterSnapshot(rec.trial_id, config, result, known, curve=curve)


def _settle(rec: TrialRecord, tune_status: str, last_result: dict[str, Any], recorder: Recorder) -> None:
    """A trial whose end Tune's snapshot recorded and the run's last flush had not: it takes Tune's."""
    metrics = reported_metrics(last_result)
    iteration = int(last_result.get("training_iteration") or rec.iterations)
    if tune_status == "ERROR":
        rec.status = "errored"
        rec.error = rec.error or "errored (its error text was lost with the killed driver; see Tune's trial folder)"
    else:
        early = recorder.max_t is not None and iteration < recorder.max_t and not last_result.get("done")
        rec.status = "stopped" if early else "completed"
    if metrics:
        rec.last, rec.iterations = metrics, iteration
        recorder.judge(rec)  # its constraints, on the last values it now has
        value = metrics.get(recorder.metric)
        if value is not None and math.isfinite(value) and (rec.score is None or recorder.better(value, rec.score)):
            rec.score, rec.score_iteration = value, iteration
    rec.ended_at = rec.ended_at or rec.started_at


def _recorded(run_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    try:
        return load(run_dir)
    except FileNotFoundError:  # the driver died before its first flush
        return pd.DataFrame(), pd.DataFrame()


def _read(run_dir: Path, extending: bool = False) -> dict[str, Any]:
    path = run_dir / EXPERIMENT
    if not path.is_file():
        raise InputError(f"{run_dir} is not a run folder (no {EXPERIMENT}); give the folder `hpo run` "
                         f"printed, e.g. results/<name>/<run id>")
    meta = rundir.read_json(path)
    if meta.get("status") not in RESUMABLE and not (extending and meta.get("status") == "finished"):
        raise InputError(f"{run_dir} {meta.get('status')}: nothing to resume (only a run that is "
                         f"{', '.join(RESUMABLE)} can be; a finished one with a new budget: "
                         f"--set budget.trials=N)")
    if rundir.liveness(run_dir) == "live":
        owner = meta.get("owner") or {}
        raise InputError(f"{run_dir} is still running (pid {owner.get('pid')} on {owner.get('host')}); "
                         f"stop it first, or wait for it to end")
    return meta


def _experiment(meta: dict[str, Any], run_dir: Path) -> Experiment:
    """The run's own resolved spec, validated again: a family file or data file that moved since is
    reported as for `hpo run`."""
    return validate(meta["spec"], base_dir=Path(meta.get("base_dir") or "."),
                    source=str(run_dir / EXPERIMENT))


def spent_s(meta: dict[str, Any], trials: pd.DataFrame, history: pd.DataFrame) -> float:
    """Seconds of the budget used so far: what earlier resumes recorded, plus the last stretch, from
    its start to the newest record it left (a killed run records no end)."""
    stamps = [ts for col in ("started_at", "ended_at") if col in trials for ts in trials[col].dropna()]
    stamps += list(history["timestamp"].dropna()) if "timestamp" in history else []
    resumes = meta.get("resumes", [])
    base, since = (resumes[-1]["spent_s"], resumes[-1]["at"]) if resumes else (0.0, meta["started_at"])
    since_s = dt.datetime.fromisoformat(since).timestamp()
    last = max((ts.timestamp() for ts in stamps), default=since_s)
    return base + max(0.0, last - since_s)

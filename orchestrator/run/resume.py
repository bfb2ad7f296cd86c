"""`hpo resume RUN_DIR`: finish an experiment that was killed (kill -9, OOM, a lost head) in its folder.

Ray Tune snapshots its own experiment state into `RUN_DIR/tune/` (at the first step, then every
10 s or more, at most 5% of the time): every trial with its status, config and latest checkpoint,
and the searcher's and scheduler's state. Resuming restores that with `Tuner.restore`, which is
sound for every searcher we offer (each one saves and restores itself: Optuna's study, HyperOpt's
trials, BOHB's model, Ray's generator with its position) and for every scheduler, so:

- trials that had finished stay finished, with the scores trials.parquet holds;
- Tune's snapshot is at most ~10 s old: a trial it shows running that had finished since runs
  again (its new outcome replaces the old one; history.parquet keeps each iteration once, the
  latest), and a trial created after it is unknown to Tune, which proposes another in its place:
  such a trial is kept if it had finished (the run then ends above `budget.trials` by that many,
  recorded in experiment.json; a written result is never dropped) and marked cut off if not;
- unfinished trials continue from their last checkpoint where the scheduler made the family
  checkpoint (HyperBand, PBT), else they restart from the beginning;
- the searcher continues from what it had learned, and Tune runs exactly `budget.trials`;
- `budget.time_s` counts the time already spent;
- `experiment.json` records each resume.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from orchestrator import ray_api
from orchestrator.errors import InputError
from orchestrator.results import rundir
from orchestrator.results.contract import EXPERIMENT
from orchestrator.results.reader import load
from orchestrator.results.writer import Recorder
from orchestrator.run import lifecycle
from orchestrator.run.driver import load_data
from orchestrator.run.summary import RunSummary
from orchestrator.run.tuner import TUNE_DIR, can_restore, restore_tuner
from orchestrator.spec.experiment import Experiment
from orchestrator.spec.load import validate

RESUMABLE = ("running", "interrupted", "failed")
CUT_OFF = "interrupted"  # a trial status: ended by the run's end, not by the scheduler


def resume(run_dir: str | Path, *, quiet: bool = False, ray_address: str | None = None) -> RunSummary:
    run_dir = Path(run_dir)
    meta = _read(run_dir)
    exp = _experiment(meta, run_dir)
    # Everything the user can get wrong is checked before the claim and Ray's start-up.
    if not can_restore(run_dir):
        raise InputError(f"{run_dir} has no Ray Tune state to resume from (the run ended before Tune's "
                         f"first snapshot); run the spec again")
    dataset = load_data(exp)
    try:
        claim = rundir.take_over(run_dir)
    except rundir.FolderTaken as exc:
        raise InputError(str(exc)) from None

    def begin() -> tuple[dict[str, Any], Recorder]:
        spent = spent_s(meta, run_dir)
        recorder = Recorder.reopen(run_dir, exp.metric, exp.mode, max_t=exp.max_t,
                                   on_flush=lambda _: claim.beat(), objectives=exp.objectives)
        kept, lost = reconcile(recorder, ray_api.snapshot_trial_ids((run_dir / TUNE_DIR).resolve()))
        meta.setdefault("resumes", []).append({"at": rundir.now(), "status_before": meta["status"],
                                               "spent_s": round(spent, 3), "finished_after_snapshot": kept,
                                               "cut_off_after_snapshot": lost})
        meta.update(status="running", error=None, ended_at=None, signal=None, owner=claim.owner)
        rundir.write_json(run_dir / EXPERIMENT, meta)
        return meta, recorder

    return lifecycle.drive(exp, run_dir, dataset, begin, restore_tuner(meta), quiet=quiet, ray_address=ray_address)


def reconcile(recorder: Recorder, known_to_tune: set[str]) -> tuple[list[str], list[str]]:
    """Trials the run recorded after Tune's last snapshot, which Tune will not bring back.

    Its searcher proposes that many trials again, so the run ends above `budget.trials` by the
    ones that had finished: they stay, with their scores (a written result is never dropped).
    The ones still running can never end: they are marked cut off. Returns (finished, cut off).
    """
    finished, cut_off = [], []
    for trial_id, rec in recorder.trials.items():
        if trial_id in known_to_tune:
            continue
        if rec.status in ("running", "pending"):
            rec.status, rec.ended_at = CUT_OFF, rec.ended_at or rec.started_at
            cut_off.append(trial_id)
        else:
            finished.append(trial_id)
    return finished, cut_off


def _read(run_dir: Path) -> dict[str, Any]:
    path = run_dir / EXPERIMENT
    if not path.is_file():
        raise InputError(f"{run_dir} is not a run folder (no {EXPERIMENT}); give the folder `hpo run` "
                         f"printed, e.g. results/<name>/<run id>")
    meta = rundir.read_json(path)
    if meta.get("status") not in RESUMABLE:
        raise InputError(f"{run_dir} {meta.get('status')}: nothing to resume (only a run that is "
                         f"{', '.join(RESUMABLE)} can be)")
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


def spent_s(meta: dict[str, Any], run_dir: Path) -> float:
    """Seconds of the budget used so far: what earlier resumes recorded, plus the last stretch, from
    its start to the newest record it left (a killed run records no end)."""
    trials, history = load(run_dir)
    stamps = [ts for col in ("started_at", "ended_at") if col in trials for ts in trials[col].dropna()]
    stamps += list(history["timestamp"].dropna()) if "timestamp" in history else []
    resumes = meta.get("resumes", [])
    base, since = (resumes[-1]["spent_s"], resumes[-1]["at"]) if resumes else (0.0, meta["started_at"])
    since_s = dt.datetime.fromisoformat(since).timestamp()
    last = max((ts.timestamp() for ts in stamps), default=since_s)
    return base + max(0.0, last - since_s)

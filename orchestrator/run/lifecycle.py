"""One run folder's life, the same for a fresh run, a resume and a nested search.

A run is: hold Ray and the signals (`drive`), record what the run is (`begin`: a fresh
`experiment.json` and Recorder, or the resumed ones), fit a Tuner into the folder (`fit`), decide how
it ended from what was recorded (orchestrator.run.outcome), write that down, and conclude (refit the
best config and save its model, or the Pareto front) before a summary is returned or the run's error
raised.

The one seam is the Tuner's construction, a `TunerFactory` (orchestrator.run.tuner): `build_tuner`
for a fresh run and each outer fold's inner search, `restore_tuner` for `hpo resume`. Everything
else is shared, as scikit-learn's `BaseSearchCV.fit` owns the loop and a subclass supplies
`_run_search`. `fit` is the only place a Tuner is fitted, and it always closes the Recorder, so
whatever ends a run, what it recorded is on disk before the outcome is decided.
"""

from __future__ import annotations

import json
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator import ray_api
from orchestrator.cluster.nodes import PendingWatch
from orchestrator.errors import RunError, RunInterrupted, SpecError
from orchestrator.results import rundir
from orchestrator.results.constraints import feasibility_line
from orchestrator.results.contract import EXPERIMENT, OWNER
from orchestrator.results.writer import Recorder
from orchestrator.run import ray_local, refit, signals, take_home
from orchestrator.run.outcome import Ended, outcome, pareto_evaluation
from orchestrator.run.progress import Progress
from orchestrator.run.run_data import RunData
from orchestrator.run.stopping import SearchStop
from orchestrator.run.summary import RunSummary, top_trials
from orchestrator.run.tuner import TunerFactory, build_tuner
from orchestrator.spec.experiment import Experiment
from orchestrator.trial import placement

# Called once Ray is up and signals are handled: writes experiment.json and returns it with the
# run's Recorder (fresh for `hpo run`, reopened for `hpo resume`).
Begin = Callable[[], "tuple[dict[str, Any], Recorder]"]


@dataclass(frozen=True)
class Watch:
    """What a top-level run adds around its fit (a nested search has none of it): the progress
    line, each trial's placement record, notes for the log, and why trials wait."""

    progress: Progress | None
    placement_key: str | None
    on_note: Callable[[str], None]
    pending: PendingWatch | None


def drive(exp: Experiment, run_dir: Path, data: RunData, begin: Begin, make_tuner: TunerFactory, *, quiet: bool,
          ray_address: str | None) -> RunSummary:
    """The lifecycle `hpo run` and `hpo resume` share, once the folder is claimed. A refusal before
    `begin` wrote experiment.json (pre-flight, Ray not reachable) leaves the folder unclaimed.
    The data is in Ray's object store only while the Tuner fits (orchestrator.run.run_data)."""
    try:
        with ray_local.connected(ray_address, meanwhile=imports_after_start(exp)), signals.handling_signals():
            ray_local.preflight(exp)
            meta, recorder = begin()
            tracking = _open_tracking(exp, run_dir, meta)
            if tracking:  # fed by the Recorder's events, written on its own thread (orchestrator.tracking)
                recorder.listeners.append(tracking)
            journal = _open_journal(exp, run_dir, meta, recorder)
            # budget.stop and the cost budgets, counting on from the record after a resume
            search_stop = SearchStop.for_run(exp, recorder.trials, meta)
            try:
                watch = _watch(exp, meta, recorder, quiet, search_stop)
                ended = fit(exp, run_dir, data.for_trials(), recorder, make_tuner, watch=watch,
                            search_stop=search_stop)
                dataset = data.after_search()  # out of the store before Ray can go
                if not refit.needs_ray(exp):  # Ray's shutdown overlaps the refit here and the model
                    ray_local.release_early()
            finally:  # every trial's end is queued by now (the Recorder closed): the journal is complete
                if journal:
                    meta["dashboard"] = journal.close()
            return conclude(exp, run_dir, meta, recorder, dataset, ended, tracking)
    except BaseException:
        if not (run_dir / EXPERIMENT).exists():  # refused before anything ran: the folder stays free
            (run_dir / OWNER).unlink(missing_ok=True)
        raise


def imports_after_start(exp: Experiment) -> tuple[str, ...]:
    """What this process imports once Ray is up, imported while a local Ray starts instead
    (orchestrator.run.ray_local.imported_meanwhile): Ray Tune, with the run's callbacks, and the
    family's library where the refit will train here (orchestrator.run.refit.here_after_a_local_ray)."""
    library = getattr(exp.family, "library", None)
    return ("orchestrator.run.callbacks",) + ((library,) if library and refit.here_after_a_local_ray(exp) else ())


def _watch(exp: Experiment, meta: dict[str, Any], recorder: Recorder, quiet: bool,
           search_stop: SearchStop | None = None) -> Watch:
    time_s = rundir.time_left_s(exp.spec.budget.time_s, meta)  # after `hpo resume`, what is left
    progress = None if quiet else Progress(recorder, exp.total_trials, time_s=time_s, search_stop=search_stop)
    res = exp.spec.resources
    # each trial's node, CPUs and GPU ids travel under the key (orchestrator.trial.placement)
    return Watch(progress, placement.new_key(meta["run_id"]), progress.note if progress else warn,
                 PendingWatch(res.cpu, res.gpu))


def _open_tracking(exp: Experiment, run_dir: Path, meta: dict[str, Any]):
    from orchestrator.tracking.listener import open_tracking

    return open_tracking(exp.spec.tracking, run_dir, meta["run_id"], exp.spec.name, meta["spec"], exp.metric)


def _open_journal(exp: Experiment, run_dir: Path, meta: dict[str, Any], recorder: Recorder):
    """With `dashboard: true`: the live Optuna journal, a listener of the Recorder (orchestrator.tracking.journal)."""
    if not exp.spec.dashboard:
        return None
    from orchestrator.tracking.journal import open_journal

    journal = open_journal(run_dir, meta, recorder)
    recorder.listeners.append(journal)
    return journal


def fit(exp: Experiment, run_dir: Path, data: Any, recorder: Recorder, make_tuner: TunerFactory = build_tuner,
        watch: Watch | None = None, search_stop: SearchStop | None = None) -> Ended:
    """Fits the Tuner `make_tuner` builds into `run_dir`, feeding `recorder`, and closes the
    recorder whatever happens. Never raises for what Tune or a trial did: a signal (Ctrl-C,
    SIGTERM) or a failure comes back in `Ended`; a second Ctrl-C still raises at once.
    `search_stop`: the spec's rules that end the search early (orchestrator.run.stopping), fed by
    `recorder` while the Tuner fits; why one did comes back in `Ended` too."""
    from orchestrator.run.callbacks import RecorderCallback, RunStopper

    ray_api.count_callbacks_without_imports()  # ~1.4 s off every fit's start (orchestrator.ray_api)
    ray_api.finish_in_flight_when_asked()  # budget.in_flight: finish (orchestrator.run.stopping)
    ray_api.snapshots_written_whole()  # what `hpo resume` restores survives a kill -9 (orchestrator.ray_api)
    ray_api.reused_actors_never_replace_one_starting()  # no worker started only to be killed (orchestrator.ray_api)
    # trials start sooner, on whatever Ray this process is connected to (docs/performance.md)
    ray_api.trial_actors_on_prestarted_workers(ray_local.inherited_env)
    stopper = RunStopper(exp.metric, search_stop)
    if search_stop is not None:
        recorder.listeners.append(search_stop)
    if watch is None:
        callback, key = RecorderCallback(recorder, stopper=stopper), None
    else:
        progress, key = watch.progress, watch.placement_key
        callback = RecorderCallback(recorder, progress.tick if progress else None, key, stopper,
                                    on_note=watch.on_note, pending=watch.pending)
    signum, failure = None, None
    try:  # building the Tuner can fail too (Tune's restore, a trainable that will not pickle)
        make_tuner(exp, run_dir, [callback], data, key, stopper).fit()
    except (KeyboardInterrupt, signals.Interrupted) as exc:  # a second Ctrl-C; SIGTERM (`hpo stop`)
        signum = getattr(exc, "signum", signal.SIGINT)
    except Exception as exc:
        failure = explain(exc)
    signals.tune_loop_ended()
    signum = signals.requested() or signum  # Ctrl-C: Tune left its loop and returned normally
    if watch is not None and watch.progress:
        watch.progress.finish()
    stop_reason, stopped_at = None, None
    if search_stop is not None:
        recorder.listeners.remove(search_stop)
        search_stop.close()  # the regret bound's worker: an evaluation in flight is dropped
        if not (signum or failure):  # the search ended by its rule: trials in flight stopped then, or finished
            stop_reason, stopped_at = search_stop.stop_reason, search_stop.cut_off_at
    try:
        recorder.close(cut_off="interrupted" if signum else "stopped", at=stopped_at)
    except OSError as exc:  # a full disk: what earlier flushes wrote stays, and history parts are kept
        failure = failure or explain(exc)
    return Ended(signum, failure, stop_reason)


def conclude(exp: Experiment, run_dir: Path, meta: dict[str, Any], recorder: Recorder, data: Any, ended: Ended,
             tracking=None) -> RunSummary:
    """Records how the run ended in experiment.json, then refits the best config and saves its model
    (or records the Pareto front) if it finished, then closes the trackers (after the model, which
    they may log); returns the summary, or raises the run's error carrying it."""
    out = outcome(exp, recorder, ended)
    meta.update(status=out.status, error=out.failure, ended_at=rundir.now(), counts=out.counts,
                best=_jsonable(out.best_row), signal=out.signal_name, stop_reason=ended.stop_reason,
                # what writing Parquet cost the driver (benchmarks/bookkeeping.py); this session's, after a resume
                recorder={"flushes": recorder.flushes, "flush_s": round(recorder.flush_s, 3)})
    if exp.multi_objective:
        meta.update(pareto=_jsonable(out.pareto))
    write_meta(run_dir, meta)
    evaluated, model = None, None
    if out.status == "finished":
        concluded = None if exp.multi_objective else \
            refit.conclude(exp, data, out.best, nested_search(exp), run_dir, keep=True)
        evaluated = pareto_evaluation(out.pareto) if exp.multi_objective else concluded and concluded.evaluation
        model = take_home.save_run_model(run_dir, exp, data, meta, out.best, concluded)  # never raises
        if evaluated is not None:
            meta.update(evaluation=_jsonable(evaluated))
        meta.update(model=_jsonable(model), ended_at=rundir.now())
        write_meta(run_dir, meta)
        if tracking and model.get("path"):  # the model folder and its card, as the trackers' artifacts
            tracking.model_saved(run_dir / model["path"])
    if tracking:  # after the model, so that a tracker can log it with the run
        for line in tracking.close(out.status, out.best_row):
            print(line, file=sys.stderr)
        meta["tracking"] = tracking.stats()
        write_meta(run_dir, meta)
    summary = RunSummary(run_dir, meta["run_id"], exp.metric, out.counts, out.best_row, evaluated, out.status,
                         out.failure, top=() if exp.multi_objective else top_trials(recorder.trials.values(), exp.mode),
                         pareto=out.pareto, model=model, stop_reason=ended.stop_reason,
                         feasibility=feasibility_line(exp.constraints, [r.feasible for r in recorder.trials.values()])
                         if exp.constraints else None)
    if out.signum:
        raise RunInterrupted(out.failure, out.signum, summary)
    if out.failure:
        raise RunError(out.failure, summary)
    return summary


def nested_search(exp: Experiment) -> refit.Search:
    """The spec's search again on other data (an outer fold of nested evaluation), in its own
    folder, through the same `fit`: its best trial."""

    def search(data: Any, out_dir: Path):
        out_dir.mkdir(parents=True, exist_ok=True)
        recorder = Recorder(out_dir, exp.metric, exp.mode, max_t=exp.max_t, constraints=exp.constraints)
        ended = fit(exp, out_dir, data, recorder, search_stop=SearchStop.for_run(exp, recorder.trials))
        if ended.signum or ended.failure:
            raise RunError(ended.failure or f"interrupted by {signal.Signals(ended.signum).name}")
        return recorder.best

    return search


def warn(text: str) -> None:
    """A note that `--quiet` still shows (a lost node, trials pending long): it asks for action."""
    print(text, file=sys.stderr, flush=True)


def write_meta(run_dir: Path, meta: dict) -> None:
    """experiment.json, where the disk still allows: on a full disk the run's error says so already."""
    try:
        rundir.write_json(run_dir / EXPERIMENT, meta)
    except OSError as exc:
        if not rundir.disk_full(exc) or meta.get("status") != "failed":
            raise


def explain(exc: BaseException) -> str:
    """One line for why Tune failed: our own RunError or a disk error, wherever Ray wrapped it."""
    chain, seen = [], exc
    while seen is not None and seen not in chain:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    for e in chain:
        if isinstance(e, (RunError, SpecError)):
            return str(e)
    for e in chain:
        if isinstance(e, OSError) and e.errno is not None:
            where = f" {e.filename}" if e.filename else ""
            fix = "free some space" if rundir.disk_full(e) else "check the folder"
            return (f"cannot write{where}: {e.strerror}; {fix}, or run again with another --output "
                    f"(results flushed so far are kept)")
    text = str(exc)
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"


def _jsonable(value: Any) -> Any:
    return None if value is None else json.loads(json.dumps(value, default=str))

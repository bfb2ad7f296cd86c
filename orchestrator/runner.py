"""Experiment -> Ray Tune Tuner -> fitted run folder: the driver, and the only module that fits a Tuner.

`build_tune_config` has no side effects and needs no running Ray, so most tests assert on what
it builds. `run` owns a run folder end to end: it loads the data and claims the folder before
Ray starts, writes `experiment.json` first, streams results while Tune runs, and always flushes
what it has, whatever ends the run. The status it records and the exit code the CLI gives agree:
`finished` (0) needs a best trial; `failed` (1) says why; `interrupted` (128 + the signal).
"""

from __future__ import annotations

import inspect
import json
import os
import platform
import signal
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from orchestrator import auth, data as data_mod, interrupt, objectives, refit, rundir
from orchestrator.errors import InputError, Problem, RunError, RunInterrupted, SpecError
from orchestrator.families import Family, UserTrainable
from orchestrator.results import Recorder
from orchestrator.schedulers import SCHEDULERS, build_scheduler
from orchestrator.schema import SCHEMA_KEY, SCHEMA_VERSION
from orchestrator.searchers import SearchContext, build_search
from orchestrator.spec import Experiment
from orchestrator.summary import RunSummary, top_trials

# Ray Tune settings measured to cut per-trial overhead on a small machine (see README, benchmarks/).
# Ray's own logger callbacks write JSON/CSV/TensorBoard files per trial; our Parquet callback
# replaces them. Set before ray.tune is imported, and inherited by a local Ray's workers.
FAST_ENV = {
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
    "RAY_AIR_NEW_OUTPUT": "0",
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
    "RAY_DEDUP_LOGS": "1",
}
# Checks our RunStopper makes itself, with a better message (orchestrator.callbacks): Ray's would
# run first and say less. Forced, not defaults: the stopper is then the only check.
OWNED_ENV = {"TUNE_DISABLE_STRICT_METRIC_CHECKING": "1"}

VERSIONED_PACKAGES = ("hpo-orchestrator", "ray", "optuna", "pandas", "pyarrow", "numpy", "scikit-learn",
                      "xgboost", "lightgbm", "torch", "pydantic")


def new_run_dir(exp: Experiment, root: str | Path = "results") -> tuple[Path, str]:
    """results/<name>/<run id>: sortable by time, and the same spec shares a suffix."""
    run_id = rundir.new_run_id(exp.spec_hash)
    return Path(root) / exp.spec.name / run_id, run_id


def build_tune_config(exp: Experiment):
    """The TuneConfig for an experiment: searcher, scheduler, budget. Needs no running Ray."""
    from ray import tune

    spec = exp.spec
    if exp.warm_points:  # searchers that learn from scores take them; the others try the configs first
        points, rewards = [dict(p) for p in exp.warm_points], list(exp.warm_scores)
    else:
        points, rewards = [dict(p) for p in spec.searcher.points_to_evaluate], None
    # Several metrics go to the searcher as lists (Optuna's multi-objective study); Tune's own
    # metric/mode stay the first one's, for what reads one (FIFO needs none: the only scheduler allowed).
    metric, mode = ([n for n, _ in exp.objectives], [m for _, m in exp.objectives]) if exp.multi_objective \
        else (exp.metric, exp.mode)
    plan = build_search(spec.searcher, SearchContext(exp.params, metric, mode, exp.searcher_seed, points, rewards,
                                                     trials=exp.total_trials))
    cap = concurrent = min(spec.budget.concurrent, spec.searcher.max_concurrent or spec.budget.concurrent)
    if isinstance(plan.search_alg, tune.search.BasicVariantGenerator):
        # Ray ignores max_concurrent_trials for a generator passed in (with a warning): it must be
        # set on the generator itself.
        plan.search_alg.max_concurrent, concurrent = concurrent, None
    scheduler = build_scheduler(spec.scheduler, exp.params)
    if hasattr(scheduler, "cap"):  # HyperBand widens the searcher's cap by its paused trials (ray_schedulers)
        scheduler.cap = cap
    config = tune.TuneConfig(
        metric=exp.metric,
        mode=exp.mode,
        search_alg=plan.search_alg,
        scheduler=scheduler,
        num_samples=spec.budget.trials,
        max_concurrent_trials=concurrent,
        time_budget_s=spec.budget.time_s,
        reuse_actors=can_reuse_actors(exp),
        trial_dirname_creator=trial_dirname,
    )
    return config, plan.param_space


def can_reuse_actors(exp: Experiment) -> bool:
    """Actor reuse cuts ~1.5 s per trial, but a `tune.Trainable` class can only be reused if it
    overrides `reset_config`: otherwise Tune logs "could not re-use actor" and never moves on."""
    fn = getattr(exp.family, "fn", None)
    if inspect.isclass(fn):
        from ray.tune import Trainable

        return fn.reset_config is not Trainable.reset_config
    return True


def trial_dirname(trial) -> str:
    """Ray's default folder name spells out the whole config (and gets truncated); the id is enough."""
    return trial.trial_id


def build_trainable(exp: Experiment, data: Any = None, placement_key: str | None = None):
    """The Ray trainable with its resources; `data` goes through the object store once.

    With `placement_key`, every trial records where it ran (orchestrator.placement).
    """
    from ray import tune

    family = exp.family
    if isinstance(family, UserTrainable):
        if family.module_file is not None:
            # Loaded from a file path, the module is not importable on workers: ship it by value.
            import ray.cloudpickle

            ray.cloudpickle.register_pickle_by_value(sys.modules[family.fn.__module__])
        trainable = family.fn
    else:
        from orchestrator.trainable import run_family_trial

        scheduler = SCHEDULERS[exp.spec.scheduler.name]
        trainable = tune.with_parameters(
            run_family_trial, family_ref=exp.spec.family, data=data, seed=exp.spec.seed,
            checkpoint_every=checkpoint_policy(exp).every, base_dir=str(exp.base_dir),
            evaluation=exp.spec.evaluation, metric=exp.metric,
            report_every_s=scheduler.report_window_s, on_time=scheduler.on_time(exp.spec.scheduler),
            objectives=tuple(n for n, _ in exp.objectives))
    if placement_key is not None:
        from orchestrator.placement import recording

        trainable = recording(trainable, placement_key)
    res = exp.spec.resources
    return tune.with_resources(trainable, {"cpu": res.cpu, "gpu": res.gpu})


def checkpoint_policy(exp: Experiment):
    """How often trials checkpoint, and whether they share checkpoints: the scheduler's to say."""
    return SCHEDULERS[exp.spec.scheduler.name].checkpoints(exp.spec.scheduler)


def with_pruner(exp: Experiment, callbacks: list) -> list:
    """The run's callbacks, plus checkpoint pruning where the scheduler makes trials checkpoint,
    plus retries for lost workers only where budget.max_failures allows any."""
    from orchestrator.callbacks import CheckpointPruner, RetryLostWorkersOnly

    if exp.spec.budget.max_failures:
        callbacks = [*callbacks, RetryLostWorkersOnly()]
    policy = checkpoint_policy(exp)
    if not policy.every:
        return callbacks
    # Not Ray's num_to_keep, which deletes checkpoints still in use: see orchestrator.checkpoints.
    return [*callbacks, CheckpointPruner(policy.shared)]


def build_tuner(exp: Experiment, run_dir: Path, callbacks: list, data: Any = None, placement_key: str | None = None,
                stopper=None):
    """The Tuner; `stopper` (a RunStopper, made here if not given) checks every result first."""
    from ray import tune

    from orchestrator.callbacks import RunStopper

    tune_config, param_space = build_tune_config(exp)
    callbacks = with_pruner(exp, callbacks)
    run_config = tune.RunConfig(
        name="tune",
        storage_path=str(Path(run_dir).resolve()),
        callbacks=callbacks,
        stop=stopper or RunStopper(exp.metric),
        # lost workers only: callbacks.RetryLostWorkersOnly
        failure_config=tune.FailureConfig(max_failures=exp.spec.budget.max_failures),
        verbose=0,
        log_to_file=False,
    )
    return tune.Tuner(build_trainable(exp, data, placement_key), param_space=param_space, tune_config=tune_config,
                      run_config=run_config)


def preflight(exp: Experiment) -> None:
    """Refuses a per-trial request that no alive node can hold: Ray would wait for it forever."""
    if os.environ.get("RAY_ADDRESS"):
        # Joined to a cluster (a Ray job): an autoscaler may still add nodes, so the check is by node
        # type, made at submit time against the cluster file (orchestrator.cluster.check_capacity).
        return
    from orchestrator.nodes import check_live, live_nodes

    res = exp.spec.resources
    check_live(live_nodes(), res.cpu, res.gpu, "this Ray", exp.source)


def start_local_ray(num_cpus: int | None = None, num_gpus: int | None = None, address: str | None = None) -> bool:
    """Starts an embedded Ray unless one is already up in this process. Returns True if started.

    With `address` ("auto" or host:port of a running Ray's GCS) it joins that Ray instead, which
    skips Ray's start-up (seconds; see the README's performance section); so does RAY_ADDRESS,
    which Ray sets inside a job submitted to a cluster. Joined, not started, but still shut down
    (disconnected) after the run. Raises InputError when there is nothing to join.
    """
    import ray

    if ray.is_initialized():
        return False
    apply_fast_env()
    auth.enable_token_auth()
    quiet = {"logging_level": "ERROR",
             # Workers log every checkpoint and restore at INFO; users' own prints still come through.
             "logging_config": ray.LoggingConfig(log_level="WARNING")}
    if address or os.environ.get("RAY_ADDRESS"):
        try:
            ray.init(address=address, **quiet)
        except ConnectionError as exc:
            raise InputError(f"no running Ray to join at {address or os.environ['RAY_ADDRESS']} "
                             f"({str(exc).splitlines()[0]}); start one with `ray start --head "
                             f"--node-ip-address 127.0.0.1`, or leave --ray out to start one for this run") from None
    else:
        # address="local": a new Ray of our own, even where `ray start` left a cluster (or its address
        # file) behind, which a bare ray.init() would silently join.
        ray.init(address="local", num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False,
                 _node_ip_address="127.0.0.1", **quiet)
    quiet_driver_logs()
    return True


def quiet_driver_logs() -> None:
    """Keeps the driver's console to our progress line: Ray Tune warns once per trial that its own
    result files are missing (we write Parquet instead), and hints at settings we chose on purpose."""
    import logging

    from orchestrator import ray_api

    logging.getLogger("ray").setLevel(logging.ERROR)
    ray_api.quiet_worker_exits()  # the SystemExit traceback of workers Ray ends after the run


def apply_fast_env() -> None:
    for k, v in FAST_ENV.items():
        os.environ.setdefault(k, v)
    os.environ.update(OWNED_ENV)


def run(exp: Experiment, output: str | Path | None = None, *, quiet: bool = False,
        ray_address: str | None = None) -> RunSummary:
    """Runs an experiment on the Ray this process is connected to: else the one at `ray_address`
    ("auto": the one `ray start` left running here), else a local one started for this run."""
    apply_fast_env()
    if output is None:
        run_dir, run_id = new_run_dir(exp)
    else:
        run_dir, run_id = Path(output), rundir.new_run_id(exp.spec_hash)
    if run_dir.is_dir() and any(run_dir.iterdir()):  # fail fast; the claim below is the real check
        raise InputError(f"{run_dir} already holds results; choose an empty or new folder "
                         f"(results are never overwritten)")
    # Everything the user can get wrong is checked before Ray starts (it takes seconds).
    dataset = load_data(exp)
    claim = claim_folder(run_dir)

    started = False
    try:
        started = start_local_ray(address=ray_address)
        quiet_driver_logs()
        with interrupt.handling_signals():
            preflight(exp)
            meta = _metadata(exp, run_id, claim.owner)
            rundir.write_json(run_dir / rundir.EXPERIMENT, meta)
            return _fit(exp, run_dir, run_id, meta, dataset, quiet, claim)
    except BaseException:
        if not (run_dir / rundir.EXPERIMENT).exists():  # refused before anything ran: the folder stays free
            (run_dir / rundir.OWNER).unlink(missing_ok=True)
        raise
    finally:
        if started:
            import ray

            ray.shutdown()


def claim_folder(run_dir: Path) -> rundir.Claim:
    """The run folder, made this run's alone (orchestrator.rundir.claim), or a one-line refusal."""
    try:
        return rundir.claim(run_dir)
    except rundir.FolderTaken as exc:
        raise InputError(str(exc)) from None
    except OSError as exc:
        raise InputError(f"cannot write the run folder {run_dir}: {exc.strerror or exc}; choose another --output "
                         f"on a writable disk with free space") from None


def load_data(exp: Experiment):
    """The experiment's dataset, or None for a family without data; a bad file is the user's to fix."""
    if not (isinstance(exp.family, Family) and exp.family.needs_data):
        return None
    try:
        return data_mod.load(exp.spec.data, exp.base_dir)
    except data_mod.DataError as exc:
        raise SpecError(Problem(exc.field, str(exc)), exp.source) from None


def _fit(exp: Experiment, run_dir: Path, run_id: str, meta: dict, dataset: Any, quiet: bool,
         claim: rundir.Claim, recorder: Recorder | None = None, make_tuner=None) -> RunSummary:
    """Fits the Tuner into `run_dir` and writes the outcome. `hpo resume` passes the earlier run's
    Recorder and a factory that restores Tune's own state (orchestrator.resume)."""
    from orchestrator.callbacks import RecorderCallback, RunStopper
    from orchestrator.nodes import PendingWatch
    from orchestrator.placement import new_key
    from orchestrator.progress import Progress
    from orchestrator.tracking import open_tracking

    recorder = recorder or Recorder(run_dir, exp.metric, exp.mode, max_t=exp.max_t, on_flush=lambda _: claim.beat(),
                                    objectives=exp.objectives)
    time_s = rundir.time_left_s(exp.spec.budget.time_s, meta)  # after `hpo resume`, what is left
    progress = None if quiet else Progress(recorder, exp.total_trials, time_s=time_s)
    key = new_key(run_id)  # each trial's node, CPUs and GPU ids travel under it (orchestrator.placement)
    stopper = RunStopper(exp.metric)
    tracking = open_tracking(exp.spec.tracking, run_dir, run_id, exp.spec.name, meta["spec"], exp.metric)
    if tracking:  # fed by the Recorder's events, written on its own thread (orchestrator.tracking)
        recorder.listeners.append(tracking)
    res = exp.spec.resources
    callback = RecorderCallback(recorder, progress.tick if progress else None, key, stopper,
                                on_note=progress.note if progress else _warn, pending=PendingWatch(res.cpu, res.gpu))
    signum, failure = None, None
    try:  # building the Tuner can fail too (Tune's restore, a trainable that will not pickle)
        (make_tuner or build_tuner)(exp, run_dir, [callback], dataset, key, stopper).fit()
    except (KeyboardInterrupt, interrupt.Interrupted) as exc:  # a second Ctrl-C; SIGTERM (`hpo stop`)
        signum = getattr(exc, "signum", signal.SIGINT)
    except Exception as exc:  # noqa: BLE001 - every failure ends here; results are flushed below
        failure = _explain(exc, exp)
    signum = interrupt.requested() or signum  # Ctrl-C: Tune stopped the trials and returned normally
    if progress:
        progress.finish()
    try:
        recorder.close(cut_off="interrupted" if signum else "stopped")
    except OSError as exc:  # a full disk: what earlier flushes wrote stays, and history parts are kept
        failure = failure or _explain(exc, exp)
    # Several metrics have no single best: the Pareto front instead (orchestrator.objectives).
    best_trial = None if exp.multi_objective else recorder.best  # chosen among all trials: once
    best = best_trial.row() if best_trial else None
    pareto = recorder.pareto() if exp.multi_objective else None
    counts = {**recorder.counts(), "not_started": max(0, exp.total_trials - len(recorder.trials))}
    if signum:
        failure = (f"interrupted by {signal.Signals(signum).name}: {counts['interrupted']} trials cut off, "
                   f"{counts['not_started']} never started; results so far are in {run_dir}")
    elif failure is None and best is None and not pareto:
        failure = objectives.no_front(exp.objectives, recorder.rows()) if exp.multi_objective else _no_best(recorder, exp)
    status = "interrupted" if signum else "failed" if failure else "finished"
    if tracking:
        for line in tracking.close(status, best):
            print(line, file=sys.stderr)
        meta["tracking"] = tracking.stats()
    meta.update(status=status, error=failure, ended_at=rundir.now(), counts=counts, best=_jsonable(best),
                signal=signal.Signals(signum).name if signum else None)
    if exp.multi_objective:
        meta.update(pareto=json.loads(json.dumps(pareto, default=str)))
    _write_meta(run_dir, meta)
    evaluated = None
    if status == "finished" and exp.multi_objective:
        evaluated = objectives.conclude(pareto)
        meta.update(evaluation=evaluated)
        _write_meta(run_dir, meta)
    elif status == "finished":
        evaluated = refit.conclude(exp, dataset, best_trial, lambda d, out: _search_on(exp, d, out), run_dir)
        if evaluated is not None:
            meta.update(evaluation=_jsonable(evaluated), ended_at=rundir.now())
            _write_meta(run_dir, meta)
    summary = RunSummary(run_dir, run_id, exp.metric, counts, best, evaluated, status, failure,
                         top=() if exp.multi_objective else top_trials(recorder.trials.values(), exp.mode),
                         pareto=pareto)
    if signum:
        raise RunInterrupted(failure, signum, summary)
    if failure:
        raise RunError(failure, summary)
    return summary


def _warn(text: str) -> None:
    """A note that `--quiet` still shows (a lost node, trials pending long): it asks for action."""
    print(text, file=sys.stderr, flush=True)


def _write_meta(run_dir: Path, meta: dict) -> None:
    """experiment.json, where the disk still allows: on a full disk the run's error says so already."""
    try:
        rundir.write_json(run_dir / rundir.EXPERIMENT, meta)
    except OSError as exc:
        if not rundir.disk_full(exc) or meta.get("status") != "failed":
            raise


def _search_on(exp: Experiment, data: Any, out_dir: Path):
    """The spec's search again, on other data (an outer fold of nested evaluation): its best trial."""
    out_dir.mkdir(parents=True, exist_ok=True)
    from orchestrator.callbacks import RecorderCallback, RunStopper

    recorder = Recorder(out_dir, exp.metric, exp.mode, max_t=exp.max_t)
    stopper = RunStopper(exp.metric)
    try:
        build_tuner(exp, out_dir, [RecorderCallback(recorder, stopper=stopper)], data, stopper=stopper).fit()
    finally:
        recorder.close()
    return recorder.best


def _explain(exc: BaseException, exp: Experiment) -> str:
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


def _no_best(recorder: Recorder, exp: Experiment) -> str:
    """Why a run that ended normally has no best trial."""
    errors = [r.error for r in recorder.trials.values() if r.status == "errored" and r.error]
    if errors:
        return (f"no trial reported a finite {exp.metric} and ended normally; {len(errors)} errored, "
                f"the first: {errors[0]} (all errors: trials.parquet, column error)")
    if not recorder.trials:
        return "no trial started; see the log above"
    return f"no trial reported a finite value of {exp.metric} (NaN and infinite scores are never the best)"


def _metadata(exp: Experiment, run_id: str, owner: dict[str, Any]) -> dict[str, Any]:
    return {
        SCHEMA_KEY: SCHEMA_VERSION,
        "run_id": run_id,
        "name": exp.spec.name,
        "source": exp.source,
        "base_dir": str(exp.base_dir),  # where the spec's relative paths point (resume needs it)
        "spec_hash": exp.spec_hash,
        "spec": exp.resolved(),
        "seed": exp.spec.seed,
        "metric": {"name": exp.metric, "mode": exp.mode},  # with several metrics, the first; all under objectives
        **({"objectives": [{"name": n, "mode": m} for n, m in exp.objectives]} if exp.multi_objective else {}),
        "status": "running",
        "started_at": rundir.now(),
        "ended_at": None,
        "owner": {k: owner[k] for k in ("host", "pid")},  # heartbeat: owner.json (orchestrator.rundir)
        "python": platform.python_version(),
        "versions": _versions(),
    }


def _versions() -> dict[str, str]:
    out = {}
    for pkg in VERSIONED_PACKAGES:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def _jsonable(row: dict | None) -> dict | None:
    if row is None:
        return None
    return json.loads(json.dumps(row, default=str))

"""Experiment -> Ray Tune Tuner, without side effects: the one module that constructs a Tuner.

`build_tune_config` needs no running Ray, so most tests assert on what it builds (searcher,
scheduler, budget). `build_tuner` makes the Tuner of a fresh run or of a nested search;
`restore_tuner` makes the Tuner of a resumed run from Tune's own snapshot. Both have the shape of
`TunerFactory`, the one seam of a run's lifecycle (orchestrator.run.lifecycle.fit).
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from orchestrator import ray_api
from orchestrator.families.registry import UserTrainable
from orchestrator.results.rundir import time_left_s
from orchestrator.search.schedulers import SCHEDULERS, CheckpointPolicy, build_scheduler
from orchestrator.search.searchers import SearchContext, build_search
from orchestrator.spec.experiment import Experiment
from orchestrator.trial.settings import TrialSettings

TUNE_DIR = "tune"  # where Tune keeps its state and the trials' checkpoints, inside the run folder

# (experiment, run folder, callbacks, data, placement key, stopper) -> an unfitted Tuner.
TunerFactory = Callable[[Experiment, Path, list, Any, "str | None", Any], Any]


def build_tune_config(exp: Experiment):
    """The TuneConfig for an experiment: searcher, scheduler, budget. Needs no running Ray."""
    from ray import tune

    from orchestrator.search.resumable import ResumableSearch

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
                                                     trials=exp.total_trials, constraints=exp.constraints))
    cap = min(spec.budget.concurrent, spec.searcher.max_concurrent or spec.budget.concurrent)
    search_alg = plan.search_alg
    if isinstance(search_alg, tune.search.BasicVariantGenerator):
        # Ray ignores max_concurrent_trials for a generator passed in (with a warning): it must be
        # set on the generator itself.
        search_alg.max_concurrent = cap
    else:  # wrapped as Tune wraps a Searcher, in a wrapper a resume can tell (orchestrator.search.resumable)
        search_alg = ResumableSearch(tune.search.ConcurrencyLimiter(search_alg, max_concurrent=cap))
    scheduler = build_scheduler(spec.scheduler, exp.params)
    if hasattr(scheduler, "cap"):  # HyperBand widens the searcher's cap by its paused trials (ray_schedulers)
        scheduler.cap = cap
    config = tune.TuneConfig(
        metric=exp.metric,
        mode=exp.mode,
        search_alg=search_alg,
        scheduler=scheduler,
        num_samples=spec.budget.trials,
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


def checkpoint_policy(exp: Experiment) -> CheckpointPolicy:
    """How often trials checkpoint, and whether they share checkpoints: the scheduler's to say."""
    return SCHEDULERS[exp.spec.scheduler.name].checkpoints(exp.spec.scheduler)


def trial_settings(exp: Experiment) -> TrialSettings:
    """What every trial of a built-in family gets from the driver (orchestrator.trial.settings)."""
    scheduler = SCHEDULERS[exp.spec.scheduler.name]
    return TrialSettings(
        family_ref=exp.spec.family, base_dir=str(exp.base_dir), seed=exp.spec.seed, evaluation=exp.spec.evaluation,
        metric=exp.metric, objectives=measured(exp),
        checkpoint_every=checkpoint_policy(exp).every, report_every_s=scheduler.report_window_s,
        on_time=scheduler.on_time(exp.spec.scheduler))


def measured(exp: Experiment) -> tuple[str, ...]:
    """The metrics a built-in family's trial is asked for by name (TrialSettings.objectives):
    every objective of a multi-objective spec and every constrained metric; a cost metric
    (`predict_ms`, `model_size`) is measured only when named here."""
    names = [n for n, _ in exp.objectives]
    if exp.constraints:
        names = list(dict.fromkeys([*(names or [exp.metric]), *(c.metric for c in exp.constraints)]))
    return tuple(names)


def build_trainable(exp: Experiment, data: Any = None, placement_key: str | None = None):
    """The Ray trainable with its resources; `data` goes through the object store once: the
    run's own as a reference to what the driver put there (orchestrator.run.run_data), an outer
    fold's as a Dataset that `tune.with_parameters` puts there.

    With `placement_key`, every trial records where it ran (orchestrator.trial.placement).
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
        from orchestrator.trial.trainable import run_family_trial

        trainable = tune.with_parameters(run_family_trial, settings=trial_settings(exp), data=data)
    if placement_key is not None:
        from orchestrator.trial.placement import recording

        trainable = recording(trainable, placement_key)
    res = exp.spec.resources
    return tune.with_resources(trainable, {"cpu": res.cpu, "gpu": res.gpu})


def run_callbacks(exp: Experiment, callbacks: list, run_dir: Path) -> list:
    """The run's callbacks, plus checkpoint pruning where the scheduler makes trials checkpoint,
    plus retries for lost workers only where budget.max_failures allows any."""
    from orchestrator.run.callbacks import CheckpointPruner, RetryLostWorkersOnly

    if exp.spec.budget.max_failures:
        callbacks = [*callbacks, RetryLostWorkersOnly()]
    policy = checkpoint_policy(exp)
    if not policy.every:
        return callbacks
    # Not Ray's num_to_keep, which deletes checkpoints still in use: see orchestrator.run.checkpoints.
    return [*callbacks, CheckpointPruner(policy.shared, Path(run_dir).resolve() / TUNE_DIR)]


def build_tuner(exp: Experiment, run_dir: Path, callbacks: list, data: Any = None, placement_key: str | None = None,
                stopper=None):
    """A fresh run's Tuner; `stopper` (a RunStopper, made here if not given) checks every result first."""
    from ray import tune

    from orchestrator.run.callbacks import RunStopper

    tune_config, param_space = build_tune_config(exp)
    run_config = tune.RunConfig(
        name=TUNE_DIR,
        storage_path=str(Path(run_dir).resolve()),
        callbacks=run_callbacks(exp, callbacks, run_dir),
        stop=stopper or RunStopper(exp.metric),
        # lost workers only: callbacks.RetryLostWorkersOnly
        failure_config=tune.FailureConfig(max_failures=exp.spec.budget.max_failures),
        verbose=0,
        log_to_file=False,
    )
    return tune.Tuner(build_trainable(exp, data, placement_key), param_space=param_space, tune_config=tune_config,
                      run_config=run_config)


def can_restore(run_dir: Path) -> bool:
    """Whether Tune left a snapshot of its experiment in the run folder to continue from."""
    from ray import tune

    return tune.Tuner.can_restore(str((Path(run_dir) / TUNE_DIR).resolve()))


def restore_tuner(meta: dict[str, Any], after_snapshot: list, total_trials: int | None = None) -> TunerFactory:
    """A `TunerFactory` that continues Tune's own snapshot of the run (`hpo resume`), with this
    process's callbacks and stopper. `meta` is experiment.json and `after_snapshot` the trials that
    finished after Tune's last snapshot (orchestrator.search.resumable.AfterSnapshot), both as the
    resume's `begin` leaves them before the fit: `meta`'s `resumes` say how much of
    `budget.time_s` is left, and the restored search algorithm is told `after_snapshot`, and
    `total_trials`, the run's budget (new after `hpo resume --set budget.trials=N`)."""

    def restored(exp: Experiment, run_dir: Path, callbacks: list, data: Any, key: str | None, stopper):
        from ray import tune

        tuner = tune.Tuner.restore(str((Path(run_dir) / TUNE_DIR).resolve()), build_trainable(exp, data, key),
                                   resume_unfinished=True, resume_errored=False, restart_errored=False)
        ray_api.replace_run_hooks(tuner, run_callbacks(exp, callbacks, run_dir), stopper)
        if exp.spec.budget.time_s is not None:
            ray_api.set_time_budget(tuner, time_left_s(exp.spec.budget.time_s, meta))
        search_alg = ray_api.search_alg_of(tuner)
        if hasattr(search_alg, "after_snapshot"):  # not in a run folder written before it existed
            search_alg.after_snapshot(list(after_snapshot), total_trials)
        return tuner

    return restored

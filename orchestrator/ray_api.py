"""The Ray APIs that move between releases, in one place: what a trial calls, and Ray's private parts.

A trial's report call moved from `ray.air.session.report` to `ray.train.report` to
`ray.tune.report`; families call `orchestrator.trial.context.TrialContext.report`, which calls `report`
here, so a Ray upgrade changes this file, not the families.

Some things only Ray's private modules do. Each is imported here and nowhere else, and
`PRIVATE_APIS` lists them with the Ray version they were checked against, so a test
(`tests/test_architecture.py`) fails on an upgrade that removes one, instead of a user's run:

- the GCS key-value store, where each trial's worker records where it ran (orchestrator.trial.placement);
- `ray._raylet.Config.initialize`, which re-reads the auth mode Ray cached at import (orchestrator.cluster.auth);
- `ray up`'s own cluster-file checks and KubeRay's translation (orchestrator.cluster.spec);
- scheduler internals our subclasses override (orchestrator.search.ray_schedulers), and the trial's
  retry decision (orchestrator.run.callbacks.RetryLostWorkersOnly), listed only;
- the driver's handler of worker output, to drop one traceback Ray prints on every run that
  reuses actors (`quiet_worker_exits`);
- Tune's usage tag of a run's callbacks, counted without importing every integration
  (`count_callbacks_without_imports`);
- a search ended with its running trials left to finish (`finish_in_flight_when_asked`);
- the local head's autoscaler monitor, ended before Ray's shutdown stops the GCS (`stop_autoscaler_monitor`);
- a local Ray started without the dashboard process Ray 2.60 starts even without the dashboard,
  and without importing the dashboard's dependencies in the driver (`without_dashboard_process`);
- Tune's snapshot copied into a local run folder file by file, each whole (`snapshots_written_whole`);
- trial actors created without the runtime env Tune gives them where it changes nothing or the
  actor can set its variables itself, so the workers Ray prestarted serve them
  (`trial_actors_on_prestarted_workers`);
- a trial actor's start without importing IPython only to clear a shell no worker has
  (`trial_actors_without_ipython`, called in the worker by orchestrator.trial.trainable, and by
  orchestrator.trial.placement for every trainable, a user's too, where `in_ray_worker`);
- a finished trial's actor kept for the next trial instead of replacing an actor Ray is
  already creating (`reused_actors_never_replace_one_starting`).

Driver-side Ray Tune (the Tuner, searchers, schedulers, callbacks) is public API and stays with
the modules that build it: runner.py, searchers.py, schedulers.py, ray_schedulers.py, space.py,
callbacks.py.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import re
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

CHECKED_AGAINST = "2.60"

# (module, attribute) pairs that are not Ray's public API, and who needs them.
PRIVATE_APIS: tuple[tuple[str, str, str], ...] = (
    ("ray.experimental.internal_kv", "_internal_kv_put", "placement: a trial records its node and GPU ids"),
    ("ray.experimental.internal_kv", "_internal_kv_get", "placement: the driver reads them"),
    ("ray.experimental.internal_kv", "_internal_kv_del", "placement: records deleted at the end of a run"),
    ("ray.experimental.internal_kv", "_internal_kv_initialized", "placement: only when Ray is up"),
    ("ray._raylet", "Config", "auth: re-read RAY_AUTH_MODE after Ray was imported"),
    ("ray.autoscaler._private.util", "prepare_config", "cluster: `ray up`'s defaults for a cluster file"),
    ("ray.autoscaler._private.util", "validate_config", "cluster: `ray up`'s schema check"),
    ("ray.autoscaler._private.kuberay.autoscaling_config", "_derive_autoscaling_config_from_ray_cr",
     "cluster: a KubeRay RayCluster -> node types"),
    ("ray.tune.impl.tuner_internal", "TunerInternal.get_run_config",
     "resume: a restored Tuner gets this run's callbacks (Tuner._local_tuner holds it)"),
    ("ray.tune.impl.tuner_internal", "TunerInternal._tune_config",
     "resume: the time budget left; the search algorithm told what finished after Tune's last snapshot"),
    ("ray.tune.execution.experiment_state", "_find_newest_experiment_checkpoint",
     "resume: which trials Tune's last snapshot knows, and how they stood (the file's trial_data)"),
    ("ray.tune.search.optuna.optuna_search", "OptunaSearch._ot_study",
     "searchers: a finished trial added to the study of a define-by-run space (add_evaluated_point)"),
    ("ray.tune.search.bohb.bohb_search", "_BOHBJobWrapper", "searchers: a finished trial told to BOHB's model"),
    ("ray.tune.search.bohb.bohb_search", "TuneBOHB.bohber", "searchers: BOHB's model, told a finished trial"),
    ("ray.tune.search.search_generator", "SearchGenerator._counter",
     "resume: trials created after Tune's last snapshot count toward num_samples"),
    ("ray.tune.search.basic_variant", "BasicVariantGenerator._live_trials",
     "resume: a variant skipped for a trial that finished after Tune's last snapshot"),
    ("ray._private.ray_logging", "global_worker_stdstream_dispatcher", "runner: drop workers' SIGTERM tracebacks"),
    ("ray.tune.experiment.trial", "Trial.should_recover",
     "callbacks: retry a trial (budget.max_failures) only when its worker or node was lost"),
    ("ray.tune.schedulers.hyperband", "HyperBandScheduler._trial_info", "ray_schedulers: a trial's bracket"),
    ("ray.tune.schedulers.hyperband", "_Bracket.cleanup_full", "ray_schedulers: stop a finished bracket's trials"),
    ("ray.tune.schedulers.hyperband", "HyperBandScheduler._hyperbands", "ray_schedulers: every bracket"),
    ("ray.tune.schedulers.hyperband", "HyperBandScheduler._process_bracket",
     "ray_schedulers: halve a bracket filled under budget.concurrent"),
    ("ray.tune.schedulers.hyperband", "_Bracket.update_trial_stats", "ray_schedulers: the result's rung"),
    ("ray.tune.schedulers.hyperband", "_Bracket.continue_trial", "ray_schedulers: below the rung's milestone"),
    ("ray.tune.schedulers.hyperband", "_Bracket.filled", "ray_schedulers: a bracket still taking trials"),
    ("ray.tune.schedulers.hyperband", "_Bracket.current_trials", "ray_schedulers: a bracket's paused trials"),
    ("ray.tune.schedulers.hyperband", "_Bracket.trials_to_unpause", "ray_schedulers: paused trials about to run"),
    ("ray.tune.experiment.trial", "Trial.error_file", "callbacks: a trial's error text"),
    ("ray.tune.experiment.trial", "Trial.pickled_error_file", "callbacks: the exception a trial raised"),
    ("ray.tune.schedulers.median_stopping_rule", "MedianStoppingRule._on_insufficient_samples",
     "ray_schedulers: continue instead of pause"),
    ("ray.air._internal.usage", "_count_callbacks", "lifecycle: Tune's callback usage tag without its imports"),
    ("ray.tune.execution.tune_controller", "TuneController._stop_experiment_if_needed",
     "stopping: budget.in_flight finish ends the search with its running trials left to finish"),
    ("ray.tune.execution.tune_controller", "TuneController._stopper", "stopping: the run's stopper, asked first"),
    ("ray.tune.execution.tune_controller", "TuneController._schedule_trial_stop",
     "stopping: a trial waiting to start dropped when the search ends with in_flight finish"),
    ("ray.tune.stopper", "CombinedStopper._stoppers", "stopping: the run's stopper beside the time budget's"),
    ("ray._private.worker", "_global_node", "ray_local: the local head whose autoscaler monitor is ended first"),
    ("ray._private.node", "Node._kill_process_type", "ray_local: end the autoscaler monitor before the GCS"),
    ("ray._private.node", "Node.start_api_server", "ray_local: a local Ray without a dashboard process"),
    ("ray._private.utils", "get_dashboard_dependency_error",
     "ray_local: the dashboard agent's dependencies found without importing them in the driver"),
    ("ray.train._internal.storage", "_upload_to_fs_path",
     "lifecycle: Tune's snapshot copied into a local run folder a whole file at a time"),
    ("ray.tune.execution.class_cache", "_ActorClassCache.get",
     "lifecycle: a trial actor without Tune's env-var runtime env, on a prestarted worker"),
    ("ray.tune.execution.class_cache", "DEFAULT_ENV_VARS", "lifecycle: the variables Tune sets in a trial"),
    ("ray.tune.execution.class_cache", "ENV_VARS_TO_PROPAGATE", "lifecycle: the driver's variables Tune copies"),
    ("ray.tune.trainable.trainable", "disable_ipython",
     "trial.trainable: a trial actor starts without importing IPython where none was imported"),
    ("ray._private.worker", "global_worker", "trial.placement: whether this process is a Ray worker"),
    ("ray._private.worker", "WORKER_MODE", "trial.placement: whether this process is a Ray worker"),
    ("ray.tune.execution.tune_controller", "TuneController._maybe_reuse_cached_actor",
     "lifecycle: a finished trial's actor goes to a trial with no actor on its way"),
    ("ray.tune.execution.tune_controller", "TuneController._trial_to_actor", "lifecycle: a trial's own actor"),
    ("ray.tune.execution.tune_controller", "TuneController._started_actors", "lifecycle: actors that are up"),
    ("ray.tune.execution.tune_controller", "TuneController._actor_manager", "lifecycle: Tune's actor manager"),
    ("ray.air.execution._internal.actor_manager", "RayActorManager.is_actor_started",
     "lifecycle: an actor Ray is creating (its resources held), not waiting for resources"),
)

# What `ray.dashboard.optional_deps` imports, by top-level package (Ray 2.60).
DASHBOARD_DEPENDENCIES = ("aiohttp", "aiohttp_cors", "grpc", "opencensus", "opentelemetry", "prometheus_client",
                          "pydantic")


def missing_private_apis() -> list[str]:
    """The PRIVATE_APIS entries this Ray no longer has. An attribute a class only sets on its
    instances (`_trial_info`, `_tune_config`, `_ot_study`) is looked for as `self.<name> =` (or
    `self.<name>: <type> =`) in the class's source."""
    import inspect

    missing = []
    for module, attr, _ in PRIVATE_APIS:
        try:
            obj: Any = importlib.import_module(module)
        except ImportError:
            missing.append(f"{module} (module)")
            continue
        owner, _, name = attr.rpartition(".")
        if owner:
            obj = getattr(obj, owner, None)
        found = obj is not None and (hasattr(obj, name) or (inspect.isclass(obj) and re.search(
            rf"self\.{name}(: [^=\n]+)? =", inspect.getsource(obj)) is not None))
        if not found:
            missing.append(f"{module}.{attr}")
    return missing


# --- inside a trial -----------------------------------------------------------------------------

def resolved(value: Any) -> Any:
    """`value`, or the object it refers to where it is an object store reference (the run's data,
    put there once by the driver: orchestrator.run.run_data); numpy arrays come back as read-only
    views of the store's shared memory, not copies."""
    import ray

    return ray.get(value) if isinstance(value, ray.ObjectRef) else value


def report(metrics: Mapping[str, Any], checkpoint_dir: str | Path | None = None) -> None:
    """One result of the running trial, with a checkpoint made from a directory's files."""
    from ray import tune

    if checkpoint_dir is None:
        tune.report(dict(metrics))
    else:
        tune.report(dict(metrics), checkpoint=tune.Checkpoint.from_directory(str(checkpoint_dir)))


@contextlib.contextmanager
def restored_dir() -> Iterator[Path | None]:
    """The directory of the checkpoint the running trial resumes from (None if it starts afresh)."""
    from ray import tune

    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        yield None
        return
    with checkpoint.as_directory() as path:
        yield Path(path)


def trial_id() -> str | None:
    """The running trial's id (function trainables; a class trainable has `self.trial_id`); None
    outside a trial, without Ray's warning that says so."""
    import warnings

    from ray import tune

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return tune.get_context().get_trial_id()


# --- Ray's GCS key-value store ------------------------------------------------------------------

def kv_put(key: str, value: str, namespace: str) -> None:
    from ray.experimental.internal_kv import _internal_kv_put

    _internal_kv_put(key, value, overwrite=True, namespace=namespace)


def kv_get(key: str, namespace: str) -> str | None:
    from ray.experimental.internal_kv import _internal_kv_get, _internal_kv_initialized

    if not _internal_kv_initialized():
        return None
    raw = _internal_kv_get(key, namespace=namespace)
    return raw.decode() if isinstance(raw, bytes) else raw


def kv_delete_prefix(prefix: str, namespace: str) -> None:
    from ray.experimental.internal_kv import _internal_kv_del, _internal_kv_initialized

    if _internal_kv_initialized():
        _internal_kv_del(prefix, del_by_prefix=True, namespace=namespace)


# --- a restored Tuner -------------------------------------------------------------------------

def replace_run_hooks(tuner, callbacks: list, stopper) -> None:
    """`Tuner.restore` brings back the callbacks and stopper pickled with the first run; a resume
    brings its own, which feed this process's Recorder."""
    run_config = tuner._local_tuner.get_run_config()
    run_config.callbacks, run_config.stop = callbacks, stopper


def set_time_budget(tuner, seconds: float) -> None:
    """`Tuner.restore` brings back the whole time budget; a resume has only what is left of it."""
    tuner._local_tuner._tune_config.time_budget_s = seconds


class TornSnapshot(ValueError):
    """Tune's newest experiment snapshot is not whole JSON: its driver was killed while Ray copied
    it into the run folder (before `snapshots_written_whole`, or on storage that is not local)."""


def snapshot_trials(tune_dir: Path) -> tuple[Path | None, dict[str, dict[str, Any]]]:
    """Tune's newest experiment snapshot (what `Tuner.restore` brings back): its file, and each of
    its trials' `status` (PENDING, RUNNING, PAUSED, TERMINATED, ERROR) and `last_result`.
    Raises `TornSnapshot` where the file is not whole."""
    import json

    from ray.tune.execution.experiment_state import _find_newest_experiment_checkpoint

    newest = _find_newest_experiment_checkpoint(str(tune_dir))
    if newest is None:
        return None, {}
    try:
        state = json.loads(Path(newest).read_text())
    except ValueError as exc:  # an empty or cut-off file (UnicodeDecodeError is one too)
        raise TornSnapshot(f"{Path(newest).name} is not whole ({exc})") from None
    trials = {}
    for entry in state.get("trial_data", []):
        trial, runtime = json.loads(entry[0]), json.loads(entry[1])
        trials[trial["trial_id"]] = {"status": trial.get("status"), "last_result": runtime.get("last_result") or {}}
    return Path(newest), trials


def set_snapshot_statuses(snapshot: Path, statuses: Mapping[str, str]) -> None:
    """Rewrites trials' statuses in Tune's snapshot file (atomically), so that `Tuner.restore` takes a
    trial that finished after the snapshot for finished (TERMINATED, ERROR) and does not run it again."""
    import json
    import os

    state = json.loads(Path(snapshot).read_text())
    for entry in state.get("trial_data", []):
        trial = json.loads(entry[0])
        if trial["trial_id"] in statuses:
            trial["status"] = statuses[trial["trial_id"]]
            entry[0] = json.dumps(trial)
    tmp = Path(snapshot).with_name(f".{Path(snapshot).name}.tmp")
    tmp.write_text(json.dumps(state))
    os.replace(tmp, snapshot)


def search_alg_of(tuner) -> Any:
    """The search algorithm a restored Tuner's fit will restore from Tune's snapshot and run."""
    return tuner._local_tuner._tune_config.search_alg


# --- configuration and cluster files ------------------------------------------------------------

def reload_config() -> None:
    """Ray caches its config (auth mode included) when first imported; re-read it, as Ray itself does."""
    import sys

    if "ray" in sys.modules:
        from ray._raylet import Config

        Config.initialize("")


def validate_launcher_config(raw: dict) -> dict:
    """`ray up`'s own checks, in its order: fill provider defaults, then schema + cross-field rules."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(raw)
    validate_config(prepared)
    return prepared


def kuberay_autoscaling_config(raw: dict) -> dict:
    """KubeRay's translation of a RayCluster resource into the autoscaler's node types."""
    from ray.autoscaler._private.kuberay.autoscaling_config import _derive_autoscaling_config_from_ray_cr

    return _derive_autoscaling_config_from_ray_cr(raw)


# --- worker output: the SIGTERM traceback of an idle worker -----------------------------------

_HEADERS = ("Traceback (most recent call last)", "Exception ignored in", "During handling of", "The above exception")


# The integrations Tune's usage tag names (ray.air._internal.usage._count_callbacks), by class name.
_TAGGED_CALLBACKS = ("WandbLoggerCallback", "MLflowLoggerCallback", "CometLoggerCallback", "AimLoggerCallback")


def count_callbacks_without_imports() -> None:
    """Makes Tune's usage tag of a run's callbacks cheap. At every `Tuner.fit`, before the first
    trial, Tune counts the callbacks by class for its telemetry, and to compare classes it imports
    each integration it could name: with MLflow and W&B installed (our trackers' libraries) that
    pulls in mlflow, wandb, polars, scipy and fastapi, ~1.4 s on the driver here. This counts the
    same way by class name, which is all the tag records, so the tag is unchanged. Idempotent."""
    from ray.air._internal import usage

    current = getattr(usage, "_count_callbacks", None)
    if current is None or getattr(current, "_hpo_light", False):
        return  # gone from this Ray (nothing to make cheap), or already ours

    def count(callbacks):
        import collections

        from ray.tune import Callback
        from ray.tune.logger import LoggerCallback
        from ray.tune.utils.callback import DEFAULT_CALLBACK_CLASSES

        named = {*_TAGGED_CALLBACKS, *(c.__name__ for c in DEFAULT_CALLBACK_CLASSES)}
        counts: dict[str, int] = collections.defaultdict(int)
        for callback in callbacks or []:
            if not isinstance(callback, Callback):
                continue
            name = type(callback).__name__
            key = name if name in named else \
                "CustomLoggerCallback" if isinstance(callback, LoggerCallback) else "CustomCallback"
            counts[key] += 1
        return counts

    count._hpo_light = True
    usage._count_callbacks = count


def finish_in_flight_when_asked() -> None:
    """Lets a run's stopper end the search without stopping its running trials (`budget.in_flight:
    finish`, orchestrator.run.stopping). Tune's `Stopper` has one way to end a search, `stop_all`,
    which also stops every trial. Tune asks it at the end of each step of its loop
    (`TuneController._stop_experiment_if_needed`); this asks a stopper that has `ends_search_only`
    (the run's, or the one inside the CombinedStopper a time budget adds) first. While it says
    True, the search algorithm is set finished, so Tune proposes no more trials and ends its loop
    once the live ones have ended (`TuneController.is_finished`), and each trial waiting to start
    that the stopper's `has_started` does not know is dropped: removed from the scheduler and the
    search algorithm, and stopped as `stop_all` stops a trial (`_schedule_trial_stop`, which tells
    no callback: `TuneController.stop_trial` would, and Tune's console reporter then printed
    "Trial ... completed" for a trial that never ran). Setting the search finished alone let
    trials already proposed but waiting for a worker, or for resources when `budget.concurrent` is
    above what the cluster holds, start after the search had ended. A trial waiting that had
    started before (paused by its scheduler, restored by `hpo resume`) runs on. Without such a
    stopper nothing changes. Idempotent.
    Test: tests/test_budget_stop.py::test_in_flight_finish_lets_running_trials_end."""
    from ray.tune.execution.tune_controller import TuneController
    from ray.tune.experiment import Trial

    current = TuneController._stop_experiment_if_needed
    if getattr(current, "_hpo_finishing", False):
        return

    def stop_experiment_if_needed(self):
        stoppers = (self._stopper, *getattr(self._stopper, "_stoppers", ()))
        stopper = next((s for s in stoppers if hasattr(s, "ends_search_only")), None)
        if stopper is not None and stopper.ends_search_only():
            self.search_alg.set_finished()
            for trial in [t for t in self.get_trials()
                          if t.status == Trial.PENDING and not stopper.has_started(t.trial_id)]:
                self.scheduler_alg.on_trial_remove(self, trial)
                self.search_alg.on_trial_complete(trial.trial_id)
                self._schedule_trial_stop(trial)
        current(self)

    stop_experiment_if_needed._hpo_finishing = True
    TuneController._stop_experiment_if_needed = stop_experiment_if_needed


@contextlib.contextmanager
def without_dashboard_process() -> Iterator[None]:
    """While `ray.init(include_dashboard=False)` starts a local Ray in this block: no dashboard process.

    Ray 2.60 starts its dashboard head even then, with only its usage-stats module loaded (Ray's own
    TODO there: the job and state APIs are not), and `ray.init` imports the dashboard's
    dependencies and waits for that process to publish its address: 1.0 s of a 4.6 s start here
    (docs/performance.md), and a Python process idle for the whole run. A run reads nodes from the
    GCS (`ray.nodes()`), never from that process; usage stats go unreported, as they do without a
    network. A start that asks for the dashboard gets it as usual.

    Also: Ray decides whether the raylet's dashboard agent runs `--minimal` by importing every
    dependency of the dashboard in the driver (aiohttp, grpc, opentelemetry, ...: 0.4 s here, and a
    driver that never uses them). In this block they are looked up (`importlib.util.find_spec`)
    instead; only if one is missing does Ray's own import check run, so its answer and error are
    Ray's."""
    import importlib.util

    from ray._private import utils
    from ray._private.node import Node

    start_api_server = Node.start_api_server
    dependency_error = utils.get_dashboard_dependency_error

    def dependency_error_without_imports():
        if all(importlib.util.find_spec(name) for name in DASHBOARD_DEPENDENCIES):
            return None
        return dependency_error()

    def only_with_the_dashboard(self, *, include_dashboard, raise_on_failure):
        if include_dashboard:
            return start_api_server(self, include_dashboard=include_dashboard, raise_on_failure=raise_on_failure)
        self._webui_url = None

    Node.start_api_server = only_with_the_dashboard
    utils.get_dashboard_dependency_error = dependency_error_without_imports
    try:
        yield
    finally:
        Node.start_api_server = start_api_server
        utils.get_dashboard_dependency_error = dependency_error


def trial_actors_on_prestarted_workers(inherited: Callable[[], Mapping[str, str] | None]) -> None:
    """Tune's trial actors created without the runtime env Tune gives them, where it can go.

    Ray Tune creates every trainable actor with `runtime_env={"env_vars": ...}`: PL_DISABLE_FORK=1
    and the driver's values of a few Tune, Train and AWS variables (`ray.tune.execution.class_cache`).
    A Ray worker serves only tasks and actors of its own runtime env, so the idle workers Ray
    prestarts (one per CPU, as a local Ray starts or as the first driver joins a `ray start` head)
    never serve a trial: Ray starts new ones when Tune asks for its actors, each a Python process
    importing Ray (1-2 s, on the cores the run needs), and the prestarted ones idle.

    `inherited()` is the environment the running Ray's workers inherit, or None where that is not
    known (a joined Ray, a cluster, a Ray the user's own `ray.init()` started): the driver's own at
    the moment it started a local Ray.
    - Where each variable Tune would set already has that value there, the runtime env changes
      nothing in the trial: its actor is created without it.
    - Else, where Tune would set only its defaults (the driver sets none of the variables Tune
      copies), the actor sets them in its own environment as it is created (`_setting_env`),
      before Tune's trainable and the user's code run: Lightning reads PL_DISABLE_FORK when it
      forks, not as it is imported.
    - Otherwise Tune's own runtime env: a Train variable may be read as Ray Train is imported,
      which a worker does before the actor exists.
    Idempotent. Tests: tests/test_run_local.py (test_trial_actors_go_without_tune_s_runtime_env...)
    and tests/test_families.py (test_hpo_run_completes_an_example_and_prints_the_test_score)."""
    import ray
    from ray.tune.execution import class_cache

    current = class_cache._ActorClassCache.get
    if getattr(current, "_hpo_prestarted", False):
        return

    def get(self, trainable_cls):
        env = inherited()
        tune_sets = {**class_cache.DEFAULT_ENV_VARS,
                     **{k: os.environ[k] for k in class_cache.ENV_VARS_TO_PROPAGATE if k in os.environ}}
        if env is not None and all(env.get(k) == v for k, v in tune_sets.items()):
            key, make = ("hpo-inherited-env", trainable_cls), lambda: trainable_cls
        elif tune_sets == class_cache.DEFAULT_ENV_VARS:
            key, make = ("hpo-env-in-actor", trainable_cls), lambda: _setting_env(trainable_cls, tune_sets)
        else:
            return current(self, trainable_cls)
        if key not in self._cache:  # beside Tune's own entry for the same class
            self._cache[key] = ray.remote(make())
        return self._cache[key]

    get._hpo_prestarted, get.__wrapped__ = True, current
    class_cache._ActorClassCache.get = get


def _setting_env(cls: type, env: Mapping[str, str]) -> type:
    """`cls` (a Tune trainable) as a subclass of the same name that sets `env` in its process first."""
    env = dict(env)

    def __init__(self, *args, **kwargs):
        os.environ.update(env)
        cls.__init__(self, *args, **kwargs)

    return type(cls.__name__, (cls,), {"__init__": __init__, "__doc__": cls.__doc__})


def in_ray_worker() -> bool:
    """Whether this process is a Ray worker: not a driver, nor a process that has not imported Ray."""
    worker = sys.modules.get("ray._private.worker")
    try:
        return worker.global_worker.mode == worker.WORKER_MODE
    except AttributeError:  # no Ray in this process, or a thread of it still importing Ray
        return False


def trial_actors_without_ipython() -> None:
    """Tune's trainable actors start without importing IPython where nothing imported it.

    `Trainable.__init__` calls `disable_ipython()` in every actor, which imports IPython (0.3 s
    here, on each worker's way to its first trial, with traitlets) only to clear IPython's shell
    singleton. A shell exists only in a process that imported IPython, so where none did, there is
    nothing to clear and the import is skipped; elsewhere Tune's own runs. Called in the worker, as
    the trainable's module is imported there. Idempotent.
    Test: tests/test_run_local.py::test_a_trial_actor_starts_without_importing_ipython."""
    from ray.tune.trainable import trainable

    current = trainable.disable_ipython
    if getattr(current, "_hpo_skipped", False):
        return

    def disable_ipython() -> None:
        if "IPython" in sys.modules:
            current()

    disable_ipython._hpo_skipped = True
    trainable.disable_ipython = disable_ipython


def reused_actors_never_replace_one_starting() -> None:
    """A finished trial's actor (kept with `reuse_actors`) goes to a trial that has no actor on its
    way, never to one whose own actor Ray is already creating.

    Tune gives a kept actor to the first trial waiting, and where that trial's own actor was
    already being created (its resources held, the worker process starting), Tune kills it
    (`TuneController._maybe_reuse_cached_actor`, "Removing ORIGINAL ACTOR"). The next trial the
    searcher proposes then has no kept actor and Tune asks Ray for a new one, which is killed in
    its turn once another trial ends before it is up. Where trials end faster than a worker
    starts (many short trials, or few cores: a worker takes ~1-1.5 s of CPU to start here), this
    never settles: bare Ray Tune on 320 trials of 1 s, 16 at a time on 16 logical CPUs of this
    2-core machine, killed 200 actors it had asked for and started 53 worker processes for 16
    slots. Here the trial keeps its own actor, and the kept one waits for the next trial, which
    the searcher proposes in Tune's next step (the slot the finished trial left). A trial whose
    actor still waits for resources takes the kept one as before: that actor holds what it needs,
    and nothing else frees it. Idempotent.
    Test: tests/test_run_local.py::test_a_kept_actor_never_replaces_one_ray_is_creating."""
    from ray.tune.execution.tune_controller import TuneController

    current = TuneController._maybe_reuse_cached_actor
    if getattr(current, "_hpo_kept", False):
        return

    def maybe_reuse_cached_actor(self, trial) -> bool:
        own = self._trial_to_actor.get(trial)
        if own is not None and own not in self._started_actors and self._actor_manager.is_actor_started(own):
            return False  # its own actor is on its way; the kept one waits for the next trial
        return current(self, trial)

    maybe_reuse_cached_actor._hpo_kept = True
    TuneController._maybe_reuse_cached_actor = maybe_reuse_cached_actor


def stop_autoscaler_monitor() -> None:
    """Ends (SIGKILL) the autoscaler monitor of the Ray this process started, before `ray.shutdown()`.

    Ray's shutdown stops the GCS and then the monitor; the monitor's SIGTERM handler reports its
    exit to the GCS, which is gone, so Ray waits out its 1 s grace and kills it anyway: 1.0 of the
    1.45 s a local shutdown took here (benchmark in docs/performance.md). A local Ray does not
    autoscale, and the monitor holds nothing a run needs. Nothing for a joined Ray (no processes
    of its own here)."""
    from ray._private import ray_constants, worker

    node = worker._global_node
    if node is not None and ray_constants.PROCESS_TYPE_MONITOR in node.all_processes:
        node._kill_process_type(ray_constants.PROCESS_TYPE_MONITOR, allow_graceful=False, check_alive=False,
                                wait=True)


def snapshots_written_whole() -> None:
    """Tune's experiment snapshot reaches a local run folder one whole file at a time.

    Tune writes its snapshot (trials, the searcher's state) into a staging folder of the driver's
    Ray session and then copies that folder into the run's `tune/` with pyarrow's `copy_files`,
    which truncates each file and writes it in place. A driver killed during that copy (kill -9,
    the OOM killer) left an empty `experiment_state-*.json`, which neither `Tuner.restore` nor
    `hpo resume` can read (CI, 2026-12-07). For a local folder (a local run, and a job's folder
    on its head) each file is now copied beside its place first, and then all are renamed over
    theirs, Tune's index of the snapshot (`experiment_state-*`) last: a kill leaves every file whole,
    the old snapshot or the new. Only a kill between two renames (microseconds, against the
    milliseconds of a copy) can leave files of two snapshots; Tune's own copy could do that too.
    Cloud storage gets Ray's own upload. Idempotent.
    Test: tests/test_resume.py::test_a_snapshot_copy_cut_short_leaves_the_last_snapshot_whole."""
    from ray.train._internal import storage

    upload = storage._upload_to_fs_path
    if getattr(upload, "_hpo_whole", False):
        return

    def upload_whole(local_path: str, fs, fs_path: str, exclude: list[str] | None = None) -> None:
        import pyarrow.fs

        if exclude or not isinstance(fs, pyarrow.fs.LocalFileSystem):
            return upload(local_path=local_path, fs=fs, fs_path=fs_path, exclude=exclude)
        copy_whole(Path(local_path), Path(fs_path))

    upload_whole._hpo_whole = True
    storage._upload_to_fs_path = upload_whole


def copy_whole(source: Path, dest: Path) -> None:
    """Copies the file or folder `source` to `dest`: every file to a hidden name beside its place,
    then renamed over it, files named `experiment_state-*` last (`snapshots_written_whole`)."""
    import os
    import shutil

    pairs = [(source, dest)] if source.is_file() else \
        [(f, dest / f.relative_to(source)) for f in sorted(source.rglob("*")) if f.is_file()]
    staged = []
    for src, target in pairs:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.hpo-part")  # a dot name: no Tune pattern matches it
        shutil.copyfile(src, tmp)
        staged.append((tmp, target))
    for tmp, target in sorted(staged, key=lambda s: s[1].name.startswith("experiment_state-")):
        os.replace(tmp, target)


def quiet_worker_exits() -> None:
    """Drops, from the worker output Ray forwards to the driver, the `SystemExit` traceback that
    Ray's own worker SIGTERM handler raises when Ray ends idle (reused) trial workers at the end of
    a run: the handler raises inside a weakref callback, Python prints "Exception ignored in ...",
    and users read it as a failure. Every other line, users' prints included, still comes through.
    Idempotent. Test: tests/test_faults.py::test_only_rays_sigterm_exit_traceback_is_dropped."""
    from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

    with dispatcher._lock:
        dispatcher.handlers = [(name, handle if getattr(handle, "_hpo_filtered", False) else _filtered(handle))
                               for name, handle in dispatcher.handlers]


def _filtered(handle):
    def emit(data):
        lines = data.get("lines") or []
        kept = without_sigterm_exits(lines)
        if kept:
            handle(dict(data, lines=kept) if len(kept) != len(lines) else data)

    emit._hpo_filtered = True
    return emit


def without_sigterm_exits(lines: list[str]) -> list[str]:
    """`lines` without each traceback that ends in SystemExit raised by Ray's `sigterm_handler`."""
    out: list[str] = []
    block: list[str] | None = None
    for line in lines:
        if block is None:
            if line.startswith(_HEADERS):
                block = [line]
            else:
                out.append(line)
            continue
        block.append(line)
        if line and not line[0].isspace() and not line.startswith(_HEADERS):  # the exception line ends it
            ours = line.startswith("SystemExit") and any("sigterm_handler" in b for b in block)
            out += [] if ours else block
            block = None
    return out + (block or [])

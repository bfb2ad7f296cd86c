"""The Ray a run runs on: started here for the run, or joined (`--ray ADDRESS`, a cluster job), and
quietened; plus the pre-flight that refuses a trial no live node can hold.

`connected()` is what a run holds Ray with: it starts (or joins) Ray unless this process is
already connected, and shuts it down (or disconnects) afterwards only if it did the starting.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator

from orchestrator import ray_api
from orchestrator.cluster import auth
from orchestrator.errors import InputError
from orchestrator.spec.experiment import Experiment

# Ray Tune settings measured to cut per-trial overhead on a small machine (docs/performance.md).
# Ray's own logger callbacks write JSON/CSV/TensorBoard files per trial; our Parquet callback
# replaces them. Set before ray.tune is imported, and inherited by a local Ray's workers.
FAST_ENV = {
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
    "RAY_AIR_NEW_OUTPUT": "0",
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
    "RAY_DEDUP_LOGS": "1",
    # What Tune sets in every trial anyway (ray.tune.execution.class_cache); in the environment a local
    # Ray's workers inherit, a trial can start on a worker Ray prestarted (ray_api.trial_actors_on_prestarted_workers).
    "PL_DISABLE_FORK": "1",
}
# Checks our RunStopper makes itself, with a better message (orchestrator.run.callbacks): Ray's would
# run first and say less. Forced, not defaults: the stopper is then the only check.
OWNED_ENV = {"TUNE_DISABLE_STRICT_METRIC_CHECKING": "1"}


_started: list[bool] = []  # [True] while a Ray this process started (not joined) is up
_inherited: dict[str, str] = {}  # the environment that Ray's processes (its workers too) started with


def inherited_env() -> dict[str, str] | None:
    """The environment the workers of the Ray this process started inherit; None for any other Ray."""
    return _inherited if started_here() else None


def started_here() -> bool:
    """Whether the Ray this process is connected to is a local one it started (not joined)."""
    import ray

    return bool(_started) and ray.is_initialized()


def apply_fast_env() -> None:
    for k, v in FAST_ENV.items():
        os.environ.setdefault(k, v)
    os.environ.update(OWNED_ENV)


def start_local_ray(num_cpus: int | None = None, num_gpus: int | None = None, address: str | None = None,
                    meanwhile: tuple[str, ...] = ()) -> bool:
    """Starts an embedded Ray unless one is already up in this process. Returns True if started.

    With `address` ("auto" or host:port of a running Ray's GCS) it joins that Ray instead, which
    skips Ray's start-up (seconds; see docs/performance.md); so does RAY_ADDRESS, which Ray sets
    inside a job submitted to a cluster. Joined, not started, but still shut down (disconnected)
    after the run. Raises InputError when there is nothing to join.

    `meanwhile`: modules the caller imports next, imported while a local Ray starts (`imported_meanwhile`).
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
        _inherited.clear()
        _inherited.update(os.environ)
        with ray_api.without_dashboard_process(), imported_meanwhile(meanwhile):  # orchestrator.ray_api
            ray.init(address="local", num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False,
                     _node_ip_address="127.0.0.1", **quiet)
        _started[:] = [True]
    quiet_driver_logs()
    return True


@contextlib.contextmanager
def imported_meanwhile(modules: tuple[str, ...]) -> Iterator[None]:
    """Imports `modules` on a thread while the block runs, and waits for them at its end.

    A local Ray's start keeps this process waiting on Ray's own processes for seconds, while the
    imports that follow it (Ray Tune, a family's library for a refit here) are seconds of this
    process's own work (docs/performance.md). Safe beside that start: Ray's processes are forked by
    the calling thread, so their parent-death signal (which follows the forking thread) still fires
    only when this process ends, and Python takes its import lock around each fork. An import that
    fails here is left for the caller's own import to raise, in its place."""
    import importlib

    def import_all():
        for name in modules:
            with contextlib.suppress(Exception):
                importlib.import_module(name)

    thread = threading.Thread(target=import_all, name="hpo-imports", daemon=True) if modules else None
    if thread:
        thread.start()
    try:
        yield
    finally:
        if thread:
            thread.join()


def quiet_driver_logs() -> None:
    """Keeps the driver's console to our progress line: Ray Tune warns once per trial that its own
    result files are missing (we write Parquet instead), and hints at settings we chose on purpose."""
    import logging

    logging.getLogger("ray").setLevel(logging.ERROR)
    ray_api.quiet_worker_exits()  # the SystemExit traceback of workers Ray ends after the run


_held: list[bool] = []  # [True] while connected() holds a Ray it started (or joined)
_closing: list[threading.Thread] = []  # release_early()'s shutdown, joined when connected() ends


@contextlib.contextmanager
def connected(address: str | None = None, meanwhile: tuple[str, ...] = ()) -> Iterator[None]:
    """Ray for the duration of a run: the one this process is connected to, else the one at
    `address`, else a local one (importing `meanwhile` as it starts); shut down afterwards if this
    call started (or joined) it."""
    started = False
    try:
        started = start_local_ray(address=address, meanwhile=meanwhile)
        if started:
            _held[:] = [True]
        quiet_driver_logs()
        yield
    finally:
        if started:
            _held.clear()
            if _closing:
                _closing.pop().join()
            else:
                _shutdown()
            _started.clear()


def _shutdown() -> None:
    """`ray.shutdown()`, a second faster for a Ray this process started (ray_api.stop_autoscaler_monitor)."""
    import ray

    if _started:
        ray_api.stop_autoscaler_monitor()
    ray.shutdown()


def release_early() -> None:
    """Lets the Ray `connected()` started go while the run's tail goes on without it (a refit in this
    process, the model, the trackers): Ray's shutdown gives each of its processes time to exit
    gracefully, one after another (~0.4 s here; 1.4 s before `_shutdown`), so it runs on a thread
    and `connected()` waits for it at its end. Nothing for a Ray this process did not start through
    `connected()` (a test session's, a notebook's), nor for a joined one."""
    import gc

    import ray

    if _held and _started and not _closing and ray.is_initialized():
        gc.collect()  # Tune's leftovers (actor handles, object refs) released here, not mid-shutdown
        _closing.append(threading.Thread(target=_shutdown, name="hpo-ray-shutdown", daemon=True))
        _closing[0].start()


def preflight(exp: Experiment) -> None:
    """Refuses a per-trial request that no alive node can hold: Ray would wait for it forever."""
    if os.environ.get("RAY_ADDRESS"):
        # Joined to a cluster (a Ray job): an autoscaler may still add nodes, so the check is by node
        # type, made at submit time against the cluster file (orchestrator.cluster.spec.check_capacity).
        return
    from orchestrator.cluster.nodes import check_live, live_nodes

    res = exp.spec.resources
    check_live(live_nodes(), res.cpu, res.gpu, "this Ray", exp.source)

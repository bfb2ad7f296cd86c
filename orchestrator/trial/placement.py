"""Where each trial ran: node, CPUs, GPUs and GPU ids, written in the worker and read by the driver.

The GPU ids a trial got exist only in its worker process (Ray sets CUDA_VISIBLE_DEVICES there),
and users' trainables must run unchanged. So `recording` wraps every trainable: when a trial
starts, before the user's code, the wrapper writes one small JSON record into Ray's internal
key-value store, which lives in the GCS (the store Ray Tune's own trainable registry uses). The
GCS is reachable from every node, so this needs no shared disk, no extra actor and no extra key
in the user's results, and it works the same on one node or many. The driver-side callback
(orchestrator.results.writer) reads a trial's record when the trial reports and when it ends; keys are
scoped by run, and deleted when the run ends.

With `reuse_actors`, one worker process runs several trials in turn: the wrapper runs again at
each trial's start (for a class, in `reset_config`), so each record names its own trial.
"""

from __future__ import annotations

import inspect
import json
import os
import socket
import time
import uuid
from collections.abc import Callable
from typing import Any

from orchestrator import ray_api

NAMESPACE = "hpo"

# Every trainable is wrapped by `recording`, so a worker imports this module as Ray loads a trial's
# actor class, before Tune constructs it (the driver imports it too, where this does nothing).
if ray_api.in_ray_worker():
    ray_api.trial_actors_without_ipython()


def new_key(run_id: str) -> str:
    """A key prefix unique to one run (two runs of the same spec in one second still differ)."""
    return f"placement/{run_id}/{uuid.uuid4().hex[:8]}"


def current() -> dict[str, Any]:
    """This worker's node and the resources Ray assigned to the running trial."""
    import ray

    ctx = ray.get_runtime_context()
    assigned = ctx.get_assigned_resources()
    gpus = float(assigned.get("GPU", 0.0))
    return {
        "node_ip": ray.util.get_node_ip_address(),
        "node_id": ctx.get_node_id(),
        "hostname": socket.gethostname(),
        "cpus": float(assigned.get("CPU", 0.0)),
        "gpus": gpus,
        # What the trial's CUDA code sees; Ray sets it from the ids it assigned (ray.get_gpu_ids()).
        "gpu_ids": os.environ.get("CUDA_VISIBLE_DEVICES", ",".join(map(str, ray.get_gpu_ids()))) if gpus else None,
        "pid": os.getpid(),
        "started_at": time.time(),
    }


def record(key: str, trial_id: str | None = None) -> None:
    """Writes this trial's placement; never lets bookkeeping fail a user's trial.

    A function trainable finds its trial id in Tune's session; a class passes `self.trial_id`.
    """
    try:
        trial_id = trial_id or ray_api.trial_id()
        if trial_id:
            ray_api.kv_put(f"{key}/{trial_id}", json.dumps(current()), NAMESPACE)
    except Exception:
        pass


def read(key: str, trial_id: str) -> dict[str, Any] | None:
    """The record of one trial (driver side), or None if the trial has not started yet."""
    raw = ray_api.kv_get(f"{key}/{trial_id}", NAMESPACE)
    return json.loads(raw) if raw else None


def forget(key: str) -> None:
    """Deletes a run's records from the GCS."""
    ray_api.kv_delete_prefix(f"{key}/", NAMESPACE)


def recording(trainable: Any, key: str) -> Any:
    """`trainable`, recording its placement at each trial's start; same name, same behaviour.

    A function keeps the plain `(config)` signature Ray Tune requires of function trainables;
    a `tune.Trainable` class is subclassed, recording in `setup` before the user's own and in
    `reset_config` when an actor is reused for the next trial.
    """
    if inspect.isclass(trainable):
        base: type = trainable

        class Recorded(base):  # type: ignore[misc, valid-type]
            def setup(self, config, **kwargs):
                record(key, self.trial_id)
                return super().setup(config, **kwargs)

            def reset_config(self, new_config):  # a reused actor starts its next trial here
                reused = super().reset_config(new_config)
                if reused:
                    record(key, self.trial_id)
                return reused

        Recorded.__name__ = Recorded.__qualname__ = base.__name__
        return Recorded

    fn: Callable[..., Any] = trainable

    def trial(config):
        record(key)
        return fn(config)

    trial.__name__ = getattr(fn, "__name__", "trainable")
    trial.__qualname__ = getattr(fn, "__qualname__", trial.__name__)
    trial.__doc__ = fn.__doc__
    for attr in ("__mixins__",):
        if hasattr(fn, attr):
            setattr(trial, attr, getattr(fn, attr))
    return trial

"""What a built-in family sees as `trial`: the `Trial` contract, and the Ray trial that fulfils it.

Three things play `trial` for a family's `train(config, data, trial)`: `TrialContext` inside a
Ray trial, one fold's view of it under k-fold (orchestrator.folds), and the refit after the
search (orchestrator.refit); tests add their own fakes. `Trial` is the contract all of them
satisfy, so a family depends on it and on nothing of Ray's. The Ray calls themselves live in
orchestrator.ray_api, which follows Ray's moves.

Each `tune.report` is a synchronous round trip to the driver (~12 ms here), and the driver handles
results one at a time: with 0.1 s trials reporting ten times, Ray Tune's loop, not the trials,
set the pace, and one of two CPUs sat idle (issue 13). So where the scheduler can take its
decisions a little late (FIFO, ASHA, median stopping: `report_every_s` > 0), `TrialContext` sends
the first report at once (a missing metric is caught early) and then at most one report per
`report_every_s`, carrying the iterations it held back, and at once at the iterations the
scheduler decides at (`on_time`: ASHA's rungs, so every rung compares trials at the same
iteration); `flush()` sends the rest when `train` returns. The Recorder replays every iteration into history.parquet, with its own number and time,
and `training_iteration` is the family's own count, so a scheduler sees true iteration numbers; a
stop can come up to `report_every_s` late. A report with a checkpoint is never held.
"""

from __future__ import annotations

import os
import pickle
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from orchestrator import ray_api
from orchestrator.results import HELD

_STATE_FILE = "state.pkl"


@runtime_checkable
class Trial(Protocol):
    """The trial a family trains in.

    Attributes:
        seed: seeds the model (and anything random in training).
        cpus: threads to use, exactly (what Ray assigned).
        gpus: GPUs Ray assigned (0.5 for half a GPU).
        metric: the spec's metric name, so a family can skip work no one asked for; None outside
            a search (the refit, tests), meaning "report everything".
        checkpointing: whether `report` will save a `state=` (build state only then).
    """

    seed: int
    cpus: int
    gpus: float
    metric: str | None

    @property
    def device(self) -> str:
        """'cuda' when the trial has a GPU, else 'cpu'."""

    @property
    def checkpointing(self) -> bool: ...

    def report(self, metrics: dict[str, Any], state: Any = None) -> None:
        """One iteration's metrics; `state` (any picklable object) becomes its checkpoint."""

    def restore(self) -> Any | None:
        """The state this trial resumes from (PBT exploit, resume), or None."""


@dataclass
class TrialContext:
    """`Trial` inside a running Ray trial."""

    seed: int
    cpus: int
    gpus: float
    gpu_ids: tuple[str, ...] = ()
    # Save state every this many reports (0: never). PBT needs it at each perturbation only, and a
    # checkpoint costs ~1 s on a small machine, so it is not taken at every report.
    checkpoint_every: int = 0
    metric: str | None = None
    report_every_s: float = 0.0  # hold reports back for this long (see the module docstring); 0: never
    on_time: frozenset[int] = frozenset()  # iterations the scheduler decides at: never held
    objectives: tuple[str, ...] = ()  # every metric of a multi-objective spec (cost metrics: metrics.wants)
    _reports: int = 0
    _held: list[dict[str, Any]] = field(default_factory=list)
    _last_sent: float = -float("inf")

    @property
    def checkpointing(self) -> bool:
        return self.checkpoint_every > 0

    @classmethod
    def current(cls, seed: int = 0, checkpoint_every: int = 0, metric: str | None = None,
                report_every_s: float = 0.0, on_time: frozenset[int] = frozenset(),
                objectives: tuple[str, ...] = ()) -> "TrialContext":
        """The context of the Ray trial this code runs in (or a 1-CPU one outside Ray)."""
        import ray

        if not ray.is_initialized():
            return cls(seed, 1, 0.0, (), checkpoint_every, metric, report_every_s, on_time, tuple(objectives))
        assigned = ray.get_runtime_context().get_assigned_resources()
        # Fractional CPU requests still get one thread: a thread cannot be split.
        cpus = max(1, int(assigned.get("CPU", 1)))
        gpus = float(assigned.get("GPU", 0.0))
        gpu_ids = tuple(str(i) for i in ray.get_gpu_ids()) if gpus else ()
        return cls(seed, cpus, gpus, gpu_ids, checkpoint_every, metric, report_every_s, on_time, tuple(objectives))

    @property
    def device(self) -> str:
        """'cuda' when Ray gave this trial a GPU (Ray sets CUDA_VISIBLE_DEVICES to it)."""
        return "cuda" if self.gpus > 0 else "cpu"

    def report(self, metrics: dict[str, Any], state: Any = None) -> None:
        self._reports += 1
        checkpoint = state is not None and self.checkpointing and self._reports % self.checkpoint_every == 0
        if not self.report_every_s:
            self._send(dict(metrics), state if checkpoint else None)
            return
        self._held.append({"iteration": self._reports, "at": time.time(), "metrics": dict(metrics)})
        if checkpoint or self._reports in self.on_time or time.monotonic() - self._last_sent >= self.report_every_s:
            self.flush(state if checkpoint else None)

    def flush(self, state: Any = None) -> None:
        """Sends the reports held back, as one result (the latest) carrying the earlier ones."""
        if not self._held:
            return
        held, self._held = self._held, []
        latest = held[-1]
        self._last_sent = time.monotonic()
        self._send({**latest["metrics"], "training_iteration": latest["iteration"], HELD: held}, state)

    def _send(self, metrics: dict[str, Any], state: Any) -> None:
        if state is None:
            ray_api.report(metrics)
            return
        with tempfile.TemporaryDirectory(prefix="hpo-ckpt-") as tmp:
            with open(os.path.join(tmp, _STATE_FILE), "wb") as f:
                pickle.dump(state, f, protocol=pickle.HIGHEST_PROTOCOL)
            ray_api.report(metrics, checkpoint_dir=tmp)

    def restore(self) -> Any | None:
        with ray_api.restored_dir() as path:
            if path is None:
                return None
            with open(path / _STATE_FILE, "rb") as f:
                return pickle.load(f)


def thread_limit(cpus: int):
    """Caps the BLAS/OpenMP pools already loaded in this thread at the trial's CPUs.

    Belt and braces: each family also passes its own thread count (nthread, num_threads,
    torch.set_num_threads), and Ray sets OMP_NUM_THREADS to the actor's CPUs, which covers
    OpenMP runtimes loaded later. OpenMP limits are per thread, so this runs in the thread that
    trains (each fold's, for k-fold).
    """
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=max(1, int(cpus)))


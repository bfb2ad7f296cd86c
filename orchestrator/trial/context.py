"""`TrialContext`: the `Trial` (orchestrator.families.contract) a built-in family trains in inside a
Ray trial. The Ray calls themselves live in orchestrator.ray_api, which follows Ray's moves.

Each `tune.report` is a synchronous round trip to the driver (~12 ms here), and the driver handles
results one at a time: with 0.1 s trials reporting ten times, Ray Tune's loop, not the trials,
set the pace, and one of two CPUs sat idle (issue 13). So where the scheduler can take its
decisions a little late (FIFO, ASHA, median stopping: `report_every_s` > 0), `TrialContext` sends
the first report at once (a missing metric is caught early) and then at most one report per
`report_every_s`, carrying the iterations it held back, and at once at the iterations the
scheduler decides at (`on_time`: ASHA's rungs, so every rung compares trials at the same
iteration); `flush()` sends the rest when `train` returns. The Recorder replays every iteration
into history.parquet, with its own number and time, and `training_iteration` is the family's own
count, so a scheduler sees true iteration numbers; a stop can come up to `report_every_s` late.
A report with a checkpoint is never held.

Under PBT a trial's config changes mid-run: it restores another trial's checkpoint and goes on
with a perturbed config. So a checkpoint carries the schedule that produced it (each config and
the iteration it took over at) and the iteration it was taken at; a trial that restores one
with another config appends its own. Once a trial's schedule has more than one config, its
reports carry it (`SCHEDULE`), and the refit after the search replays the best trial's schedule
(orchestrator.run.refit). Ray's own `pbt_policy_*.txt` logs are not used: they give the cloned
trial's last reported iteration, not the iteration of the checkpoint it was cloned from.
"""

from __future__ import annotations

import os
import pickle
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

from orchestrator import ray_api
from orchestrator.results.contract import HELD, RESTORED, SCHEDULE
from orchestrator.trial.settings import TrialSettings

_STATE_FILE = "state.pkl"


@dataclass
class _Saved:
    """What a checkpoint holds: the family's state, the iteration it was taken at, its schedule,
    and the trial that took it (a PBT exploit restores another trial's)."""

    state: Any
    iteration: int
    schedule: list[dict[str, Any]]
    trial_id: str | None = None


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
    config: dict[str, Any] | None = None  # the trial's config, the start of its schedule
    _reports: int = 0
    _start: int = 0  # the iteration its restored checkpoint was taken at
    _restored: str | None = None  # "<trial>@<iteration>" of the checkpoint it restored (contract.RESTORED)
    _schedule: list[dict[str, Any]] = field(default_factory=list)
    _held: list[dict[str, Any]] = field(default_factory=list)
    _last_sent: float = -float("inf")

    @property
    def checkpointing(self) -> bool:
        return self.checkpoint_every > 0

    @classmethod
    def current(cls, settings: TrialSettings | None = None, config: dict[str, Any] | None = None) -> TrialContext:
        """The context of the Ray trial this code runs in (or a 1-CPU one outside Ray)."""
        import ray

        s = settings or TrialSettings(family_ref="")
        cpus, gpus, gpu_ids = 1, 0.0, ()
        if ray.is_initialized():
            assigned = ray.get_runtime_context().get_assigned_resources()
            # Fractional CPU requests still get one thread: a thread cannot be split.
            cpus = max(1, int(assigned.get("CPU", 1)))
            gpus = float(assigned.get("GPU", 0.0))
            gpu_ids = tuple(str(i) for i in ray.get_gpu_ids()) if gpus else ()
        return cls(s.seed, cpus, gpus, gpu_ids, s.checkpoint_every, s.metric, s.report_every_s, s.on_time,
                   tuple(s.objectives), config)

    @property
    def schedule(self) -> list[dict[str, Any]]:
        """The configs this trial's state trained with, each from the iteration after `from_iteration`."""
        if not self._schedule and self.config is not None:
            self._schedule = [{"from_iteration": 0, "config": dict(self.config)}]
        return self._schedule

    @property
    def device(self) -> str:
        """'cuda' when Ray gave this trial a GPU (Ray sets CUDA_VISIBLE_DEVICES to it)."""
        return "cuda" if self.gpus > 0 else "cpu"

    def report(self, metrics: dict[str, Any], state: Any = None) -> None:
        self._reports += 1
        checkpoint = state is not None and self.checkpointing and self._reports % self.checkpoint_every == 0
        if len(self.schedule) > 1:
            metrics = {**metrics, SCHEDULE: self.schedule}
        if self._restored:
            metrics = {**metrics, RESTORED: self._restored}
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
        saved = _Saved(state, self._start + self._reports, self.schedule, ray_api.trial_id())
        with tempfile.TemporaryDirectory(prefix="hpo-ckpt-") as tmp:
            with open(os.path.join(tmp, _STATE_FILE), "wb") as f:
                pickle.dump(saved, f, protocol=pickle.HIGHEST_PROTOCOL)
            ray_api.report(metrics, checkpoint_dir=tmp)

    def keep(self, model: Any) -> None:
        """Nothing: a trial's model is not saved; the refit after the search keeps its own."""

    def restore(self) -> Any | None:
        with ray_api.restored_dir() as path:
            if path is None:
                return None
            with open(path / _STATE_FILE, "rb") as f:
                saved = pickle.load(f)
        if not isinstance(saved, _Saved):  # a checkpoint written before schedules were kept
            return saved
        self._start, self._schedule = saved.iteration, list(saved.schedule)
        origin = getattr(saved, "trial_id", None) or ray_api.trial_id()  # checkpoints from before it was kept
        self._restored = f"{origin}@{saved.iteration}" if origin else None
        if self.config is not None and (not self._schedule or self._schedule[-1]["config"] != self.config):
            self._schedule.append({"from_iteration": saved.iteration, "config": dict(self.config)})  # PBT exploited
        return saved.state


def thread_limit(cpus: int):
    """Caps the BLAS/OpenMP pools already loaded in this thread at the trial's CPUs.

    Belt and braces: each family also passes its own thread count (nthread, num_threads,
    torch.set_num_threads), and Ray sets OMP_NUM_THREADS to the actor's CPUs, which covers
    OpenMP runtimes loaded later. OpenMP limits are per thread, so this runs in the thread that
    trains (each fold's, for k-fold).
    """
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=max(1, int(cpus)))


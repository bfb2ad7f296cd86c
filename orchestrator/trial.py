"""What a built-in family sees as `trial`: the `Trial` contract, and the Ray trial that fulfils it.

Three things play `trial` for a family's `train(config, data, trial)`: `TrialContext` inside a
Ray trial, one fold's view of it under k-fold (orchestrator.folds), and the refit after the
search (orchestrator.refit); tests add their own fakes. `Trial` is the contract all of them
satisfy, so a family depends on it and on nothing of Ray's. The Ray calls themselves live in
orchestrator.ray_api, which follows Ray's moves.
"""

from __future__ import annotations

import os
import pickle
import tempfile
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from orchestrator import ray_api

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
    _reports: int = 0

    @property
    def checkpointing(self) -> bool:
        return self.checkpoint_every > 0

    @classmethod
    def current(cls, seed: int = 0, checkpoint_every: int = 0, metric: str | None = None) -> "TrialContext":
        """The context of the Ray trial this code runs in (or a 1-CPU one outside Ray)."""
        import ray

        if not ray.is_initialized():
            return cls(seed, 1, 0.0, (), checkpoint_every, metric)
        assigned = ray.get_runtime_context().get_assigned_resources()
        # Fractional CPU requests still get one thread: a thread cannot be split.
        cpus = max(1, int(assigned.get("CPU", 1)))
        gpus = float(assigned.get("GPU", 0.0))
        gpu_ids = tuple(str(i) for i in ray.get_gpu_ids()) if gpus else ()
        return cls(seed, cpus, gpus, gpu_ids, checkpoint_every, metric)

    @property
    def device(self) -> str:
        """'cuda' when Ray gave this trial a GPU (Ray sets CUDA_VISIBLE_DEVICES to it)."""
        return "cuda" if self.gpus > 0 else "cpu"

    def report(self, metrics: dict[str, Any], state: Any = None) -> None:
        self._reports += 1
        if state is None or not self.checkpointing or self._reports % self.checkpoint_every:
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


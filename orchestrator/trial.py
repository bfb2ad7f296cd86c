"""What a built-in family sees inside a running trial: resources, seed, report, checkpoint.

The report call moved from `ray.air.session.report` to `ray.train.report` to `ray.tune.report`;
families call `TrialContext.report` and only this module follows Ray's moves.
"""

from __future__ import annotations

import os
import pickle
import tempfile
from dataclasses import dataclass
from typing import Any

_STATE_FILE = "state.pkl"


@dataclass
class TrialContext:
    seed: int
    cpus: int
    gpus: float
    gpu_ids: tuple[str, ...] = ()
    # Save state every this many reports (0: never). PBT needs it at each perturbation only, and a
    # checkpoint costs ~1 s on a small machine, so it is not taken at every report.
    checkpoint_every: int = 0
    _reports: int = 0

    @property
    def checkpointing(self) -> bool:
        """Whether a family should build state for `report`; cheap families may always pass it."""
        return self.checkpoint_every > 0

    @classmethod
    def current(cls, seed: int = 0, checkpoint_every: int = 0) -> "TrialContext":
        """The context of the Ray trial this code runs in (or a 1-CPU one outside Ray)."""
        import ray

        if not ray.is_initialized():
            return cls(seed, 1, 0.0, (), checkpoint_every)
        assigned = ray.get_runtime_context().get_assigned_resources()
        # Fractional CPU requests still get one thread: a thread cannot be split.
        cpus = max(1, int(assigned.get("CPU", 1)))
        gpus = float(assigned.get("GPU", 0.0))
        gpu_ids = tuple(str(i) for i in ray.get_gpu_ids()) if gpus else ()
        return cls(seed, cpus, gpus, gpu_ids, checkpoint_every)

    @property
    def device(self) -> str:
        """'cuda' when Ray gave this trial a GPU (Ray sets CUDA_VISIBLE_DEVICES to it)."""
        return "cuda" if self.gpus > 0 else "cpu"

    def report(self, metrics: dict[str, Any], state: Any = None) -> None:
        """Reports one iteration's metrics; `state` (any picklable object) becomes its checkpoint."""
        from ray import tune

        self._reports += 1
        if state is None or not self.checkpointing or self._reports % self.checkpoint_every:
            tune.report(metrics)
            return
        with tempfile.TemporaryDirectory(prefix="hpo-ckpt-") as tmp:
            with open(os.path.join(tmp, _STATE_FILE), "wb") as f:
                pickle.dump(state, f, protocol=pickle.HIGHEST_PROTOCOL)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))

    def restore(self) -> Any | None:
        """The state saved with the checkpoint this trial resumes from (PBT exploit, resume), if any."""
        from ray import tune

        checkpoint = tune.get_checkpoint()
        if checkpoint is None:
            return None
        with checkpoint.as_directory() as path, open(os.path.join(path, _STATE_FILE), "rb") as f:
            return pickle.load(f)


def run_family_trial(config: dict, *, family_ref: str, data=None, seed: int = 0, checkpoint_every: int = 0,
                     base_dir: str | None = None, evaluation=None) -> None:
    """The Ray trainable for built-in families: looks the family up in the worker, then trains."""
    from pathlib import Path

    from orchestrator.evaluation import run_trial
    from orchestrator.families import resolve

    family = resolve(family_ref, Path(base_dir) if base_dir else None)
    # The evaluation protocol (holdout, k-fold) decides what data each `train` call sees.
    run_trial(family, dict(config), data, TrialContext.current(seed, checkpoint_every), evaluation)

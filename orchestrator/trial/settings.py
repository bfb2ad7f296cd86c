"""What a built-in family's trial needs from the driver, as one frozen value.

The driver builds it once per run (orchestrator.run.tuner.trial_settings) and Ray ships it to every
worker with the trainable; a worker on another node finds the family from `family_ref` itself.
Everything is plain data, so it pickles small and the same settings serve the refit.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from orchestrator.spec.evaluation import EvaluationSpec


@dataclass(frozen=True)
class TrialSettings:
    """
    Attributes:
        family_ref: the spec's `family:` (a built-in name or `file.py:FAMILY`), resolved in the worker.
        base_dir: where the spec's relative paths point (a family file beside the spec).
        seed: seeds the model and anything random in training.
        evaluation: the protocol each trial follows (holdout, k-fold); None: holdout.
        metric: the spec's (first) metric, so a family can skip work no one asked for; None outside
            a search (refit, tests): "report everything".
        objectives: every metric of a multi-objective spec, and every metric a constraint bounds
            (cost metrics are measured only when listed: orchestrator.run.tuner.measured).
        checkpoint_every: save state every this many reports (0: never); the scheduler's policy.
        report_every_s: hold reports back for this long (orchestrator.trial.context); 0: never.
        on_time: iterations the scheduler decides at, never held back (ASHA's rungs).
    """

    family_ref: str
    base_dir: str | None = None
    seed: int = 0
    evaluation: EvaluationSpec | None = None
    metric: str | None = None
    objectives: tuple[str, ...] = ()
    checkpoint_every: int = 0
    report_every_s: float = 0.0
    on_time: frozenset[int] = frozenset()

    @property
    def base_path(self) -> Path | None:
        return Path(self.base_dir) if self.base_dir else None

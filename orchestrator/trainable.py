"""The Ray trainable every built-in family runs as: find the family in the worker, then train.

The runner hands it to Ray Tune (with `tune.with_parameters`, so the data crosses the object
store once); everything it needs arrives as plain arguments, so a worker on another node imports
the family itself.
"""

from __future__ import annotations

from pathlib import Path

from orchestrator.families import resolve
from orchestrator.folds import run_trial
from orchestrator.protocol import EvaluationSpec
from orchestrator.trial import TrialContext


def run_family_trial(config: dict, *, family_ref: str, data=None, seed: int = 0, checkpoint_every: int = 0,
                     base_dir: str | None = None, evaluation: EvaluationSpec | None = None,
                     metric: str | None = None, report_every_s: float = 0.0,
                     on_time: frozenset[int] = frozenset(), objectives: tuple[str, ...] = ()) -> None:
    family = resolve(family_ref, Path(base_dir) if base_dir else None)
    trial = TrialContext.current(seed, checkpoint_every, metric, report_every_s, on_time, objectives)
    # The evaluation protocol (holdout, k-fold) decides what data each `train` call sees.
    run_trial(family, dict(config), data, trial, evaluation)
    trial.flush()  # the iterations held back since the last report (see orchestrator.trial)

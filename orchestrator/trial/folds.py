"""K-fold inside one trial: the folds train in lock-step, and the trial reports their mean.

Each fold's `train` runs in its own thread, but only one thread runs at a time, handing the turn
on at each report. A scheduler therefore sees one mean per iteration and can stop a weak config
after a few iterations on every fold (instead of after one whole fold); the trial never runs
more threads than one fold would; checkpoints hold every fold's state, so PBT and resume work as
with holdout. The cost is k models in memory.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping
from typing import Any

import numpy as np

from orchestrator.families.contract import Family, Trial
from orchestrator.spec.data import Dataset
from orchestrator.spec.evaluation import EvaluationSpec, kfold
from orchestrator.trial.context import thread_limit


def run_trial(family: Family, config: dict, data: Dataset | None, trial: Trial,
              evaluation: EvaluationSpec | None = None) -> None:
    """What a trial runs: the family's `train` under the protocol. Called by the Ray trainable."""
    protocol = evaluation.per_trial if evaluation is not None else "holdout"
    if protocol == "holdout" or data is None:
        with thread_limit(trial.cpus):
            family.train(config, data, trial)
        return
    _run_folds(family, config, kfold(data, evaluation.folds, trial.seed), trial)


class _Cancelled(BaseException):
    """Unwinds a fold's `train` when its trial ends first (scheduler stop, another fold failed).
    A BaseException so that a family's `except Exception` cannot swallow it."""


class _FoldContext:
    """What one fold's `train` sees as `trial`: the trial's resources and seed, its own report."""

    def __init__(self, fold: _Fold, trial: Trial):
        self._fold, self._trial = fold, trial

    def __getattr__(self, name: str) -> Any:  # seed, cpus, gpus, device, checkpointing, ...
        return getattr(self._trial, name)

    def report(self, metrics: dict[str, Any], state: Any = None) -> None:
        self._fold.hand_back(metrics, state)

    def restore(self) -> Any | None:
        return self._fold.restored


class _Fold:
    """One fold's `train` in its own thread, running only between `advance()` and its next report."""

    def __init__(self, index: int, family: Family, config: dict, data: Dataset, trial: Any, restored: Any):
        self.restored = restored
        self.metrics: dict[str, Any] | None = None
        self.state: Any = None
        self.finished = False
        self._error: BaseException | None = None
        self._cancel = False
        self._go, self._back = threading.Semaphore(0), threading.Semaphore(0)
        self._ctx = _FoldContext(self, trial)
        self._thread = threading.Thread(target=self._main, args=(family, dict(config), data),
                                        name=f"hpo-fold-{index}", daemon=True)
        self._thread.start()

    def _main(self, family: Family, config: dict, data: Dataset) -> None:
        self._go.acquire()
        try:
            if not self._cancel:
                with thread_limit(self._ctx.cpus):
                    family.train(config, data, self._ctx)
        except _Cancelled:
            pass
        except BaseException as exc:
            self._error = exc
        finally:
            self.finished = True
            self._back.release()

    def hand_back(self, metrics: dict[str, Any], state: Any) -> None:
        """In the fold's thread: publish one iteration, then wait for the next turn."""
        self.metrics, self.state = metrics, state
        self._back.release()
        self._go.acquire()
        if self._cancel:
            raise _Cancelled

    def advance(self) -> bool:
        """In the trial's thread: run this fold to its next report. False once it has finished."""
        if self.finished:
            return False
        self._go.release()
        self._back.acquire()
        if self._error is not None:
            raise self._error
        return not self.finished

    def close(self) -> None:
        if not self.finished:
            self._cancel = True
            self._go.release()
        self._thread.join()


def _run_folds(family: Family, config: dict, folds: list[Dataset], trial: Trial) -> None:
    saved = trial.restore()
    states = saved["folds"] if saved else [None] * len(folds)
    if len(states) != len(folds):
        raise RuntimeError(f"the checkpoint holds {len(states)} folds, the spec asks for {len(folds)}: "
                           f"resume with the evaluation.folds it was started with")
    runs = [_Fold(i, family, config, d, trial, s) for i, (d, s) in enumerate(zip(folds, states))]
    try:
        while True:
            alive = [run.advance() for run in runs]  # one fold at a time, in order
            if not any(alive):
                return
            if not all(alive):
                raise RuntimeError(f"folds stopped at different iterations ({alive}); a family must report "
                                   f"the same number of iterations for every fold")
            fold_states = [run.state for run in runs]
            state = {"folds": fold_states} if all(s is not None for s in fold_states) else None
            trial.report(mean_and_std([run.metrics for run in runs]), state=state)
    finally:
        for run in runs:
            run.close()


def mean_and_std(per_fold: list[Mapping[str, Any]]) -> dict[str, float]:
    """Per metric: the mean over folds under its own name, the spread (population std) as `<name>_std`."""
    out: dict[str, float] = {}
    for name in per_fold[0]:
        values = np.array([float(m[name]) for m in per_fold], dtype=float)
        finite = values[~np.isnan(values)]
        out[name] = float(finite.mean()) if finite.size else math.nan
        out[f"{name}_std"] = float(finite.std()) if finite.size else math.nan
    return out

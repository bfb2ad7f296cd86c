"""The evaluation protocol: how a trial's score is measured, and the test score after the search.

It is the same for every family, so no family splits data itself. `evaluation.protocol`:

- `holdout` (default): a trial trains on `train` and is scored on `valid` at every iteration.
- `kfold`: train+valid is cut into `folds` folds; a trial trains one model per fold and reports,
  at every iteration, the mean over folds under the usual names (`val_error`) and the spread as
  `<name>_std` (`val_error_std`).
- `nested`: the search runs as with `inner` (holdout or kfold), and in addition train+valid is cut
  into `outer_folds` folds, each of which gets a whole search of its own on the other folds; that
  search's best config is refitted and scored on the held-out fold. The mean of those scores
  estimates how well *the tuning procedure* generalises. The best validation score of a search
  cannot: it is the maximum of many noisy estimates, biased upwards (Cawley & Talbot, JMLR 2010).
  It costs `outer_folds + 1` searches; each outer search's trials are kept under
  `nested/outer-<i>/` in the run folder.

Always, after the search, the best config is refitted on train+valid and scored once on `test`,
which no trial has seen. The gap between that and the best validation score is the validation
overfitting that grows with the number of configs tried; it is written to `experiment.json`.

K-fold trials train their folds in lock-step: each fold's `train` runs in its own thread, but
only one thread runs at a time, handing the turn on at each report. A scheduler therefore sees
one mean per iteration and can stop a weak config after a few iterations on every fold (instead
of after one whole fold); the trial never runs more threads than one fold would; checkpoints hold
every fold's state, so PBT and resume work as with holdout. The cost is k models in memory.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Literal, Mapping

import numpy as np
from pydantic import Field, model_validator

from orchestrator.base import StrictModel
from orchestrator.errors import Problem
from orchestrator.families import Family

if TYPE_CHECKING:  # only for annotations: spec.py imports this module
    from orchestrator.data import Dataset
    from orchestrator.spec import Experiment


class EvaluationSpec(StrictModel):
    protocol: Literal["holdout", "kfold", "nested"] = "holdout"
    folds: int = Field(5, ge=2, le=20, description="kfold: folds of train+valid; nested with inner kfold: "
                                                   "the folds of each search")
    outer_folds: int = Field(3, ge=2, le=20, description="nested: outer folds, one whole search each")
    inner: Literal["holdout", "kfold"] = Field("holdout", description="nested: how each search scores a config")

    @model_validator(mode="after")
    def _fields_fit_protocol(self):
        given = self.model_fields_set
        if self.protocol != "nested" and (extra := sorted(given & {"outer_folds", "inner"})):
            raise ValueError(f"{' and '.join(extra)} only apply to protocol nested, got protocol "
                             f"{self.protocol}; remove them or set protocol: nested")
        if "folds" in given and self.per_trial != "kfold":
            raise ValueError(f"folds only applies when trials use k-fold (protocol kfold, or nested with "
                             f"inner: kfold), got protocol {self.protocol}"
                             + (f" with inner {self.inner}" if self.protocol == "nested" else ""))
        return self

    @property
    def per_trial(self) -> Literal["holdout", "kfold"]:
        """The protocol each trial follows (nested adds outer searches around it)."""
        return self.inner if self.protocol == "nested" else self.protocol


def check(evaluation: EvaluationSpec, family: Any) -> list[Problem]:
    """Cross-section rule: splitting data needs a family that trains on the spec's data."""
    if evaluation.protocol == "holdout" or (isinstance(family, Family) and family.needs_data):
        return []
    why = (f"family {family.name} trains on no data" if isinstance(family, Family)
           else "a user trainable reads its own data")
    return [Problem("evaluation.protocol", f"{evaluation.protocol} splits the data: section, but {why}; "
                                           f"use protocol: holdout (the default)")]


# --- splits -----------------------------------------------------------------------------------

def development(data: Dataset) -> tuple[np.ndarray, np.ndarray]:
    """train+valid: everything but the test set."""
    return np.concatenate([data.X_train, data.X_valid]), np.concatenate([data.y_train, data.y_valid])


def _splitter(task: str, k: int, seed: int):
    from sklearn.model_selection import KFold, StratifiedKFold

    cls = StratifiedKFold if task == "classification" else KFold
    return cls(n_splits=k, shuffle=True, random_state=seed)


def kfold(data: Dataset, k: int, seed: int) -> list[Dataset]:
    """k datasets over train+valid, each validating on one fold; the test set is untouched."""
    X, y = development(data)
    return [replace(data, X_train=X[tr], y_train=y[tr], X_valid=X[va], y_valid=y[va])
            for tr, va in _splitter(data.task, k, seed).split(X, y)]


def outer_folds(data: Dataset, k: int, seed: int) -> list[Dataset]:
    """Nested CV: per outer fold, a dataset whose test set is that fold and whose train/valid
    split the other folds in the proportion of the original split."""
    from sklearn.model_selection import train_test_split

    X, y = development(data)
    valid_share = len(data.y_valid) / len(y)
    out = []
    for rest, held in _splitter(data.task, k, seed).split(X, y):
        strat = y[rest] if data.task == "classification" else None
        X_tr, X_va, y_tr, y_va = train_test_split(X[rest], y[rest], test_size=valid_share, random_state=seed,
                                                  stratify=strat)
        out.append(replace(data, X_train=X_tr, y_train=y_tr, X_valid=X_va, y_valid=y_va,
                           X_test=X[held], y_test=y[held]))
    return out


def refit_data(data: Dataset) -> Dataset:
    """Train on train+valid, 'validate' on test: the family's last report is then the test score."""
    X, y = development(data)
    return replace(data, X_train=X, y_train=y, X_valid=data.X_test, y_valid=data.y_test)


# --- inside a trial ---------------------------------------------------------------------------

def run_trial(family: Family, config: dict, data: Dataset | None, trial: Any,
              evaluation: EvaluationSpec | None = None) -> None:
    """What a trial runs: the family's `train` under the protocol. Called by the Ray trainable."""
    protocol = evaluation.per_trial if evaluation is not None else "holdout"
    if protocol == "holdout" or data is None:
        with thread_limit(trial.cpus):
            family.train(config, data, trial)
        return
    _run_folds(family, config, kfold(data, evaluation.folds, trial.seed), trial)


def thread_limit(cpus: int):
    """Caps the BLAS/OpenMP pools already loaded in this thread at the trial's CPUs.

    Belt and braces: each family also passes its own thread count (nthread, num_threads,
    torch.set_num_threads), and Ray sets OMP_NUM_THREADS to the actor's CPUs, which covers
    OpenMP runtimes loaded later. OpenMP limits are per thread, so this runs in the thread that
    trains (each fold's, for k-fold).
    """
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=max(1, int(cpus)))


class _Cancelled(BaseException):
    """Unwinds a fold's `train` when its trial ends first (scheduler stop, another fold failed).
    A BaseException so that a family's `except Exception` cannot swallow it."""


class _FoldContext:
    """What one fold's `train` sees as `trial`: the trial's resources and seed, its own report."""

    def __init__(self, fold: "_Fold", trial: Any):
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
        except BaseException as exc:  # noqa: BLE001 - re-raised in the trial's thread by advance()
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


def _run_folds(family: Family, config: dict, folds: list[Dataset], trial: Any) -> None:
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


# --- after the search -------------------------------------------------------------------------

class _Collect:
    """A trial context outside Tune: keeps the last report, never checkpoints, never restores."""

    checkpointing = False

    def __init__(self, trial: Any):
        self._trial = trial
        self.last: dict[str, Any] = {}
        self.reports = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._trial, name)

    def report(self, metrics: dict[str, Any], state: Any = None) -> None:
        self.last, self.reports = dict(metrics), self.reports + 1

    def restore(self) -> None:
        return None


def as_test_metric(metric: str) -> str:
    return f"test_{metric.removeprefix('val_')}"


def _refit_task(family_ref: str, base_dir: str, config: dict, data: Dataset, seed: int) -> dict[str, float]:
    from orchestrator.families import resolve
    from orchestrator.trial import TrialContext

    family = resolve(family_ref, Path(base_dir))
    ctx = _Collect(TrialContext.current(seed))
    with thread_limit(ctx.cpus):
        family.train(dict(config), refit_data(data), ctx)
    if not ctx.reports:
        raise RuntimeError(f"family {family_ref} reported nothing when refitted on train+valid")
    return {as_test_metric(k): float(v) for k, v in ctx.last.items() if k.startswith("val_")}


def refit(exp: Experiment, config: Mapping[str, Any], data: Dataset) -> dict[str, float]:
    """Trains `config` on train+valid and scores it on test, as a Ray task with a trial's resources
    (so it gets the trial's GPU and threads); in-process when Ray is not running."""
    import ray

    args = (exp.spec.family, str(exp.base_dir), dict(config), data, exp.spec.seed)
    if not ray.is_initialized():
        return _refit_task(*args)
    res = exp.spec.resources
    task = ray.remote(num_cpus=res.cpu, num_gpus=res.gpu, max_retries=0)(_refit_task)
    return ray.get(task.remote(*args))


@dataclass(frozen=True)
class Best:
    """The best trial of a search, as far as evaluation cares."""

    config: Mapping[str, Any]
    score: float
    trial_id: str = ""


Search = Callable[["Dataset", Path], "Best | None"]  # runs the spec's search on other data


def conclude(exp: Experiment, data: Dataset | None, best: Best | None, search: Search,
             run_dir: Path) -> dict[str, Any] | None:
    """After the search: refit the best config on train+valid and score it on test; for nested,
    run one more search per outer fold. Returns the `evaluation` entry of experiment.json, or None
    when there is nothing to refit (a user trainable, a family without data, no best trial).

    A failure here is recorded in the entry, not raised: the search's results stand on their own.
    """
    if data is None or best is None or not isinstance(exp.family, Family):
        return None
    ev = exp.spec.evaluation
    metric = as_test_metric(exp.metric)
    out: dict[str, Any] = {"protocol": ev.protocol, "metric": exp.metric, "test_metric": metric,
                           "trial_id": best.trial_id, "config": dict(best.config), "valid": best.score}
    if ev.per_trial == "kfold":
        out["folds"] = ev.folds
    try:
        test = refit(exp, best.config, data)
        out.update(test=test, test_score=test.get(metric), gap=_gap(test.get(metric), best.score))
    except Exception as exc:  # noqa: BLE001 - reported, see the docstring
        out["error"] = f"refit failed: {type(exc).__name__}: {exc}"
    if ev.protocol == "nested":
        try:
            out["nested"] = _nested(exp, data, search, Path(run_dir) / "nested", metric)
        except Exception as exc:  # noqa: BLE001
            out["error"] = "; ".join(filter(None, [out.get("error"), f"nested: {type(exc).__name__}: {exc}"]))
    return out


def _nested(exp: Experiment, data: Dataset, search: Search, root: Path, metric: str) -> dict[str, Any]:
    ev = exp.spec.evaluation
    folds: list[dict[str, Any]] = []
    for i, outer in enumerate(outer_folds(data, ev.outer_folds, exp.spec.seed)):
        best = search(outer, root / f"outer-{i}")
        if best is None:
            folds.append({"fold": i, "error": "no trial reported the metric"})
            continue
        test = refit(exp, best.config, outer)
        folds.append({"fold": i, "config": dict(best.config), "valid": best.score, "test": test.get(metric)})
    scores = np.array([f["test"] for f in folds if f.get("test") is not None], dtype=float)
    valid = np.array([f["valid"] for f in folds if f.get("test") is not None], dtype=float)
    return {"outer_folds": ev.outer_folds, "inner": ev.inner, "folds": folds,
            "mean": float(scores.mean()) if scores.size else None,
            "std": float(scores.std()) if scores.size else None,
            "mean_valid": float(valid.mean()) if valid.size else None}


def _gap(test: float | None, valid: float | None) -> float | None:
    if test is None or valid is None or math.isnan(test) or math.isnan(valid):
        return None
    return test - valid


def describe(entry: Mapping[str, Any] | None) -> list[str]:
    """Summary lines for the CLI."""
    if not entry:
        return []
    lines = []
    if entry.get("test_score") is not None:
        gap = entry.get("gap")
        gap_text = f", gap {gap:+.4g}" if gap is not None else ""
        lines.append(f"test {entry['test_metric']}={entry['test_score']:.6g} (best config refitted on train+valid; "
                     f"its {entry['metric']}={entry['valid']:.6g}{gap_text})")
    nested = entry.get("nested")
    if nested and nested.get("mean") is not None:
        lines.append(f"nested estimate of the tuning procedure: {entry['test_metric']}={nested['mean']:.6g} "
                     f"± {nested['std']:.3g} over {nested['outer_folds']} outer folds "
                     f"(their searches' best {entry['metric']}: {nested['mean_valid']:.6g})")
    if entry.get("error"):
        lines.append(f"evaluation: {entry['error']}")
    return lines

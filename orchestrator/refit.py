"""After the search: the best config refitted on train+valid and scored once on the test split.

No trial has seen the test split, so the gap between this score and the best validation score is
the validation overfitting that grows with the number of configs tried. For `nested` evaluation
(orchestrator.protocol) it also runs one more search per outer fold, through a callback the
runner passes in (`Search`), so this module never reaches back up into the runner.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from orchestrator.data import Dataset
from orchestrator.families import Family, resolve
from orchestrator.protocol import outer_folds, refit_data
from orchestrator.spec import Experiment
from orchestrator.trial import Trial, TrialContext, thread_limit


class _Collect:
    """A trial context outside Tune: keeps the last report, never checkpoints, never restores."""

    checkpointing = False

    def __init__(self, trial: Trial):
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


Search = Callable[[Dataset, Path], "Best | None"]  # runs the spec's search on other data


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

"""After the search: the best config refitted on train+valid and scored once on the test split.

No trial has seen the test split, so the gap between this score and the best validation score is
the validation overfitting that grows with the number of configs tried. For `nested` evaluation
(orchestrator.spec.evaluation) it also runs one more search per outer fold, through a callback the
lifecycle passes in (`Search`), so this module never reaches back up into it.

After PBT/PB2 the best trial's result is a schedule, not a config: its final state was trained
by a chain of trials, each config from some iteration on (orchestrator.trial.context records it). Its
last config alone was never trained from the start, so the refit replays the schedule
(`method: replay-schedule`): it trains the first config up to the iteration where the next one
took over, keeps the family's state, and continues with the next config from that state, the way
PBT's exploit did. That works for every family PBT accepts (they all checkpoint and resume), and
it still trains on train+valid like any other refit. Scoring the best trial's final checkpoint
on test instead would need a scoring entry point families do not have, and a model trained
without the validation rows. Other schedulers never change a config: `method: last-config`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from orchestrator.families.contract import Family, Trial
from orchestrator.families.registry import resolve
from orchestrator.model.formats import Target
from orchestrator.model.package import Packed, package
from orchestrator.run import ray_local
from orchestrator.search.schedulers import SCHEDULERS
from orchestrator.spec.data import Dataset
from orchestrator.spec.evaluation import outer_folds, refit_data
from orchestrator.spec.experiment import Experiment
from orchestrator.trial.context import TrialContext, thread_limit
from orchestrator.trial.settings import TrialSettings


class _Collect:
    """A trial context outside Tune: keeps the last report and the model the family hands over,
    never checkpoints, never restores."""

    checkpointing = False

    def __init__(self, trial: Trial):
        self._trial = trial
        self.last: dict[str, Any] = {}
        self.reports = 0
        self.kept: Any = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._trial, name)

    def report(self, metrics: dict[str, Any], state: Any = None) -> None:
        self.last, self.reports = dict(metrics), self.reports + 1

    def restore(self) -> None:
        return None

    def keep(self, model: Any) -> None:
        self.kept = model


class _SegmentDone(Exception):
    """Ends one config's part of a replayed schedule (raised from `report`, caught by `_replay`)."""


class _Replay(_Collect):
    """A trial context that keeps the family's state at every report, so the next config of a
    schedule continues from it, and stops training at the end of each config's part."""

    checkpointing = True

    def __init__(self, trial: Trial):
        super().__init__(trial)
        self.state: Any = None
        self.stop_at: int | None = None
        self.trained: list[list[int]] = []  # [first, last] iteration each segment trained

    def report(self, metrics: dict[str, Any], state: Any = None) -> None:
        super().report(metrics, state)
        self.state = state
        self.trained[-1][1] = self.reports
        if self.stop_at is not None and self.reports >= self.stop_at:
            raise _SegmentDone

    def restore(self) -> Any:
        return self.state


def _replay(family: Family, schedule: list[dict[str, Any]], data: Dataset, ctx: _Replay) -> None:
    for i, segment in enumerate(schedule):
        end = schedule[i + 1]["from_iteration"] if i + 1 < len(schedule) else None
        if end is not None and end <= ctx.reports:
            continue  # taken over before it trained an iteration
        ctx.stop_at = end
        ctx.trained.append([ctx.reports + 1, ctx.reports])
        try:
            family.train(dict(segment["config"]), data, ctx)
        except _SegmentDone:
            pass


def as_test_metric(metric: str) -> str:
    return f"test_{metric.removeprefix('val_')}"


@dataclass(frozen=True)
class Kept:
    """What became of the refit's model: its files (orchestrator.model.package.Packed), or why not."""

    packed: Packed | None = None
    error: str | None = None


@dataclass(frozen=True)
class Refitted:
    """One refit: its test metrics, the iterations each config of a replayed schedule trained, and
    the model (when asked to keep it)."""

    test: dict[str, float]
    trained: list[list[int]]
    kept: Kept | None = None


def _refit_task(family_ref: str, base_dir: str, config: dict, data: Dataset, seed: int,
                schedule: list[dict[str, Any]] | None = None, keep: bool = False,
                resources: tuple[int, float] = (1, 0.0), in_task: bool = True) -> Refitted:
    family = resolve(family_ref, Path(base_dir))
    if in_task:  # a Ray task: the resources Ray gave it
        trial = TrialContext.current(TrialSettings(family_ref, seed=seed))
    else:  # in this process: the spec's, as Ray would give them
        trial = TrialContext(seed=seed, cpus=max(1, int(resources[0])), gpus=float(resources[1]))
    ctx = _Replay(trial) if schedule else _Collect(trial)
    with thread_limit(ctx.cpus):
        if schedule:
            _replay(family, schedule, refit_data(data), ctx)
        else:
            family.train(dict(config), refit_data(data), ctx)
    if not ctx.reports:
        raise RuntimeError(f"family {family_ref} reported nothing when refitted on train+valid")
    test = {as_test_metric(k): float(v) for k, v in ctx.last.items() if k.startswith("val_")}
    return Refitted(test, getattr(ctx, "trained", []), _keep(family, ctx.kept, data, test) if keep else None)


def _keep(family: Family, kept: Any, data: Dataset, test: dict[str, float]) -> Kept:
    """The kept model as files, checked against the test score; a failure is a reason, never raised:
    the refit's score stands without it."""
    if family.model_format is None:
        return Kept(error=f"family {family.name} keeps no model (it names no model_format)")
    if kept is None:
        return Kept(error=f"family {family.name} handed over no model (trial.keep was not called: its training "
                          f"diverged, or it predates trial.keep)")
    try:
        return Kept(package(family.model_format, kept, data.X_test, data.y_test, Target(data.task, data.n_classes),
                            test))
    except Exception as exc:
        text = str(exc).strip().splitlines()
        return Kept(error=f"saving it as {family.model_format} failed: {type(exc).__name__}: {text[0] if text else ''}")


def refit(exp: Experiment, config: Mapping[str, Any], data: Dataset,
          schedule: list[dict[str, Any]] | None = None) -> dict[str, float]:
    """Trains `config` (or replays `schedule`) on train+valid and scores it on test, as a Ray task
    with a trial's resources (so it gets the trial's GPU and threads); in-process without Ray."""
    return run_refit(exp, config, data, schedule).test


def run_refit(exp: Experiment, config: Mapping[str, Any], data: Dataset, schedule: list[dict[str, Any]] | None,
              keep: bool = False) -> Refitted:
    """`refit`, and with `keep` the model as files (`Refitted.kept`).

    Where it runs: in this process without Ray (`hpo refit`), and after a local CPU-only run, whose
    trials are over and whose CPUs are idle: the same threads (`thread_limit`) train here, without a
    fresh Ray worker that imports the family's library again (~2 s for XGBoost, docs/performance.md).
    A GPU refit, or one on a Ray this process joined (`--ray`, a cluster job), is a Ray task with a
    trial's resources: Ray grants the GPU, and a cluster's driver may sit on a small head node."""
    import ray

    res = exp.spec.resources
    args = (exp.spec.family, str(exp.base_dir), dict(config), data, exp.spec.seed, schedule, keep, (res.cpu, res.gpu))
    if in_this_process(exp):
        return _refit_task(*args, in_task=False)
    task = ray.remote(num_cpus=res.cpu, num_gpus=res.gpu, max_retries=0)(_refit_task)
    return ray.get(task.remote(*args))


def in_this_process(exp: Experiment) -> bool:
    """Whether a refit trains in this process rather than as a Ray task (`run_refit`)."""
    import ray

    return not ray.is_initialized() or (here_after_a_local_ray(exp) and ray_local.started_here())


def here_after_a_local_ray(exp: Experiment) -> bool:
    """Whether, after a search on a Ray this process started, the refit trains in this process: on
    CPUs only; a GPU is Ray's to grant, so that refit stays a Ray task. Known before Ray starts
    (orchestrator.run.lifecycle imports the family's library meanwhile)."""
    return exp.spec.resources.gpu == 0


def needs_ray(exp: Experiment) -> bool:
    """Whether what follows the search needs Ray: a refit that is a Ray task, or nested evaluation's
    searches (one per outer fold)."""
    return exp.spec.evaluation.protocol == "nested" or not in_this_process(exp)


def refit_plan(exp: Experiment, best: Best) -> dict[str, Any]:
    """How the best trial is refitted, for experiment.json: its schedule where the scheduler
    changes configs mid-trial (PBT, PB2), else its config."""
    if not SCHEDULERS[exp.spec.scheduler.name].changes_config:
        return {"method": "last-config"}
    schedule = list(best.schedule or [{"from_iteration": 0, "config": dict(best.config)}])
    return {"method": "replay-schedule", "schedule": schedule}


@dataclass(frozen=True)
class Best:
    """The best trial of a search, as far as evaluation cares."""

    config: Mapping[str, Any]
    score: float
    trial_id: str = ""
    schedule: list[dict[str, Any]] | None = None  # its configs over iterations, when PBT changed them


Search = Callable[[Dataset, Path], "Best | None"]  # runs the spec's search on other data


@dataclass(frozen=True)
class Concluded:
    """After the search: experiment.json's `evaluation` entry, and the refit's model (or why not),
    which orchestrator.run.take_home saves."""

    evaluation: dict[str, Any]
    kept: Kept | None = None


def conclude(exp: Experiment, data: Dataset | None, best: Best | None, search: Search,
             run_dir: Path, keep: bool = False) -> Concluded | None:
    """After the search: refit the best config on train+valid and score it on test; for nested,
    run one more search per outer fold (its final model is still this refit, of the config the
    search over all rows chose). Returns the `evaluation` entry of experiment.json and, with
    `keep`, the refit's model as files; None when there is nothing to refit (a user trainable, a
    family without data, no best trial).

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
    plan = out["refit"] = refit_plan(exp, best)
    kept = None
    try:
        done = run_refit(exp, best.config, data, plan.get("schedule"), keep=keep)
        if done.trained:
            plan["trained"] = done.trained  # the iterations each config of the schedule trained
        out.update(test=done.test, test_score=done.test.get(metric), gap=_gap(done.test.get(metric), best.score))
        kept = done.kept
    except Exception as exc:
        out["error"] = f"refit failed: {type(exc).__name__}: {exc}"
        kept = Kept(error="the refit failed (evaluation.error)") if keep else None
    if ev.protocol == "nested":
        try:
            out["nested"] = _nested(exp, data, search, Path(run_dir) / "nested", metric)
        except Exception as exc:
            out["error"] = "; ".join(filter(None, [out.get("error"), f"nested: {type(exc).__name__}: {exc}"]))
    return Concluded(out, kept)


def _nested(exp: Experiment, data: Dataset, search: Search, root: Path, metric: str) -> dict[str, Any]:
    ev = exp.spec.evaluation
    folds: list[dict[str, Any]] = []
    for i, outer in enumerate(outer_folds(data, ev.outer_folds, exp.spec.seed)):
        best = search(outer, root / f"outer-{i}")
        if best is None:
            folds.append({"fold": i, "error": "no trial reported the metric"})
            continue
        test = refit(exp, best.config, outer, refit_plan(exp, best).get("schedule"))
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

"""Model families: the contract a built-in family fulfils, and how a `family:` string is found.

A built-in family (a module in `experiments/` with a `FAMILY` object) supplies one decision, how
to train one config, through `train(config, data, trial)`; the framework owns data loading,
evaluation names, resources and reporting. A user's own Ray Tune function trainable
(`path/to/file.py:fn` or `package.module:fn`) runs unchanged: it calls `ray.tune.report` itself.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from orchestrator.metrics import COSTS, Mode, reported

# Name -> module holding `FAMILY` (or `module:ATTR` where one module holds several families).
# Adding a family is one module plus one line here.
BUILTIN_FAMILIES: dict[str, str] = {
    "xgboost": "experiments.xgb",
    "synthetic": "experiments.synthetic",
    "lightgbm": "experiments.lgbm",
    "torch_mlp": "experiments.torch_nets:MLP",
    "torch_cnn": "experiments.torch_nets:CNN",
    "random_forest": "experiments.sklearn_models:RANDOM_FOREST",
    "svm": "experiments.sklearn_models:SVM",
    "sklearn": "experiments.sklearn_models:ESTIMATOR",
}


@dataclass(frozen=True)
class Family:
    """A built-in family.

    Attributes:
        train: `train(config, data, trial)`; calls `trial.report(...)` once per iteration
            (boosting round, epoch) so that schedulers can stop it early.
        default_space: YAML-shaped space used where the spec gives none; the spec's `space:`
            overrides it entry by entry.
        iterations_param: the hyperparameter that sets how many iterations a trial reports;
            a scheduler's `max_t` above its largest value could never be reached.
        checkpoints: whether `train` saves state through `trial.report(..., state=...)` and
            resumes from `trial.restore()` (needed by PBT and resume).
        metrics: names reported and their natural mode; None means the shared vocabulary of
            `orchestrator.metrics` for the data's task.
        params: hyperparameters `train` understands beyond those of `default_space`. A spec
            naming any other one is refused with a did-you-mean (XGBoost silently ignores
            `learnig_rate`), unless the spec lists it under `extra_params:` on purpose. None: the
            family passes every name on to a library that checks them itself, so nothing is checked.
        check_space: the family's own rules on the parsed space (`{name: orchestrator.space.Param}`),
            returning `orchestrator.errors.Problem`s; run by `hpo validate` with every other check.
        costs: cost metrics (`orchestrator.metrics.COSTS`: `predict_ms`, `model_size`) `train`
            reports at a trial's last report when the spec lists them (`metrics.wants`).
    """

    name: str
    train: Callable[..., None]
    default_space: Mapping[str, Any]
    iterations_param: str | None = None
    checkpoints: bool = False
    metrics: Mapping[str, Mode] | None = None
    needs_data: bool = True
    params: tuple[str, ...] | None = None
    check_space: Callable[[Mapping[str, Any]], list] | None = None
    costs: tuple[str, ...] = ()

    def known_params(self) -> list[str] | None:
        """Every hyperparameter name this family understands, or None if it does not say."""
        return None if self.params is None else sorted({*self.default_space, *self.params})

    def reports(self, task: str | None) -> dict[str, Mode]:
        known = dict(self.metrics) if self.metrics is not None else reported(task or "classification")
        return {**known, **{name: COSTS[name] for name in self.costs}}


@dataclass(frozen=True)
class UserTrainable:
    """A user's Ray Tune trainable, passed to the Tuner as it is."""

    ref: str
    fn: Callable[..., Any]
    module_file: Path | None = None  # set when loaded from a file path: shipped by value to workers

    @property
    def name(self) -> str:
        return self.ref


FamilyRef = Family | UserTrainable


class FamilyNotFound(LookupError):
    pass


def resolve(ref: str, base_dir: Path | None = None) -> FamilyRef:
    """Finds a family by built-in name, `file.py:function` or `package.module:function`.

    Relative file paths are looked up next to the spec first, then in the working directory.
    """
    if ref in BUILTIN_FAMILIES:
        module, _, attr = BUILTIN_FAMILIES[ref].partition(":")
        family = getattr(importlib.import_module(module), attr or "FAMILY", None)
        if not isinstance(family, Family):
            raise FamilyNotFound(f"{module}.{attr or 'FAMILY'} is not a Family")
        return family
    if ":" not in ref:
        raise FamilyNotFound(f"unknown family {ref!r}; built-in families: {', '.join(BUILTIN_FAMILIES)}; "
                             f"or name your own trainable as path/to/file.py:function or package.module:function")
    where, _, attr = ref.rpartition(":")
    if where.endswith(".py"):
        path = _find_file(where, base_dir)
        module = _load_file(path)
    else:
        path = None
        try:
            module = importlib.import_module(where)
        except ImportError as exc:
            raise FamilyNotFound(f"cannot import {where!r} ({exc}); is it installed or on PYTHONPATH?") from exc
    fn = getattr(module, attr, None)
    if fn is None:
        public = [n for n, v in vars(module).items() if callable(v) and not n.startswith("_")]
        raise FamilyNotFound(f"{where} has no {attr!r}; callables there: {', '.join(public) or 'none'}")
    if isinstance(fn, Family):  # a user's own thin family: `my_family.py:FAMILY`
        return fn
    if not callable(fn):
        raise FamilyNotFound(f"{ref} is not callable")
    if inspect.isfunction(fn) and len(inspect.signature(fn).parameters) < 1:
        raise FamilyNotFound(f"{ref} must take the trial's config dict as its first argument")
    return UserTrainable(ref, fn, path)


def _find_file(where: str, base_dir: Path | None) -> Path:
    candidates = [Path(where)] if Path(where).is_absolute() else \
        [d / where for d in (base_dir, Path.cwd()) if d is not None]
    for path in candidates:
        if path.is_file():
            return path.resolve()
    raise FamilyNotFound(f"file {where!r} not found (looked in {', '.join(str(c) for c in candidates)})")


def _load_file(path: Path):
    # A stable, unique module name per file, so the same file loads once per process.
    name = f"hpo_user_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise FamilyNotFound(f"importing {path} failed: {type(exc).__name__}: {exc}") from exc
    return module

"""How a spec's `family:` string is found: a built-in name, `path/to/file.py:fn` or `package.module:fn`.

A built-in family is a module in `experiments/` holding a `Family` (orchestrator.families.contract);
adding one is that module plus one line in `BUILTIN_FAMILIES`. A user's own Ray Tune trainable
(`path/to/file.py:fn` or `package.module:fn`) runs unchanged: it calls `ray.tune.report` itself.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.families.contract import Family

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

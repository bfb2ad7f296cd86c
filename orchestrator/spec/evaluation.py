"""The evaluation protocol: the spec's `evaluation:` section and the splits it makes.

It is the same for every family, so no family splits data itself. `evaluation.protocol`:

- `holdout` (default): a trial trains on `train` and is scored on `valid` at every iteration.
- `kfold`: train+valid is cut into `folds` folds; a trial trains one model per fold and reports,
  at every iteration, the mean over folds under the usual names (`val_error`) and the spread as
  `<name>_std` (`val_error_std`). How the folds run inside one trial: orchestrator.trial.folds.
- `nested`: the search runs as with `inner` (holdout or kfold), and in addition train+valid is cut
  into `outer_folds` folds, each of which gets a whole search of its own on the other folds; that
  search's best config is refitted and scored on the held-out fold. The mean of those scores
  estimates how well *the tuning procedure* generalises. The best validation score of a search
  cannot: it is the maximum of many noisy estimates, biased upwards (Cawley & Talbot, JMLR 2010).
  It costs `outer_folds + 1` searches; each outer search's trials are kept under
  `nested/outer-<i>/` in the run folder.

Always, after the search, the best config is refitted on train+valid and scored once on `test`,
which no trial has seen (orchestrator.run.refit). The gap between that and the best validation score
is the validation overfitting that grows with the number of configs tried; it is written to
`experiment.json`.

This module is pure data handling: the spec validates against it, trials and the driver split
with it, and it imports neither Ray nor anything that runs a trial.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator

from orchestrator.base import StrictModel
from orchestrator.errors import Problem
from orchestrator.families.contract import Family
from orchestrator.spec.data import Dataset


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

    def resolved(self) -> dict[str, Any]:
        """The fields that apply to this protocol, defaults filled in: what a resolved spec shows,
        and what validates again (the others are refused when given)."""
        out: dict[str, Any] = {"protocol": self.protocol}
        if self.protocol == "nested":
            out.update(outer_folds=self.outer_folds, inner=self.inner)
        if self.per_trial == "kfold":
            out["folds"] = self.folds
        return out


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



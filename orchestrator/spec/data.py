"""Data: the `data:` spec, and one loader that turns it into train/valid/test arrays.

Data is loaded once in the driver and shared with every trial through Ray's object store
(`tune.with_parameters`), never re-read per trial. Only offline sources exist: scikit-learn's
bundled datasets (no `fetch_*`, which download), generated data, and local files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from orchestrator.base import StrictModel

# Bundled with scikit-learn (no download), with their task.
SKLEARN_DATASETS: dict[str, str] = {
    "digits": "classification",
    "breast_cancer": "classification",
    "wine": "classification",
    "iris": "classification",
    "diabetes": "regression",
}


class DataSpec(StrictModel):
    source: Literal["sklearn", "synthetic", "file"] = "sklearn"
    name: str | None = Field(None, description="sklearn: the bundled dataset's name")
    path: str | None = Field(None, description="file: a .csv or .parquet path")
    target: str | None = Field(None, description="file: the target column")
    task: Literal["classification", "regression"] | None = None
    n_samples: int = Field(1000, ge=20, description="synthetic: rows")
    n_features: int = Field(20, ge=2, description="synthetic: columns")
    test_size: float = Field(0.2, gt=0, lt=1)
    valid_size: float = Field(0.2, gt=0, lt=1)
    seed: int = 0

    @model_validator(mode="after")
    def _source_fields(self):
        if self.test_size + self.valid_size >= 0.9:
            raise ValueError(f"test_size + valid_size must leave at least 10% to train, "
                             f"got {self.test_size} + {self.valid_size}")
        if self.source == "sklearn":
            if self.name not in SKLEARN_DATASETS:
                raise ValueError(f"name: unknown bundled dataset {self.name!r}; "
                                 f"choose one of {', '.join(SKLEARN_DATASETS)}")
            if self.task not in (None, SKLEARN_DATASETS[self.name]):
                raise ValueError(f"task: {self.name} is a {SKLEARN_DATASETS[self.name]} dataset, got {self.task}")
        elif self.source == "file":
            if not self.path or not self.target or not self.task:
                raise ValueError("source file needs path, target (the label column) and task "
                                 "(classification or regression)")
        elif self.task is None:
            raise ValueError("source synthetic needs task: classification or regression")
        return self

    @property
    def resolved_task(self) -> str:
        return self.task or SKLEARN_DATASETS[self.name]


class DataError(ValueError):
    """The data named by the spec cannot be used; `field` is the spec path to fix."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class Dataset:
    """Arrays after the split; `test` is held out from the search entirely."""

    task: str
    X_train: np.ndarray
    y_train: np.ndarray
    X_valid: np.ndarray
    y_valid: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    feature_names: tuple[str, ...]

    @property
    def n_classes(self) -> int:
        return int(max(self.y_train.max(), self.y_valid.max(), self.y_test.max()) + 1) \
            if self.task == "classification" else 0


def load(spec: DataSpec, base_dir: Path | None = None) -> Dataset:
    X, y, names = _read(spec, base_dir)
    return split(X, y, spec, names)


def _read(spec: DataSpec, base_dir: Path | None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    task = spec.resolved_task
    if spec.source == "sklearn":
        from sklearn import datasets

        bunch = getattr(datasets, f"load_{spec.name}")()
        return bunch.data, bunch.target, list(getattr(bunch, "feature_names", []))
    if spec.source == "synthetic":
        from sklearn.datasets import make_classification, make_regression

        if task == "classification":
            X, y = make_classification(n_samples=spec.n_samples, n_features=spec.n_features,
                                       n_informative=max(2, spec.n_features // 2), random_state=spec.seed)
        else:
            X, y = make_regression(n_samples=spec.n_samples, n_features=spec.n_features, noise=0.1,
                                   random_state=spec.seed)
        return X, y, [f"x{i}" for i in range(spec.n_features)]
    return _read_file(spec, base_dir)


def find_file(spec: DataSpec, base_dir: Path | None) -> Path:
    """`data.path`, looked up next to the spec first, then in the working directory."""
    path = Path(spec.path)
    if not path.is_absolute() and base_dir is not None and (base_dir / path).exists():
        path = base_dir / path
    if not path.is_file():
        raise DataError("data.path", f"no file {spec.path} (looked in {base_dir or '.'} and the working "
                                     f"directory); give a .csv or .parquet path relative to the spec")
    return path


def _read_file(spec: DataSpec, base_dir: Path | None):
    import pandas as pd

    path = find_file(spec, base_dir)
    try:
        frame = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise DataError("data.path", f"cannot read {path} as {'Parquet' if path.suffix == '.parquet' else 'CSV'}: "
                                     f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    if spec.target not in frame.columns:
        raise DataError("data.target", f"column {spec.target!r} not in {path}; columns: {list(frame.columns)}")
    y = frame.pop(spec.target).to_numpy()
    if spec.task == "classification":
        _, y = np.unique(y, return_inverse=True)  # labels -> 0..k-1, as every family expects
    X = pd.get_dummies(frame, dtype=float).to_numpy(dtype=float)
    return X, y, list(frame.columns)


def split(X, y, spec: DataSpec, names: list[str]) -> Dataset:
    from sklearn.model_selection import train_test_split

    stratify = spec.resolved_task == "classification"
    X_rest, X_test, y_rest, y_test = train_test_split(
        X, y, test_size=spec.test_size, random_state=spec.seed, stratify=y if stratify else None)
    valid_share = spec.valid_size / (1 - spec.test_size)
    X_train, X_valid, y_train, y_valid = train_test_split(
        X_rest, y_rest, test_size=valid_share, random_state=spec.seed, stratify=y_rest if stratify else None)
    f32 = lambda a: np.ascontiguousarray(a, dtype=np.float32)  # noqa: E731
    return Dataset(spec.resolved_task, f32(X_train), y_train, f32(X_valid), y_valid, f32(X_test), y_test,
                   tuple(names))

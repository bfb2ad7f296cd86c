"""Data: the `data:` spec, and one loader that turns it into train/valid/test arrays.

Data is loaded once in the driver and shared with every trial through Ray's object store
(orchestrator.run.run_data), never re-read per trial. Only offline sources exist: scikit-learn's
bundled datasets (no `fetch_*`, which download), generated data, and local files.

Every source is first a table (`read_frame`: feature columns and a target column, as a user would
hold them), then a matrix by one rule (`encode`, described by `Column`s), then split by row
(`split_rows`). A saved model (orchestrator.model) keeps the columns and the classes, and encodes
the rows it is asked to predict with the same `encode`, so what it predicts on is what the
family trained on, to the bit; `heldout_frame` gives back the test split as a table.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

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
class Column:
    """One input column as it was read, and how `encode` turns it into matrix columns.

    Attributes:
        name: the column's name in the table.
        dtype: the pandas dtype it was read with (`float64`, `int64`, `bool`, `str`, ...).
        categories: for a text column, its values (as text, sorted): one 0/1 matrix column each,
            in this order (pandas' `get_dummies`; a missing value is all zeros). None for a number.
    """

    name: str
    dtype: str
    categories: tuple[str, ...] | None = None

    @property
    def kind(self) -> str:
        """`number` (integers, floats, booleans: interchangeable) or `text` (one-hot encoded)."""
        return "text" if self.categories is not None else "number"

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "kind": self.kind,
                **({"categories": list(self.categories)} if self.categories is not None else {})}


@dataclass(frozen=True)
class Dataset:
    """Arrays after the split; `test` is held out from the search entirely.

    `columns`, `target` and `classes` describe the table the arrays came from (what a saved model
    expects): its input columns, the target column's name, and for classification the target's
    labels in the order of their codes 0..k-1 (`y` holds the codes).
    """

    task: str
    X_train: np.ndarray
    y_train: np.ndarray
    X_valid: np.ndarray
    y_valid: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    feature_names: tuple[str, ...]
    columns: tuple[Column, ...] = ()
    target: str = "target"
    classes: tuple[Any, ...] = ()

    @property
    def n_classes(self) -> int:
        return int(max(self.y_train.max(), self.y_valid.max(), self.y_test.max()) + 1) \
            if self.task == "classification" else 0


def load(spec: DataSpec, base_dir: Path | None = None) -> Dataset:
    frame, y = read_frame(spec, base_dir)
    columns, names = describe(frame), tuple(frame.columns)
    classes, codes = labels(y, spec.resolved_task)
    X = encode(frame, columns)
    del frame  # the table's memory goes before the splits are copied out of X
    _release_arrow_memory()
    train, valid, test = split_rows(codes, spec)
    return Dataset(spec.resolved_task, X[train], codes[train], X[valid], codes[valid], X[test], codes[test],
                   names, columns, str(y.name), classes)


def heldout_frame(spec: DataSpec, base_dir: Path | None = None):
    """The test split as a table: (feature columns, target with its own labels), rows as in the file."""
    frame, y = read_frame(spec, base_dir)
    _, codes = labels(y, spec.resolved_task)
    test = split_rows(codes, spec)[2]
    return frame.iloc[test], y.iloc[test]


def read_frame(spec: DataSpec, base_dir: Path | None):
    """(features as a DataFrame, target as a named Series) for any source."""
    import pandas as pd

    task = spec.resolved_task
    if spec.source == "sklearn":
        from sklearn import datasets

        bunch = getattr(datasets, f"load_{spec.name}")()
        names = list(getattr(bunch, "feature_names", [])) or [f"x{i}" for i in range(bunch.data.shape[1])]
        return pd.DataFrame(bunch.data, columns=names), pd.Series(bunch.target, name="target")
    if spec.source == "synthetic":
        from sklearn.datasets import make_classification, make_regression

        if task == "classification":
            X, y = make_classification(n_samples=spec.n_samples, n_features=spec.n_features,
                                       n_informative=max(2, spec.n_features // 2), random_state=spec.seed)
        else:
            X, y = make_regression(n_samples=spec.n_samples, n_features=spec.n_features, noise=0.1,
                                   random_state=spec.seed)
        return pd.DataFrame(X, columns=[f"x{i}" for i in range(spec.n_features)]), pd.Series(y, name="target")
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
        frame = _read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise DataError("data.path", f"cannot read {path} as {'Parquet' if path.suffix == '.parquet' else 'CSV'}: "
                                     f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    if spec.target not in frame.columns:
        raise DataError("data.target", f"column {spec.target!r} not in {path}; columns: {list(frame.columns)}")
    y = frame.pop(spec.target)
    return frame, y


def _read_parquet(path: Path):
    """The file as pandas reads it (`pd.read_parquet`: its pandas metadata, index and dtypes), but
    one block per column: a number column without missing values is then a view of Arrow's own
    buffer, not a copy, and Arrow frees what it converts as it goes (`self_destruct`). A 1,000,000 x
    50 file no longer sits in memory twice, as Arrow's table and as pandas' (docs/performance.md)."""
    import pyarrow.parquet as pq

    return pq.read_table(path, use_pandas_metadata=True).to_pandas(split_blocks=True, self_destruct=True)


def _release_arrow_memory() -> None:
    """Hands the memory Arrow freed with a Parquet file's table back to the system at once. Arrow's
    allocator (mimalloc here) keeps freed pages for reuse: after a 1,000,000 x 50 file loaded, this
    process held 1,113 MB with nothing allocated in Arrow's pool, 446 MB once released, through
    Ray's start-up and the whole run (docs/performance.md)."""
    pa = sys.modules.get("pyarrow")  # only where a file was read through Arrow
    if pa is not None:
        pa.default_memory_pool().release_unused()


def labels(y, task: str) -> tuple[tuple[Any, ...], np.ndarray]:
    """(the labels in code order, each row's code 0..k-1) for classification, as every family
    expects its target; ((), the values) for regression."""
    values = y.to_numpy()
    if task != "classification":
        return (), values
    classes, codes = np.unique(values, return_inverse=True)
    return tuple(c.item() if hasattr(c, "item") else c for c in classes), codes


def describe(frame) -> tuple[Column, ...]:
    """The table's columns: numbers (and booleans) stay one column; any other column is text,
    one-hot encoded over its values."""
    from pandas.api.types import is_bool_dtype, is_numeric_dtype

    out = []
    for name, dtype in frame.dtypes.items():
        if is_numeric_dtype(dtype) or is_bool_dtype(dtype):
            out.append(Column(str(name), str(dtype)))
        else:
            values = frame[name].dropna().astype(str).unique()
            out.append(Column(str(name), str(dtype), tuple(sorted(values))))
    return tuple(out)


ROWS_AT_ONCE = 131_072  # `encode`'s block of rows: fastest of 32k-256k rows on a 1,000,000 x 50 file


def encode(frame, columns: tuple[Column, ...]) -> np.ndarray:
    """The matrix a family trains on, float32: the number columns in order, then each text
    column's categories as 0/1 columns, in order (pandas' `get_dummies` layout). A value outside
    a column's categories, like a missing one, sets none of them; orchestrator.model refuses it
    before it gets here.

    Filled one column at a time (each read as float64, then rounded to float32 as before), so the
    table is never held a second time as a float64 matrix: that matrix and its column list made
    the driver's peak while a 1,000,000 x 50 file loaded 5x the array (docs/performance.md). The
    number columns go in `ROWS_AT_ONCE` rows at a time: written whole, each column's values land
    one per matrix row, a row's width apart, across all of X (that file: 0.80-1.26 s whole,
    0.35-0.86 s this way, each in a fresh process)."""
    numbers = [c for c in columns if c.kind == "number"]
    texts = [c for c in columns if c.kind == "text"]
    X = np.empty((len(frame), len(numbers) + sum(len(c.categories) for c in texts)), dtype=np.float32)
    for start in range(0, len(frame), ROWS_AT_ONCE):
        rows = slice(start, start + ROWS_AT_ONCE)
        for j, c in enumerate(numbers):
            X[rows, j] = frame[c.name].iloc[rows].to_numpy(dtype=float)
    j = len(numbers)
    for c in texts:
        text = frame[c.name].astype(str).where(frame[c.name].notna(), None).to_numpy()
        for category in c.categories:
            X[:, j] = text == category
            j += 1
    return X


def split_rows(y: np.ndarray, spec: DataSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row numbers of (train, valid, test): stratified by class for classification, seeded by
    `data.seed`. Splitting the row numbers draws what splitting the arrays themselves would."""
    from sklearn.model_selection import train_test_split

    stratify = spec.resolved_task == "classification"
    rows = np.arange(len(y))
    rest, test = train_test_split(rows, test_size=spec.test_size, random_state=spec.seed,
                                  stratify=y if stratify else None)
    valid_share = spec.valid_size / (1 - spec.test_size)
    train, valid = train_test_split(rest, test_size=valid_share, random_state=spec.seed,
                                    stratify=y[rest] if stratify else None)
    return train, valid, test

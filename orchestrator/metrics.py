"""The shared evaluation vocabulary: every built-in family reports the same metric names.

Families hand over predictions; this module turns them into `val_<name>` numbers, so that a
spec's `metric:` means the same thing whichever family it tunes.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

Mode = Literal["min", "max"]

CLASSIFICATION: dict[str, Mode] = {"accuracy": "max", "error": "min", "log_loss": "min", "auc": "max", "f1": "max"}
REGRESSION: dict[str, Mode] = {"rmse": "min", "mae": "min", "r2": "max"}


def reported(task: str, prefix: str = "val_") -> dict[str, Mode]:
    """Metric names (with their natural mode) a built-in family reports for this task."""
    table = CLASSIFICATION if task == "classification" else REGRESSION
    return {f"{prefix}{name}": mode for name, mode in table.items()}


def score(task: str, y_true: np.ndarray, y_pred: np.ndarray, prefix: str = "val_") -> dict[str, float]:
    """Scores predictions: class probabilities (n, k) for classification, values for regression."""
    from sklearn import metrics as m

    if task == "regression":
        mse = m.mean_squared_error(y_true, y_pred)
        out = {"rmse": float(np.sqrt(mse)), "mae": m.mean_absolute_error(y_true, y_pred),
               "r2": m.r2_score(y_true, y_pred)}
    else:
        proba = np.asarray(y_pred, dtype=float)
        if proba.ndim == 1:  # binary models may give P(class 1) only
            proba = np.column_stack([1 - proba, proba])
        proba = np.clip(proba, 1e-15, 1)
        proba /= proba.sum(axis=1, keepdims=True)
        labels = np.arange(proba.shape[1])
        pred = proba.argmax(axis=1)
        acc = m.accuracy_score(y_true, pred)
        binary = proba.shape[1] == 2
        out = {
            "accuracy": acc,
            "error": 1.0 - acc,
            "log_loss": m.log_loss(y_true, proba, labels=labels),
            "f1": m.f1_score(y_true, pred, average="binary" if binary else "macro", labels=None if binary else labels,
                             zero_division=0),
            "auc": _auc(y_true, proba, binary),
        }
    return {f"{prefix}{k}": float(v) for k, v in out.items()}


def _auc(y_true, proba, binary: bool) -> float:
    from sklearn.metrics import roc_auc_score

    try:
        if binary:
            return roc_auc_score(y_true, proba[:, 1])
        return roc_auc_score(y_true, proba, multi_class="ovr", labels=np.arange(proba.shape[1]))
    except ValueError:  # a class absent from this split: AUC is undefined, not an error
        return float("nan")

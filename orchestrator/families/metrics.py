"""The shared evaluation vocabulary: every built-in family reports the same metric names.

Families hand over predictions; this module turns them into `val_<name>` numbers, so that a
spec's `metric:` means the same thing whichever family it tunes.

Scoring runs at every report of every trial, so it must cost less than the boosting round or
epoch it scores. scikit-learn's functions validate their inputs on every call, and its
one-vs-rest AUC loops over classes: the five metrics together took 39 ms per report on digits
(360 rows, 10 classes), more than an XGBoost round. So the metrics are computed here in
vectorised numpy (the same formulas; `tests/test_metrics.py` checks every one against
scikit-learn to 1e-9), and a report computes only what is needed (`needed`): the spec's metric
plus the cheap ones at every iteration, AUC and F1 only when the spec's metric is one of them, at
a trial's final report (so trials.parquet has every metric of a completed trial) and outside a
search (refit and test scoring: all of them).
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any, Literal

import numpy as np

Mode = Literal["min", "max"]

CLASSIFICATION: dict[str, Mode] = {"accuracy": "max", "error": "min", "log_loss": "min", "auc": "max", "f1": "max"}
REGRESSION: dict[str, Mode] = {"rmse": "min", "mae": "min", "r2": "max"}
# Sorting (AUC) or a confusion count over every class (F1): left out of intermediate reports.
EXPENSIVE = frozenset({"auc", "f1"})
# What a model costs rather than how well it predicts: a second objective beside a score
# (`metric: [{name: val_error}, {name: predict_ms}]`). Measured only when the spec lists one
# (`wants`), and only at a trial's last report (the finished model), so a search on one metric
# never pays for them. A family that can measure them says so in `Family.costs`.
COSTS: dict[str, Mode] = {
    "predict_ms": "min",  # wall milliseconds to predict 1000 validation rows, with the trial's threads
    "model_size": "min",  # the fitted model's size in the family's own unit (tree nodes for forests)
}


def reported(task: str, prefix: str = "val_") -> dict[str, Mode]:
    """Metric names (with their natural mode) a built-in family reports for this task."""
    table = CLASSIFICATION if task == "classification" else REGRESSION
    return {f"{prefix}{name}": mode for name, mode in table.items()}


def needed(trial: Any, final: bool) -> frozenset[str] | None:
    """The metric names (without prefix) one report of `trial` computes; None means all.

    All at a trial's final iteration, and when the trial names no metric (`trial.metric` is None
    or absent: refit, test scoring, a context outside a search); otherwise the cheap ones plus the
    spec's metric (k-fold's `val_auc_std` needs `auc`). A trial stopped early by a scheduler
    therefore has no AUC/F1 in its last report unless the search is on one of them.
    """
    metric = getattr(trial, "metric", None)
    if final or metric is None:
        return None
    cheap = (CLASSIFICATION.keys() | REGRESSION.keys()) - EXPENSIVE
    return frozenset(cheap | {metric.removeprefix("val_").removesuffix("_std")})


def wants(trial: Any, name: str) -> bool:
    """Whether the spec lists the cost metric `name` among its objectives (`trial.objectives`)."""
    return name in (getattr(trial, "objectives", None) or ())


def predict_ms(predict: Callable[[Any], Any], X: Any, trial: Any) -> tuple[Any, dict[str, float]]:
    """`predict(X)`, and `{"predict_ms": ...}` (per 1000 rows) when the spec asks for it, else `{}`."""
    if not wants(trial, "predict_ms"):
        return predict(X), {}
    import time

    start = time.perf_counter()
    out = predict(X)
    return out, {"predict_ms": (time.perf_counter() - start) * 1e6 / max(1, len(X))}


def latency(predict: Callable[[Any], Any], X: Any, trial: Any) -> dict[str, float]:
    """`{"predict_ms": ...}` from one extra `predict(X)`, made only when the spec asks for it; else `{}`."""
    return predict_ms(predict, X, trial)[1] if wants(trial, "predict_ms") else {}


def score(task: str, y_true: np.ndarray, y_pred: np.ndarray, prefix: str = "val_",
          names: Collection[str] | None = None) -> dict[str, float]:
    """Scores predictions: class probabilities (n, k) for classification, values for regression.

    Args:
        names: metrics to compute (without prefix), e.g. `needed(trial, final)`; None: all of the task's.
    """
    y_true = np.asarray(y_true)
    if task == "regression":
        table, args = _REGRESSION, (y_true.astype(float), np.asarray(y_pred, dtype=float))
    else:
        proba = probabilities(y_pred)
        table, args = _CLASSIFICATION, (y_true.astype(int), proba, proba.argmax(axis=1))
    return {f"{prefix}{name}": float(fn(*args)) for name, fn in table.items() if names is None or name in names}


def probabilities(y_pred: np.ndarray) -> np.ndarray:
    """A classifier's output as the (n, k) probabilities every metric reads, and whose argmax is
    the predicted class: P(class 1) alone becomes two columns, then each row is clipped to
    [1e-15, 1] and summed to 1. A saved model predicts labels by the same rule (orchestrator.model)."""
    # Row-major, as a model's predict() gives: a column-major view (LightGBM's validation
    # scores) would sum each row in another order, and a last-bit difference can break a tie
    # between two rows' probabilities, which moves AUC.
    proba = np.ascontiguousarray(y_pred, dtype=float)
    if proba.ndim == 1:  # binary models may give P(class 1) only
        proba = np.column_stack([1 - proba, proba])
    proba = np.clip(proba, 1e-15, 1)
    proba /= proba.sum(axis=1, keepdims=True)
    return proba


# --- classification: (labels, probabilities (n, k), predicted labels) -> value ----------------

def _accuracy(y: np.ndarray, proba: np.ndarray, pred: np.ndarray) -> float:
    return float(np.mean(pred == y))


def _log_loss(y: np.ndarray, proba: np.ndarray, pred: np.ndarray) -> float:
    """scikit-learn's `log_loss(labels=range(k))`: clipped to [eps, 1 - eps] at float64's eps."""
    eps = np.finfo(float).eps
    return float(-np.mean(np.log(np.clip(proba[np.arange(len(y)), y], eps, 1 - eps))))


def _f1(y: np.ndarray, proba: np.ndarray, pred: np.ndarray) -> float:
    """Binary: F1 of class 1. Multiclass: the mean over all k classes (macro), a class with no
    true and no predicted row counting 0 (scikit-learn's `zero_division=0`)."""
    k = proba.shape[1]
    tp = np.bincount(y[pred == y], minlength=k)
    fp = np.bincount(pred, minlength=k) - tp
    fn = np.bincount(y, minlength=k) - tp
    denom = 2 * tp + fp + fn
    f1 = np.divide(2 * tp, denom, out=np.zeros(k), where=denom > 0)
    return float(f1[1]) if k == 2 else float(f1.mean())


def _auc(y: np.ndarray, proba: np.ndarray, pred: np.ndarray) -> float:
    """ROC AUC by the rank-sum (Mann-Whitney) identity, ties counting half, as the ROC curve's
    trapezoids do. Binary: of class 1's probability. Multiclass: one-vs-rest, macro mean. NaN
    when a class is absent from (or is all of) this split: AUC is undefined there, not an error."""
    k = proba.shape[1]
    aucs = []
    for c in [1] if k == 2 else range(k):
        positive = y == c
        n_pos = int(positive.sum())
        n_neg = len(y) - n_pos
        if n_pos == 0 or n_neg == 0:
            return float("nan")
        aucs.append((_average_ranks(proba[:, c])[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
    return float(np.mean(aucs))


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, tied values sharing their mean rank (scipy's `rankdata`, without importing scipy)."""
    _, group, counts = np.unique(values, return_inverse=True, return_counts=True)
    return (np.cumsum(counts) - (counts - 1) / 2)[group]


_CLASSIFICATION: dict[str, Callable[..., float]] = {
    "accuracy": _accuracy,
    "error": lambda y, proba, pred: 1.0 - _accuracy(y, proba, pred),
    "log_loss": _log_loss,
    "auc": _auc,
    "f1": _f1,
}


# --- regression: (targets, predictions) -> value ----------------------------------------------

def _r2(y: np.ndarray, pred: np.ndarray) -> float:
    """scikit-learn's `r2_score`, including its finite answers for a constant target (1 if
    predicted exactly, else 0)."""
    residual = np.sum((y - pred) ** 2)
    total = np.sum((y - y.mean()) ** 2)
    if total == 0:
        return 1.0 if residual == 0 else 0.0
    return float(1 - residual / total)


_REGRESSION: dict[str, Callable[..., float]] = {
    "rmse": lambda y, pred: float(np.sqrt(np.mean((y - pred) ** 2))),
    "mae": lambda y, pred: float(np.mean(np.abs(y - pred))),
    "r2": _r2,
}

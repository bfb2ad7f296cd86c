"""The metric vocabulary against scikit-learn's own functions, the oracle the numpy code replaced.

`sklearn_score` is the former implementation of `orchestrator.families.metrics.score` (scikit-learn calls on
the same clipped, renormalised probabilities): every value must match it to 1e-9, NaN where it
gives NaN, on binary, multiclass (ties, a class absent from the split, certain predictions) and
regression data. Then: which metrics a report computes (`needed`).
"""

from __future__ import annotations

import math
import warnings
from types import SimpleNamespace

import numpy as np
import pytest

from orchestrator.families.metrics import CLASSIFICATION, EXPENSIVE, REGRESSION, needed, reported, score


def sklearn_score(task: str, y_true, y_pred) -> dict[str, float]:
    from sklearn import metrics as m

    if task == "regression":
        out = {"rmse": np.sqrt(m.mean_squared_error(y_true, y_pred)), "mae": m.mean_absolute_error(y_true, y_pred),
               "r2": m.r2_score(y_true, y_pred)}
    else:
        proba = np.asarray(y_pred, dtype=float)
        if proba.ndim == 1:
            proba = np.column_stack([1 - proba, proba])
        proba = np.clip(proba, 1e-15, 1)
        proba /= proba.sum(axis=1, keepdims=True)
        labels = np.arange(proba.shape[1])
        pred = proba.argmax(axis=1)
        binary = proba.shape[1] == 2
        with warnings.catch_warnings():  # "only one class present": AUC is NaN
            warnings.simplefilter("ignore")
            auc = (m.roc_auc_score(y_true, proba[:, 1]) if binary
                   else m.roc_auc_score(y_true, proba, multi_class="ovr", labels=labels))
        out = {"accuracy": m.accuracy_score(y_true, pred), "error": 1 - m.accuracy_score(y_true, pred),
               "log_loss": m.log_loss(y_true, proba, labels=labels),
               "f1": m.f1_score(y_true, pred, average="binary" if binary else "macro",
                                labels=None if binary else labels, zero_division=0),
               "auc": auc}
    return {f"val_{k}": float(v) for k, v in out.items()}


def assert_same(ours: dict, oracle: dict) -> None:
    assert set(ours) == set(oracle)
    for name, want in oracle.items():
        got = ours[name]
        if math.isnan(want):
            assert math.isnan(got), (name, got)
        else:
            assert got == pytest.approx(want, abs=1e-9, rel=1e-9), (name, got, want)


rng = np.random.default_rng(0)


def probabilities(n: int, k: int, decimals: int | None = None) -> np.ndarray:
    p = rng.dirichlet(np.full(k, 0.5), n)
    return np.round(p, decimals) if decimals is not None else p  # rounding makes ties (and zeros)


def labels_from(p: np.ndarray, noise: float) -> np.ndarray:
    """Labels that agree with the probabilities' argmax except for a share `noise`."""
    y = p.argmax(axis=1)
    flip = rng.random(len(y)) < noise
    y[flip] = rng.integers(0, p.shape[1], flip.sum())
    return y


def absent_class(p: np.ndarray) -> np.ndarray:
    y = labels_from(p, 0.4)
    y[y == 3] = 4  # class 3 has a probability column but no row
    return y


def certain(n: int, k: int, drawn: int | None = None) -> np.ndarray:
    """One-hot probabilities; only the first `drawn` classes ever get a row."""
    return np.eye(k)[rng.integers(0, drawn or k, n)]


# name -> (labels from probabilities, probabilities, what the model hands over)
CLASSIFICATION_CASES = {
    "binary, 2 columns": (lambda p: labels_from(p, 0.3), probabilities(300, 2), None),
    "binary, P(class 1) only": (lambda p: labels_from(p, 0.3), probabilities(300, 2), lambda p: p[:, 1]),
    "binary with ties and certain predictions": (lambda p: labels_from(p, 0.3), probabilities(300, 2, 1), None),
    "binary, one class only": (lambda p: np.zeros(len(p), dtype=int), probabilities(50, 2), None),
    "multiclass": (lambda p: labels_from(p, 0.4), probabilities(360, 10), None),
    "multiclass with ties": (lambda p: labels_from(p, 0.4), probabilities(360, 10, 2), None),
    "multiclass, a class absent from the split": (absent_class, probabilities(200, 5), None),
    "multiclass, certain and right": (lambda p: p.argmax(axis=1), certain(80, 4), None),
    "multiclass, certain and sometimes wrong": (lambda p: labels_from(p, 0.2), certain(80, 4), None),
    "multiclass, a class neither true nor predicted": (lambda p: p.argmax(axis=1), certain(80, 4, drawn=3), None),
}


def classification_case(case: str) -> tuple[np.ndarray, np.ndarray]:
    to_labels, p, handed = CLASSIFICATION_CASES[case]
    return to_labels(p), (handed or (lambda q: q))(p)


@pytest.mark.parametrize("case", list(CLASSIFICATION_CASES))
def test_classification_metrics_equal_scikit_learns(case):
    y, p = classification_case(case)
    assert_same(score("classification", y, p), sklearn_score("classification", y, p))


def test_a_class_absent_from_the_split_gives_nan_auc_and_counts_zero_in_macro_f1():
    y, p = classification_case("multiclass, a class absent from the split")
    out = score("classification", y, p)
    from sklearn.metrics import f1_score

    assert math.isnan(out["val_auc"])
    # Class 3 is never true: its F1 is 0 and it still counts in the mean over the 5 classes.
    others = f1_score(y, p.argmax(axis=1), labels=[0, 1, 2, 4], average="macro", zero_division=0)
    assert out["val_f1"] == pytest.approx(others * 4 / 5, abs=1e-12)


@pytest.mark.parametrize("case", ["plain", "constant target", "constant target predicted exactly"])
def test_regression_metrics_equal_scikit_learns(case):
    y = rng.normal(100, 30, 250)
    pred = y + rng.normal(0, 10, 250)
    if case != "plain":
        y = np.full(250, 7.0)
        pred = y.copy() if case.endswith("exactly") else pred
    assert_same(score("regression", y, pred), sklearn_score("regression", y, pred))


def test_score_covers_the_vocabulary_and_computes_only_what_is_asked():
    y, p = classification_case("multiclass")
    assert set(score("classification", y, p)) == set(reported("classification"))
    assert set(score("regression", y.astype(float), p[:, 0])) == set(reported("regression"))
    assert set(score("classification", y, p, names={"error", "rmse"})) == {"val_error"}
    assert set(score("classification", y, p, prefix="test_", names={"auc"})) == {"test_auc"}


@pytest.mark.parametrize("metric, final, expected", [
    ("val_error", False, {"accuracy", "error", "log_loss", "rmse", "mae", "r2"}),
    ("val_rmse", False, {"accuracy", "error", "log_loss", "rmse", "mae", "r2"}),
    ("val_auc", False, {"accuracy", "error", "log_loss", "rmse", "mae", "r2", "auc"}),
    ("val_f1_std", False, {"accuracy", "error", "log_loss", "rmse", "mae", "r2", "f1"}),
    ("val_error", True, None),
    (None, False, None),
])
def test_a_report_computes_the_specs_metric_and_the_cheap_ones_and_everything_at_the_end(metric, final, expected):
    assert needed(SimpleNamespace(metric=metric), final) == expected
    assert EXPENSIVE <= CLASSIFICATION.keys() and not EXPENSIVE & REGRESSION.keys()


def test_a_context_without_a_metric_attribute_gets_every_metric():
    """Refit and test scoring (and trial contexts from before `TrialContext.metric`) score everything."""
    assert needed(SimpleNamespace(), final=False) is None

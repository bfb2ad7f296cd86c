"""scikit-learn: a random forest (`random_forest`), an SVM (`svm`), and any estimator named by
import path (`sklearn`).

`random_forest` grows one tree per reported iteration (`warm_start`) and averages the trees'
predictions as it goes, so ASHA can stop a weak forest early, PBT can change its parameters
between trees, and a checkpoint resumes exactly: scikit-learn draws each tree's seed from the
forest's `random_state` in order, so a forest grown tree by tree equals one fitted at once.
Growing one tree per call uses one thread whatever the trial's CPUs.

`svm` and `sklearn` fit once and report once: there is nothing to stop early or resume half-way,
so they take no checkpoints (PBT refuses them).
"""

from __future__ import annotations

import importlib
import warnings
from typing import Any

from orchestrator.families.contract import Family
from orchestrator.families.metrics import latency, needed, predict_ms, score, wants

RF_SPACE = {
    "n_estimators": 100,
    "max_depth": {"randint": [2, 32]},
    "min_samples_split": {"randint": [2, 20]},
    "min_samples_leaf": {"randint": [1, 10]},
    "max_features": {"uniform": [0.1, 1.0]},  # fraction of features per split (sqrt(p)/p is sklearn's default)
}

SVM_SPACE = {
    "C": {"loguniform": [1e-3, 1e3]},
    "kernel": {"choice": ["linear", "rbf", "poly"]},
    "gamma": {"loguniform": [1e-4, 10.0], "when": {"kernel": "rbf"}},  # a spec may also write gamma: scale
    "degree": {"randint": [2, 5], "when": {"kernel": "poly"}},
}


def _predictions(model, X, data) -> Any:
    """Class probabilities with one column per class of the data (for any classifier), or values."""
    import numpy as np

    if data.task == "regression":
        return model.predict(X)
    out = np.zeros((len(X), data.n_classes))
    classes = np.asarray(model.classes_, dtype=int)
    if hasattr(model, "predict_proba"):
        out[:, classes] = model.predict_proba(X)
    else:  # e.g. LinearSVC: a hard prediction is a one-hot probability
        out[np.arange(len(X)), model.predict(X).astype(int)] = 1.0
    return out


# --- random forest ----------------------------------------------------------------------------

def train_forest(config, data, trial):
    import numpy as np
    from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor

    params = dict(config)
    trees = int(params.pop("n_estimators", 100))
    state = trial.restore()
    if state:
        forest, total = state["forest"], state["total"]
    else:
        cls = RandomForestClassifier if data.task == "classification" else RandomForestRegressor
        forest = cls(n_estimators=0, warm_start=True, random_state=trial.seed, n_jobs=1)
        shape = (len(data.X_valid), data.n_classes) if data.task == "classification" else len(data.X_valid)
        total = np.zeros(shape)
    forest.set_params(**params)  # the config's values, also after a restore (PBT may have changed them)

    for k in range(len(forest.estimators_) if state else 0, trees):
        forest.set_params(n_estimators=k + 1)
        forest.fit(data.X_train, data.y_train)
        tree = forest.estimators_[-1]
        if data.task == "classification":
            total[:, np.asarray(forest.classes_, dtype=int)] += tree.predict_proba(data.X_valid)
        else:
            total += tree.predict(data.X_valid)
        ckpt = {"forest": forest, "total": total} if trial.checkpointing else None
        final = k + 1 == trees
        metrics = score(data.task, data.y_valid, total / (k + 1), names=needed(trial, final=final))
        trial.report({**metrics, **_forest_costs(forest, data, trial)} if final else metrics, state=ckpt)
    trial.keep(forest)  # its predict_proba sums the trees in this order: the scores above, exactly


def _forest_costs(forest, data, trial) -> dict[str, float]:
    """The finished forest's cost metrics the spec asks for: a whole predict timed, its tree nodes."""
    costs = latency(lambda X: _predictions(forest, X, data), data.X_valid, trial)
    if wants(trial, "model_size"):
        costs["model_size"] = float(sum(tree.tree_.node_count for tree in forest.estimators_))
    return costs


# --- SVM --------------------------------------------------------------------------------------

def train_svm(config, data, trial):
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.compose import TransformedTargetRegressor
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC, SVR

    params = dict(config)  # gamma/degree are absent when their kernel is not chosen: SVC's defaults apply
    if data.task == "classification":
        # Probabilities (for log_loss, auc) by Platt scaling on 3-fold decision values; the final SVC
        # is fitted on all training rows. This replaces SVC(probability=True), deprecated in 1.9.
        svm = CalibratedClassifierCV(SVC(random_state=trial.seed, **params), method="sigmoid", cv=3, ensemble=False)
    else:
        svm = SVR(**params)
    model = make_pipeline(StandardScaler(), svm)
    if data.task == "regression":  # C and epsilon act in target units: standardise it, so one range fits all data
        model = TransformedTargetRegressor(regressor=model, transformer=StandardScaler())
    model.fit(data.X_train, data.y_train)
    pred, costs = predict_ms(lambda X: _predictions(model, X, data), data.X_valid, trial)
    trial.report({**score(data.task, data.y_valid, pred), **costs})
    trial.keep(model)


# --- any estimator by import path -------------------------------------------------------------

def load_estimator(path: Any):
    """`sklearn.linear_model.LogisticRegression` (or `package.module:Class`) -> the class."""
    if not isinstance(path, str) or not path:
        raise ValueError("family sklearn needs the estimator's import path in the space, e.g. "
                         "space: {estimator: sklearn.linear_model.LogisticRegression, C: {loguniform: [0.01, 10]}}")
    module, sep, name = path.rpartition(":") if ":" in path else path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ValueError(f"space.estimator: cannot import {path!r} ({exc}); give a class's full path, "
                         f"e.g. sklearn.ensemble.ExtraTreesClassifier") from None
    return cls


def train_estimator(config, data, trial):
    from sklearn.base import is_classifier, is_regressor
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    params = dict(config)
    cls = load_estimator(params.pop("estimator", None))
    scale = bool(params.pop("scale", False))
    fits = is_classifier if data.task == "classification" else is_regressor
    estimator = cls()
    if not fits(estimator):
        kind = 'classifier' if data.task == 'classification' else 'regressor'
        raise ValueError(f"space.estimator: {cls.__name__} is not a {kind}, "
                         f"but the data's task is {data.task}")
    accepted = estimator.get_params()
    defaults = {"n_jobs": trial.cpus, "random_state": trial.seed, "thread_count": trial.cpus}
    params = {**{k: v for k, v in defaults.items() if k in accepted}, **params}
    estimator.set_params(**params)
    model = make_pipeline(StandardScaler(), estimator) if scale else estimator
    with warnings.catch_warnings():  # we pass n_jobs to every estimator that has it; some ignore it now
        warnings.filterwarnings("ignore", message=".*'n_jobs' has no effect", category=FutureWarning)
        model.fit(data.X_train, data.y_train)
    pred, costs = predict_ms(lambda X: _predictions(model, X, data), data.X_valid, trial)
    trial.report({**score(data.task, data.y_valid, pred), **costs})
    trial.keep(model)


# Each keeps its fitted estimator, which orchestrator.model.formats ("sklearn") predicts with `_predictions`' rule.
RANDOM_FOREST = Family(name="random_forest", train=train_forest, default_space=RF_SPACE,
                       iterations_param="n_estimators", checkpoints=True, costs=("predict_ms", "model_size"),
                       model_format="sklearn", library="sklearn.ensemble")
SVM = Family(name="svm", train=train_svm, default_space=SVM_SPACE, costs=("predict_ms",), model_format="sklearn",
             library="sklearn.svm")
ESTIMATOR = Family(name="sklearn", train=train_estimator, default_space={}, costs=("predict_ms",),
                   model_format="sklearn")

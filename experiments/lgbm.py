"""LightGBM: one boosting round per reported iteration, so schedulers can stop weak trials early.

Every other key in the config is passed to LightGBM as a parameter, so a spec can tune any of
them (`max_bin`, `extra_trees`, ...). Restoring a checkpoint rebuilds the exact model; a config
that bags rows (`bagging_fraction` < 1) then draws a fresh random stream for later rounds,
because LightGBM does not expose its bagging generator's state (feature sampling is reseeded per
round below, so `feature_fraction` alone resumes exactly).

Each round is scored from LightGBM's own validation scores, which it updates with the newest
tree only (the validation set is passed as `valid_sets`; `feval` hands over its predictions): O(rows)
per round. `Booster.predict(num_iteration=n)` at every round cost O(rows x rounds), as much as the
training itself by round 60 on digits. After a restore LightGBM starts those scores from the saved
model's predictions, so a resumed trial reports what an uninterrupted one does (tests/test_families.py).
"""

from __future__ import annotations

from orchestrator.families.contract import Family
from orchestrator.families.metrics import needed, score

DEFAULT_SPACE = {
    "n_estimators": 100,
    "learning_rate": {"loguniform": [0.001, 0.3]},
    "num_leaves": {"lograndint": [4, 128]},
    "max_depth": {"randint": [2, 12]},
    "min_data_in_leaf": {"lograndint": [2, 100]},
    "bagging_fraction": {"uniform": [0.5, 1.0]},  # LightGBM's subsample
    "bagging_freq": 1,  # bagging is off at 0, whatever bagging_fraction says
    "feature_fraction": {"uniform": [0.5, 1.0]},  # colsample_bytree
    "lambda_l1": {"loguniform": [1e-8, 1.0]},
    "lambda_l2": {"loguniform": [1e-8, 10.0]},
}


def objective(data) -> dict:
    if data.task == "regression":
        return {"objective": "regression"}
    if data.n_classes > 2:
        return {"objective": "multiclass", "num_class": data.n_classes}
    return {"objective": "binary"}


def train(config, data, trial):
    import lightgbm as lgb

    params = dict(config)
    rounds = int(params.pop("n_estimators", 100))
    params.update(objective(data))
    # Threads = the CPUs Ray gave this trial, never more; the GPU Ray gave it, if any.
    params.update(num_threads=trial.cpus, seed=trial.seed, deterministic=True, force_row_wise=True, verbose=-1,
                  device_type="cuda" if trial.device == "cuda" else "cpu")

    state = trial.restore()
    init = lgb.Booster(model_str=state["model"]) if state else None
    done = state["rounds"] if state else 0

    def reseed(env):
        # A per-round seed makes feature sampling a function of the round, not of the history.
        env.model.reset_parameter({"feature_fraction_seed": trial.seed * 100_003 + env.iteration})

    reseed.before_iteration = True

    latest = {}

    def hold(pred, dataset):
        # LightGBM's buffer, rewritten next round: scored by `report` in this round, never kept.
        latest["pred"] = pred
        return []

    def report(env):
        n = env.iteration + 1  # counts the restored rounds too
        ckpt = {"model": env.model.model_to_string(num_iteration=n), "rounds": n} if trial.checkpointing else None
        names = needed(trial, final=n == rounds)
        trial.report(score(data.task, data.y_valid, latest.pop("pred"), names=names), state=ckpt)

    if rounds <= done:
        trial.keep(init)
        return
    params.setdefault("metric", "None")  # LightGBM's own metrics on the validation set: not used
    train_set = lgb.Dataset(data.X_train, data.y_train)
    try:
        booster = lgb.train(params, train_set, rounds - done, init_model=init, callbacks=[reseed, report],
                            valid_sets=[lgb.Dataset(data.X_valid, data.y_valid, reference=train_set)], feval=hold)
    except lgb.basic.LightGBMError as exc:
        if "not enabled in this build" in str(exc) and trial.device == "cuda":
            raise RuntimeError("this LightGBM was built without CUDA (the PyPI wheel is): build it with "
                               "-DUSE_CUDA=1, or run LightGBM trials with resources.gpu: 0") from exc
        raise
    trial.keep(booster)  # the refit saves it (orchestrator.model.formats, "lightgbm")


FAMILY = Family(name="lightgbm", train=train, default_space=DEFAULT_SPACE, iterations_param="n_estimators",
                checkpoints=True, model_format="lightgbm", library="lightgbm")

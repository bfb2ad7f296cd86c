"""XGBoost: one boosting round per reported iteration, so schedulers can stop weak trials early.

Restoring a checkpoint rebuilds the exact model; a config that samples rows or columns
(`subsample`, `colsample_*` < 1) then draws a fresh random stream for later rounds, because
XGBoost does not expose its sampler's state. Deterministic configs resume exactly.

Scoring every round costs O(validation rows), not O(rows x rounds): predicting the same DMatrix
with all trees so far hits XGBoost's prediction cache, which adds only the trees of rounds not yet
in it (measured on digits: 0.1 ms at round 200, 0.4 ms at round 1). DART is the exception: it
reweights earlier trees every round, so its prediction, like its training, grows with the rounds.
`tests/test_families.py` checks each round's scores against that round's model predicting afresh.
"""

from __future__ import annotations

from orchestrator.families.contract import Family
from orchestrator.families.metrics import latency, needed, score, wants

DEFAULT_SPACE = {
    "n_estimators": 100,
    "learning_rate": {"loguniform": [0.001, 0.3]},
    "max_depth": {"randint": [2, 10]},
    "min_child_weight": {"loguniform": [0.1, 20.0]},
    "subsample": {"uniform": [0.5, 1.0]},
    "colsample_bytree": {"uniform": [0.5, 1.0]},
    "reg_alpha": {"loguniform": [1e-8, 1.0]},
    "reg_lambda": {"loguniform": [1e-8, 10.0]},
}


# XGBoost's booster parameters (https://xgboost.readthedocs.io/en/stable/parameter.html) a spec may
# tune beyond DEFAULT_SPACE; any other name is refused at validation (XGBoost would ignore it).
PARAMS = ("eta", "gamma", "min_split_loss", "max_delta_step", "sampling_method", "colsample_bylevel",
          "colsample_bynode", "lambda", "alpha", "tree_method", "scale_pos_weight", "grow_policy", "max_leaves",
          "max_bin", "num_parallel_tree", "monotone_constraints", "interaction_constraints", "multi_strategy",
          "max_cached_hist_node", "max_cat_to_onehot", "max_cat_threshold", "booster", "sample_type",
          "normalize_type", "rate_drop", "one_drop", "skip_drop", "updater", "feature_selector", "top_k",
          "base_score", "eval_metric")


def train(config, data, trial):
    import xgboost as xgb

    params = dict(config)
    rounds = int(params.pop("n_estimators", 100))
    if data.task == "regression":
        params["objective"] = "reg:squarederror"
    elif data.n_classes > 2:
        params.update(objective="multi:softprob", num_class=data.n_classes)
    else:
        params["objective"] = "binary:logistic"
    # Threads = the CPUs Ray gave this trial, never more; the GPU Ray gave it, if any.
    params.update(nthread=trial.cpus, device=trial.device, seed=trial.seed, tree_method="hist", verbosity=0)
    bins = int(params.get("max_bin", 256))  # XGBoost's default; both matrices and the booster agree
    dtrain, dvalid = _matrices(xgb, data, bins, trial.cpus)

    state = trial.restore()
    booster = xgb.Booster(model_file=bytearray(state["model"])) if state else None
    done = state["rounds"] if state else 0

    class Report(xgb.callback.TrainingCallback):
        def after_iteration(self, model, epoch, evals_log):
            n = done + epoch + 1
            pred = model.predict(dvalid, iteration_range=(0, n))  # cached: see the module docstring
            ckpt = {"model": bytes(model.save_raw()), "rounds": n} if trial.checkpointing else None
            metrics = score(data.task, data.y_valid, pred, names=needed(trial, final=n == rounds))
            trial.report({**metrics, **_costs(model, data, trial)} if n == rounds else metrics, state=ckpt)
            return False

    booster = xgb.train(params, dtrain, rounds - done, xgb_model=booster, callbacks=[Report()], verbose_eval=False)
    trial.keep(booster)  # the refit saves it (orchestrator.model.formats, "xgboost")


# The last trial's matrices, kept by this worker process: (the arrays they were built from, (dtrain, dvalid)).
_kept: dict[tuple, tuple] = {}


def _matrices(xgb, data, bins: int, nthread: int):
    """The trial's train and valid matrices, quantised into the `hist` method's own input
    (QuantileDMatrix) instead of a DMatrix copy that the first round then indexes besides: on
    1M x 50 rows a trial held 117 MB instead of 406 MB (benchmarks/data_scale.py); the same trees
    and predictions (splits fall on the same bin edges).

    A reused trial worker (Ray Tune's `reuse_actors`) gets the same data every trial, read-only
    views of the object store's one copy (orchestrator.trial.trainable): its matrices are kept for
    the next trial with the same bins rather than built again (6.8 s of a 14 s trial on 1M x 50
    rows). The kept entry holds those views, so the object stays pinned and an address seen again
    is the same data. Arrays of this process's own (a refit, a fold) are built every time."""
    arrays = (data.X_train, data.y_train, data.X_valid, data.y_valid)
    shared = not any(a.flags.writeable for a in arrays)
    key = (bins, *((a.__array_interface__["data"][0], a.shape, a.strides, a.dtype.str) for a in arrays))
    if shared and key in _kept:
        return _kept[key][1]
    dtrain = xgb.QuantileDMatrix(data.X_train, label=data.y_train, nthread=nthread, max_bin=bins)
    dvalid = xgb.QuantileDMatrix(data.X_valid, label=data.y_valid, nthread=nthread, max_bin=bins, ref=dtrain)
    _kept.clear()  # one entry: what a trial holds anyway
    if shared:
        _kept[key] = (arrays, (dtrain, dvalid))
    return dtrain, dvalid


def _costs(booster, data, trial) -> dict[str, float]:
    """The finished booster's cost metrics the spec asks for: predicting fresh rows (a new DMatrix,
    so nothing cached from training helps), and its tree nodes."""
    import xgboost as xgb

    costs = latency(lambda X: booster.predict(xgb.DMatrix(X, nthread=trial.cpus)), data.X_valid, trial)
    if wants(trial, "model_size"):
        costs["model_size"] = float(sum(len(tree.splitlines()) for tree in booster.get_dump()))
    return costs


FAMILY = Family(name="xgboost", train=train, default_space=DEFAULT_SPACE, iterations_param="n_estimators",
                checkpoints=True, params=PARAMS, costs=("predict_ms", "model_size"), model_format="xgboost",
                library="xgboost")

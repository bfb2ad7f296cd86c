"""The anchor for `benchmarks/vs_optuna.py`: the search a user would otherwise write with Optuna.

One plain `study.optimize(objective, n_trials, n_jobs)` with Optuna's default `TPESampler`, each
trial training the model to the end with the library's own call (one thread per trial) and
scoring it once. Only two things come from hpo-orchestrator, so that both sides search the same
thing: the spec's data split (`orchestrator.spec.data`, no Ray) and its space, sampled through the same
define-by-run function the `optuna-tpe` searcher gives Optuna. Prints one JSON line.

    PYTHONPATH=. .venv/bin/python benchmarks/optuna_standalone.py SPEC.yaml --trials 30 --jobs 2
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def xgboost(config: dict, data, seed: int) -> float:
    import xgboost as xgb

    params = dict(config)
    rounds = int(params.pop("n_estimators"))
    params.update(objective="multi:softprob", num_class=data.n_classes, nthread=1, seed=seed, tree_method="hist",
                  verbosity=0)
    booster = xgb.train(params, xgb.DMatrix(data.X_train, label=data.y_train, nthread=1), rounds)
    return error(data.y_valid, booster.predict(xgb.DMatrix(data.X_valid, nthread=1)))


def lightgbm(config: dict, data, seed: int) -> float:
    import lightgbm as lgb

    params = dict(config)
    rounds = int(params.pop("n_estimators"))
    params.update(objective="multiclass", num_class=data.n_classes, num_threads=1, seed=seed, deterministic=True,
                  force_row_wise=True, verbose=-1)
    booster = lgb.train(params, lgb.Dataset(data.X_train, data.y_train), rounds)
    return error(data.y_valid, booster.predict(data.X_valid))


def torch_mlp(config: dict, data, seed: int) -> float:
    """Adam at a constant learning rate, as the benchmark's spec fixes them; same model builder."""
    import torch

    from experiments.torch_nets import build_mlp, make_optimizer

    torch.set_num_threads(1)
    mean, std = data.X_train.mean(axis=0), data.X_train.std(axis=0) + 1e-8
    X = torch.tensor((data.X_train - mean) / std, dtype=torch.float32)
    y = torch.tensor(data.y_train, dtype=torch.long)
    torch.manual_seed(seed)
    model = build_mlp(config, X.shape[1], data.n_classes)
    optimizer = make_optimizer(config, model.parameters())
    loss_fn = torch.nn.CrossEntropyLoss()
    for _ in range(int(config["epochs"])):
        model.train()
        for idx in torch.randperm(len(X)).split(int(config["batch_size"])):
            optimizer.zero_grad(set_to_none=True)
            loss_fn(model(X[idx]), y[idx]).backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        logits = model(torch.tensor((data.X_valid - mean) / std, dtype=torch.float32))
    return error(data.y_valid, logits.numpy())


def error(y_true: np.ndarray, scores: np.ndarray) -> float:
    return float(np.mean(scores.argmax(axis=1) != y_true))


TRAIN = {"xgboost": xgboost, "lightgbm": lightgbm, "torch_mlp": torch_mlp}


def main() -> None:
    start = time.perf_counter()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("spec")
    p.add_argument("--trials", type=int, required=True)
    p.add_argument("--jobs", type=int, required=True)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    import optuna

    from orchestrator.search.searchers import OptunaDefineByRun
    from orchestrator.spec.data import load
    from orchestrator.spec.load import load_spec

    exp = load_spec(args.spec)
    if exp.metric != "val_error" or exp.family.name not in TRAIN:
        raise SystemExit(f"this anchor scores val_error for {', '.join(TRAIN)}; got {exp.metric} for {exp.family.name}")
    data = load(exp.spec.data, exp.base_dir)
    sample, train = OptunaDefineByRun(exp.params), TRAIN[exp.family.name]

    def objective(trial) -> float:
        constants = sample(trial) or {}
        return train({**trial.params, **constants}, data, args.seed)

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=args.seed))
    setup = time.perf_counter() - start
    study.optimize(objective, n_trials=args.trials, n_jobs=args.jobs)
    trial_s = np.mean([(t.datetime_complete - t.datetime_start).total_seconds() for t in study.trials])
    print(json.dumps({"best": study.best_value, "trials": len(study.trials), "setup_s": setup,
                      "trial_s": float(trial_s), "in_process_s": time.perf_counter() - start}))


if __name__ == "__main__":
    main()

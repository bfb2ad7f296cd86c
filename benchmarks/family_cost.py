"""What one trial of each built-in family costs in-process, without Ray, against the library alone.

Each family trains one fixed config on digits through a trial context that discards reports (its
`metric` is val_error, as in a search), median of `--repeat` runs; next to it, the same model
trained with the library's own call and scored once, as a standalone script would. The
difference is what the family adds per trial: scoring every round/epoch and the per-round
predictions. Run it with another checkout on PYTHONPATH to compare versions:

    flock /tmp/hpo-cpu.lock env PYTHONPATH=$PWD .venv/bin/python benchmarks/family_cost.py
    flock /tmp/hpo-cpu.lock env PYTHONPATH=/tmp/hpo-5d291cd .venv/bin/python benchmarks/family_cost.py  # 5d291cd's code
"""

from __future__ import annotations

import argparse
import statistics
import time

from optuna_standalone import TRAIN

CONFIGS = {
    "xgboost": {"n_estimators": 60, "learning_rate": 0.1, "max_depth": 6, "subsample": 0.8, "colsample_bytree": 0.8},
    "lightgbm": {"n_estimators": 60, "learning_rate": 0.1, "num_leaves": 31, "feature_fraction": 0.8,
                 "bagging_fraction": 0.8, "bagging_freq": 1},
    "torch_mlp": {"epochs": 20, "learning_rate": 1e-3, "batch_size": 32, "optimizer": "adam", "lr_schedule": "constant",
                  "grad_clip": 0.0, "activation": "relu", "depth": 2, "width": 128, "dropout": 0.1,
                  "weight_decay": 1e-5},
}


class Discard:
    """A trial context outside Ray that throws reports away."""

    seed, cpus, gpus, gpu_ids, device, checkpointing, metric = 0, 1, 0.0, (), "cpu", False, "val_error"
    reports = 0

    def report(self, metrics, state=None) -> None:
        self.reports += 1

    def restore(self) -> None:
        return None

    def keep(self, model) -> None:
        pass


def seconds(fn, repeat: int) -> float:
    fn()  # warm-up: imports, first allocations
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeat", type=int, default=5)
    args = p.parse_args()

    import orchestrator
    from orchestrator.families.registry import resolve
    from orchestrator.spec.data import DataSpec, load

    data = load(DataSpec(name="digits"))
    print(f"orchestrator from {orchestrator.__file__}; digits, 1 thread, median of {args.repeat}")
    print(f"{'family':10s} {'reports':>7s} {'family s':>9s} {'library alone s':>15s} {'added ms/report':>15s}")
    for name, config in CONFIGS.items():
        ctx = Discard()
        resolve(name).train(dict(config), data, ctx)
        family = seconds(lambda n=name, c=config: resolve(n).train(dict(c), data, Discard()), args.repeat)
        alone = seconds(lambda n=name, c=config: TRAIN[n](dict(c), data, 0), args.repeat)
        print(f"{name:10s} {ctx.reports:7d} {family:9.3f} {alone:15.3f} {(family - alone) / ctx.reports * 1000:15.2f}")


if __name__ == "__main__":
    main()

"""What saving the refit's model costs: per family its size, the time to save (dump and the check
that the reloaded files reproduce the test score), to write the folder, and to load it back in a
fresh process and predict; then what saving adds to `make run`.

Part 1 trains each family once on digits as the refit trains it (train+valid, no Ray), then times
`orchestrator.model.package.package` (dump + check), `write` and, in a fresh Python process whose
libraries are already imported, `load_model` and one `predict_proba` of the 360 test rows
(median of `--repeat`). Part 2 runs experiments/xgboost_digits.yaml (`make run`'s spec) `--runs`
times with saving and as often without (the refit still runs; only keeping the model is switched
off), alternating, and reports the median wall time of each and the save's own seconds as
experiment.json records them.

    flock /tmp/hpo-cpu.lock .venv/bin/python benchmarks/model_io.py               # both parts
    flock /tmp/hpo-cpu.lock .venv/bin/python benchmarks/model_io.py --runs 0      # part 1 only
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CONFIGS = {  # the families' middle-of-the-road configs on digits (family_cost.py's for the first three)
    "xgboost": {"n_estimators": 60, "learning_rate": 0.1, "max_depth": 6, "subsample": 0.8, "colsample_bytree": 0.8},
    "lightgbm": {"n_estimators": 60, "learning_rate": 0.1, "num_leaves": 31, "feature_fraction": 0.8,
                 "bagging_fraction": 0.8, "bagging_freq": 1},
    "torch_mlp": {"epochs": 20, "learning_rate": 1e-3, "batch_size": 32, "optimizer": "adam", "lr_schedule": "constant",
                  "grad_clip": 0.0, "activation": "relu", "depth": 2, "width": 128, "dropout": 0.1,
                  "weight_decay": 1e-5},
    "torch_cnn": {"epochs": 10, "learning_rate": 1e-3, "batch_size": 32, "optimizer": "adam", "conv_layers": 2,
                  "filters": 16, "kernel_size": 3, "pooling": "max", "width": 64, "dropout": 0.1},
    "random_forest": {"n_estimators": 100, "max_depth": 16, "max_features": 0.3},
    "svm": {"C": 10.0, "kernel": "rbf", "gamma": 0.001},
    "sklearn": {"estimator": "sklearn.linear_model.LogisticRegression", "scale": True, "max_iter": 1000},
}

LOAD = """
import json, statistics, sys, time
import orchestrator.model.load as L
import xgboost, lightgbm, torch, sklearn, skops.io  # imported before the clock starts
folder, repeat = sys.argv[1], int(sys.argv[2])
X, _ = L.load_test_split(folder)
loads, predicts = [], []
for _ in range(repeat):
    t0 = time.perf_counter(); model = L.load_model(folder); t1 = time.perf_counter()
    model.predict_proba(X); t2 = time.perf_counter()
    loads.append(t1 - t0); predicts.append(t2 - t1)
print(json.dumps([statistics.median(loads), statistics.median(predicts)]))
"""


class Keep:
    """The refit's trial context, reduced: keeps the last report and the model."""

    seed, cpus, gpus, gpu_ids, device, checkpointing, metric = 0, 1, 0.0, (), "cpu", False, None

    def report(self, metrics, state=None) -> None:
        self.last = metrics

    def restore(self) -> None:
        return None

    def keep(self, model) -> None:
        self.model = model


def part1(repeat: int) -> None:
    from orchestrator.families.registry import resolve
    from orchestrator.model import card as cards
    from orchestrator.model.formats import Target
    from orchestrator.model.package import package, write
    from orchestrator.spec.data import DataSpec, load
    from orchestrator.spec.evaluation import refit_data

    spec = DataSpec(name="digits")
    data = load(spec)
    print(f"{'family':14} {'format':9} {'size':>9} {'dump ms':>8} {'check ms':>9} {'write ms':>9} "
          f"{'load ms':>8} {'predict ms':>10} reproduced")
    for name, config in CONFIGS.items():
        family = resolve(name)
        trial = Keep()
        family.train(dict(config), refit_data(data), trial)
        test = {f"test_{k.removeprefix('val_')}": v for k, v in trial.last.items()}
        target = Target(data.task, data.n_classes)
        packs = [package(family.model_format, trial.model, data.X_test, data.y_test, target, test)
                 for _ in range(repeat)]
        with tempfile.TemporaryDirectory() as tmp:
            writes = []
            for i in range(repeat):
                card = cards.build(family=name, format=family.model_format, files=packs[0].files, trial_id="t",
                                   config=config, training={}, metric={}, valid_score=None, run={}, versions={},
                                   created_at="", task=data.task, target=data.target, classes=list(data.classes),
                                   features=[c.describe() for c in data.columns],
                                   data={"source": spec.model_dump(mode="json")})
                t0 = time.perf_counter()
                write(Path(tmp) / f"m{i}", packs[0].files, card)
                writes.append(time.perf_counter() - t0)
            out = subprocess.run([sys.executable, "-c", LOAD, str(Path(tmp) / "m0"), str(repeat)], cwd=ROOT,
                                 capture_output=True, text=True, check=True)
            load_s, predict_s = json.loads(out.stdout.strip().splitlines()[-1])
        dump, check = (statistics.median(p.seconds[key] for p in packs) * 1000 for key in ("dump", "check"))
        print(f"{name:14} {family.model_format:9} {packs[0].size / 1e3:7.0f}kB {dump:8.1f} {check:9.1f} "
              f"{statistics.median(writes) * 1000:9.1f} {load_s * 1000:8.1f} {predict_s * 1000:10.1f} "
              f"{all(p.reproduced for p in packs)}")


def part2(runs: int) -> None:
    from orchestrator.run import lifecycle, refit, take_home
    from orchestrator.run.driver import run
    from orchestrator.spec.load import load_spec

    conclude, save = refit.conclude, take_home.save_run_model
    walls: dict[str, list[float]] = {"with saving": [], "without": []}
    recorded = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(runs):
            for label in walls:
                if label == "without":  # the refit as before this feature: nothing kept, nothing saved
                    refit.conclude = lambda *a, keep=False, **k: conclude(*a, keep=False, **k)
                    take_home.save_run_model = lambda *a, **k: {"skipped": "benchmark"}
                else:
                    refit.conclude, take_home.save_run_model = conclude, save
                lifecycle.refit, lifecycle.take_home = refit, take_home
                exp = load_spec(ROOT / "experiments" / "xgboost_digits.yaml")
                t0 = time.perf_counter()
                summary = run(exp, Path(tmp) / f"{label}-{i}", quiet=True)
                walls[label].append(time.perf_counter() - t0)
                if label == "with saving":
                    recorded.append(summary.model)
    refit.conclude, take_home.save_run_model = conclude, save
    for label, w in walls.items():
        each = ", ".join(f"{x:.2f}" for x in w)
        print(f"make run's spec {label:12}: median {statistics.median(w):.2f} s over {len(w)} runs ({each})")
    total = [sum(m["seconds"].values()) for m in recorded]
    print(f"saving as recorded (dump + check in the refit's task, write on the driver): median "
          f"{statistics.median(total) * 1000:.0f} ms, model {recorded[0]['bytes'] / 1e3:.0f} kB; "
          f"{recorded[0]['seconds']}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=5, help="timings per family (median)")
    p.add_argument("--runs", type=int, default=3, help="make-run runs with and without saving (0: skip part 2)")
    args = p.parse_args()
    part1(args.repeat)
    if args.runs:
        part2(args.runs)


if __name__ == "__main__":
    main()

"""`hpo run` against standalone Optuna on the same search, whole processes, side by side.

For each case one spec is written; both sides read it: `hpo run SPEC` (its own process, its own
local Ray) and `benchmarks/optuna_standalone.py SPEC` (its own process: `study.optimize` with
Optuna's default TPESampler and `n_jobs` = the spec's concurrency, the same data split and
space). Same trials, rounds/epochs, 1 thread per trial, FIFO. The hpo side runs the spec's
default `optuna-tpe` options, whatever they are.

Columns: whole-process wall times and their ratio; best val_error of each; the hpo run split into
start-up (process start to the first trial's start, from trials.parquet), search (first start to
last end) and tail (last end to exit, refit + test score included); the ratio without each
side's start-up (standalone: imports, data, until `optimize` starts); and CPU utilisation of the
hpo run, busy trial-seconds sum(wall_s * cpus) over (wall * CPUs), for the whole process and for
the search span.

    flock /tmp/hpo-cpu.lock env PYTHONPATH=$PWD .venv/bin/python benchmarks/vs_optuna.py
    flock /tmp/hpo-cpu.lock env PYTHONPATH=$PWD .venv/bin/python benchmarks/vs_optuna.py --case xgboost \
        --hpo-root /tmp/hpo-5d291cd      # the hpo side from another checkout (before/after)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

COMMON = {
    "data": {"source": "sklearn", "name": "digits", "test_size": 0.2, "valid_size": 0.2, "seed": 0},
    "metric": {"name": "val_error"},
    "searcher": {"name": "optuna-tpe", "seed": 0},
    "scheduler": {"name": "fifo"},
    "resources": {"cpu": 1},
    "seed": 0,
}
# The rest of each space is the family's default (orchestrator merges it; the anchor reads the
# same merged space from the spec).
CASES = {
    "xgboost": {"family": "xgboost", "space": {"n_estimators": 60}},
    "lightgbm": {"family": "lightgbm", "space": {"n_estimators": 60}},
    "torch_mlp": {"family": "torch_mlp", "space": {"epochs": 20, "optimizer": "adam", "lr_schedule": "constant",
                                                   "grad_clip": 0.0, "activation": "relu"}},
}


def write_spec(case: str, trials: int, concurrent: int, folder: Path) -> Path:
    spec = {"name": f"vs-optuna-{case}", **COMMON, **CASES[case],
            "budget": {"trials": trials, "concurrent": concurrent}}
    path = folder / f"{case}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def timed(cmd: list[str], root: Path) -> tuple[float, str]:
    env = dict(os.environ, PYTHONPATH=str(root))
    start = time.perf_counter()
    out = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}")
    return wall, out.stdout


def standalone(spec: Path, trials: int, jobs: int) -> dict:
    wall, stdout = timed([sys.executable, str(HERE / "optuna_standalone.py"), str(spec), "--trials", str(trials),
                          "--jobs", str(jobs)], ROOT)
    return {"wall": wall, **json.loads(stdout.strip().splitlines()[-1])}


def hpo(spec: Path, out: Path, root: Path) -> dict:
    """`hpo run` in its own process; its trials.parquet gives the start-up/search/tail split."""
    import pandas as pd

    t0 = time.time()
    wall, _ = timed([sys.executable, "-m", "orchestrator.cli", "run", str(spec), "--output", str(out), "--quiet"],
                    root)
    trials = pd.read_parquet(out / "trials.parquet")
    first = trials["started_at"].min().timestamp() - t0
    span = (trials["ended_at"].max() - trials["started_at"].min()).total_seconds()
    busy = float((trials["wall_s"] * trials["cpus"]).sum())
    cpus = os.cpu_count()
    return {"wall": wall, "best": float(trials["score"].min()), "trials": len(trials), "startup": first,
            "search": span, "tail": wall - first - span, "util": busy / (wall * cpus), "util_search": busy / (span * cpus)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--case", choices=list(CASES), action="append", help="repeatable; default: all")
    p.add_argument("--trials", type=int, default=30)
    p.add_argument("--concurrent", type=int, default=2)
    p.add_argument("--hpo-root", type=Path, default=ROOT, help="checkout whose orchestrator `hpo run` uses")
    args = p.parse_args()

    print(f"{args.trials} trials, {args.concurrent} at a time, 1 thread each, TPE, FIFO, digits; "
          f"{os.cpu_count()} CPUs; hpo from {args.hpo_root}")
    head = (f"{'case':10s} {'optuna s':>8s} {'hpo s':>6s} {'ratio':>6s} {'optuna best':>11s} {'hpo best':>8s} "
            f"{'hpo start-up':>12s} {'search':>6s} {'tail':>5s} {'ratio w/o start-up':>18s} {'cpu util':>8s} "
            f"{'(search)':>8s}")
    print(head)
    with tempfile.TemporaryDirectory() as tmp:
        for case in args.case or list(CASES):
            spec = write_spec(case, args.trials, args.concurrent, Path(tmp))
            a = standalone(spec, args.trials, args.concurrent)
            b = hpo(spec, Path(tmp) / f"run-{case}", args.hpo_root.resolve())
            optuna_setup = a["wall"] - a["in_process_s"] + a["setup_s"]
            steady = (b["wall"] - b["startup"]) / (a["wall"] - optuna_setup)
            print(f"{case:10s} {a['wall']:8.1f} {b['wall']:6.1f} {b['wall'] / a['wall']:5.2f}x {a['best']:11.4f} "
                  f"{b['best']:8.4f} {b['startup']:12.1f} {b['search']:6.1f} {b['tail']:5.1f} {steady:17.2f}x "
                  f"{b['util']:8.0%} {b['util_search']:8.0%}", flush=True)
    print("start-up: process start to the first trial's start (optuna: to study.optimize); tail: after the last "
          "trial ends (hpo refits the best config and scores it on test)")


if __name__ == "__main__":
    main()

"""A large table, a few XGBoost trials: the memory of every process of a run against the data's size.

The data path of a built-in family: the driver reads the file (orchestrator.spec.data.load: a
pandas frame, then one float matrix, then float32 train/valid/test splits), `tune.with_parameters`
puts that Dataset in Ray's object store once, and each trial's worker gets it back as read-only
numpy views of the store's shared memory (no copy); the family then quantises the trial's train
and valid rows into XGBoost's `xgb.QuantileDMatrix` (the `hist` method's own input; it used
`xgb.DMatrix`, a full copy that the first round indexed besides, until 2026-12-06).

This script writes a `--rows` x `--cols` float64 Parquet file (numpy, seeded, plus a 0/1 `target`
column) into a temporary folder and runs `hpo run` (a local Ray that hpo starts itself) of the
xgboost family on it: `--trials` trials, `--concurrent` at a time, 1 CPU each, few rounds. While it
runs, a thread sums over the hpo process and all its descendants (Ray's GCS, raylet, workers) every
0.2 s:
- RSS: counts Ray's object store (/dev/shm) in every process that touched its pages, so it counts
  the shared data more than once;
- PSS (proportional set size): shared pages split between the processes that map them, so the sum
  is the memory the run really holds;
- USS: pages only one process holds (the sum leaves shared pages out altogether).
Each is printed as a multiple of the file's array (rows x cols x 8 bytes): its peak up to the first
trial's start (the driver's load and Ray's start-up), up to the last trial's end, and over the whole
run, with the processes holding the most at the moment of the PSS peak. Also: launch to the first trial's start, the
search (launch to the last trial's end), and the whole run (the refit of the best config and the
saved model come after the search).

Before the run, and apart from it, one process per format times what a trial's data costs XGBoost:
building the train and valid matrices from float32 arrays of the trial's split sizes with one
thread as `xgb.DMatrix` against `xgb.QuantileDMatrix` (what the family builds), which quantises
straight from the arrays, and the RSS each adds, before and after one boosting round.

    flock /tmp/hpo-cpu.lock .venv/bin/python benchmarks/data_scale.py
    flock /tmp/hpo-cpu.lock .venv/bin/python benchmarks/data_scale.py --rows 200000 --trials 2   # quicker

The issue's target: the peak of all processes <= 3x the array's size with 2 trials at a time.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
MB = 2**20

# One format's cost in a fresh process: arrays of a trial's train and valid sizes, as float32 (what
# orchestrator.spec.data.load hands every trial), then the two matrices, then one hist round.
MATRIX_COST = '''
import json, resource, sys, time
import numpy as np, psutil, xgboost as xgb

kind, train_rows, valid_rows, cols, max_bin = sys.argv[1], *map(int, sys.argv[2:6])
rng = np.random.default_rng(0)
X_train = rng.standard_normal((train_rows, cols), dtype=np.float32)
y_train = (X_train[:, 0] > 0).astype(np.int64)
X_valid = rng.standard_normal((valid_rows, cols), dtype=np.float32)
y_valid = (X_valid[:, 0] > 0).astype(np.int64)
rss = lambda: psutil.Process().memory_info().rss
base = rss()
began = time.perf_counter()
if kind == "DMatrix":
    dtrain = xgb.DMatrix(X_train, label=y_train, nthread=1)
    dvalid = xgb.DMatrix(X_valid, label=y_valid, nthread=1)
else:
    dtrain = xgb.QuantileDMatrix(X_train, label=y_train, nthread=1, max_bin=max_bin)
    dvalid = xgb.QuantileDMatrix(X_valid, label=y_valid, nthread=1, max_bin=max_bin, ref=dtrain)
build_s = time.perf_counter() - began
built = rss()
began = time.perf_counter()
booster = xgb.train({"tree_method": "hist", "max_depth": 3, "nthread": 1, "max_bin": max_bin,
                     "objective": "binary:logistic"}, dtrain, 1, evals=[(dvalid, "valid")], verbose_eval=False)
round_s = time.perf_counter() - began
print(json.dumps({"build_s": build_s, "built": built - base, "trained": rss() - base, "round_s": round_s,
                  "peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base}))
'''


def spec(data: str, trials: int, concurrent: int, rounds: int) -> str:
    # Depth and bins fixed small, so a trial is seconds on one core; the rest of the default space varies.
    return textwrap.dedent(f"""\
        name: data-scale
        family: xgboost
        data: {{source: file, path: {data}, target: target, task: classification}}
        metric: {{name: val_error, mode: min}}
        space: {{n_estimators: {rounds}, max_depth: 3, max_bin: 64}}
        searcher: {{name: random, seed: 0}}
        budget: {{trials: {trials}, concurrent: {concurrent}}}
        resources: {{cpu: 1}}
        """)


def write_table(path: Path, rows: int, cols: int) -> int:
    """A seeded float64 table and a 0/1 target depending on a few columns; returns the features' bytes."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((cols, rows))  # column-major, so each column goes to Arrow without a copy
    logit = X[:5].T @ np.array([1.5, -1.0, 0.8, 0.5, -0.3]) + rng.standard_normal(rows)
    table = pa.table({**{f"x{i}": X[i] for i in range(cols)}, "target": (logit > 0).astype(np.int64)})
    pq.write_table(table, path)
    return rows * cols * X.itemsize


class TreeMemory:
    """Sums RSS, PSS and USS over a process and all its descendants every `every_s`, from a thread;
    keeps every sample's (time, rss, pss, uss) and the per-process split at the highest PSS."""

    def __init__(self, pid: int, every_s: float = 0.2):
        self.root, self.every_s = psutil.Process(pid), every_s
        self.samples: list[tuple[float, int, int, int]] = []
        self.at_peak: list[tuple[str, int, int, int]] = []
        self._highest = -1
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _name(self, p: psutil.Process) -> str:
        """Read afresh: a Ray worker renames itself (`ray::IDLE`, `ray::ImplicitFunc.train`)."""
        if p.pid == self.root.pid:
            return "hpo (driver)"
        try:
            cmdline = p.cmdline()
            if not cmdline:
                return p.name()
            if Path(cmdline[0]).name.startswith("python") and len(cmdline) > 1:  # Ray's Python helpers
                return f"python {Path(cmdline[1]).name}"
            return Path(cmdline[0]).name
        except psutil.Error:
            return "?"

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                procs = [self.root, *self.root.children(recursive=True)]
            except psutil.Error:  # the run ended
                return
            split = []
            for p in procs:
                try:
                    m = p.memory_full_info()
                except psutil.Error:  # it exited between the listing and the reading
                    continue
                split.append((self._name(p), m.rss, m.pss, m.uss))
            rss, pss, uss = (sum(s[i] for s in split) for i in (1, 2, 3))
            if pss > self._highest:
                self._highest, self.at_peak = pss, sorted(split, key=lambda s: -s[2])
            self.samples.append((time.time(), rss, pss, uss))
            self._stop.wait(self.every_s)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def peaks(self, until: float | None = None) -> tuple[int, int, int]:
        """Highest sum of RSS, of PSS and of USS, over samples up to `until` (all, if None)."""
        kept = [s for s in self.samples if until is None or s[0] <= until] or [(0, 0, 0, 0)]
        return tuple(max(s[i] for s in kept) for i in (1, 2, 3))


def matrix_cost(kind: str, rows: int, cols: int, max_bin: int) -> dict:
    """One format's build time and memory (see MATRIX_COST), for a trial's split of `rows`."""
    train, valid = int(rows * 0.6), int(rows * 0.2)  # data.test_size and data.valid_size: 0.2 each
    out = subprocess.run([sys.executable, "-c", MATRIX_COST, kind, str(train), str(valid), str(cols), str(max_bin)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(folder: Path, data: str, args) -> dict:
    path = folder / f"{Path(data).stem}.yaml"
    path.write_text(spec(data, args.trials, args.concurrent, args.rounds))
    out = folder / f"run-{Path(data).stem}"
    cmd = [sys.executable, "-m", "orchestrator.cli", "run", str(path), "--quiet", "--output", str(out)]
    shm_before, used_before = psutil.disk_usage("/dev/shm").used, psutil.virtual_memory().used
    launched = time.time()
    log_path = folder / f"hpo-{Path(data).stem}.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=folder, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        memory = TreeMemory(proc.pid, args.every_s)
        used_peak = 0
        try:
            while proc.poll() is None:  # the machine's used memory, a cross-check on the sums
                used_peak = max(used_peak, psutil.virtual_memory().used - used_before)
                if time.time() - launched > args.timeout_s:
                    raise TimeoutError
                time.sleep(args.every_s)
        except TimeoutError:
            os.killpg(proc.pid, signal.SIGKILL)  # its own session: hpo and the Ray it started
            proc.wait()
            memory.stop()
            sys.exit(f"hpo run passed --timeout-s {args.timeout_s:g} and was killed; log:\n"
                     f"{log_path.read_text()[-4000:]}")
    wall = time.time() - launched
    memory.stop()
    if proc.returncode != 0:
        sys.exit(f"hpo run failed ({proc.returncode}):\n{log_path.read_text()[-4000:]}")
    trials = pd.read_parquet(out / "trials.parquet")
    first = trials["started_at"].min().timestamp() - launched
    last = trials["ended_at"].max().timestamp()
    statuses = " ".join(f"{n} {status}" for status, n in trials["status"].value_counts().items())
    return {"launched": launched, "wall": wall, "first": first, "search": last - launched, "statuses": statuses,
            "trial_s": trials["wall_s"].median(), "memory": memory, "last": last, "used_peak": used_peak,
            "shm": psutil.disk_usage("/dev/shm").used - shm_before}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--cols", type=int, default=50)
    p.add_argument("--trials", type=int, default=4)
    p.add_argument("--concurrent", type=int, default=2)
    p.add_argument("--rounds", type=int, default=20, help="n_estimators of every trial")
    p.add_argument("--max-bin", type=int, default=64, help="as in the run's space")
    p.add_argument("--floor-rows", type=int, default=2000,
                   help="rows of a first, tiny run that gives the memory of hpo and Ray without data (0: none)")
    p.add_argument("--every-s", type=float, default=0.2, help="memory sampling interval")
    p.add_argument("--timeout-s", type=float, default=1200)
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="hpo-data-scale-") as tmp:
        folder = Path(tmp)
        size = write_table(folder / "data.parquet", args.rows, args.cols)
        print(f"{args.rows:,} rows x {args.cols} float64 columns: array {size / MB:.0f} MB "
              f"(float32 as trials get it: {size / 2 / MB:.0f} MB); Parquet file "
              f"{(folder / 'data.parquet').stat().st_size / MB:.0f} MB")
        costs = {kind: matrix_cost(kind, args.rows, args.cols, args.max_bin) for kind in ("DMatrix", "QuantileDMatrix")}
        floor = None
        if args.floor_rows:
            write_table(folder / "floor.parquet", args.floor_rows, args.cols)
            floor = run(folder, "floor.parquet", args)
        r = run(folder, "data.parquet", args)
    print(f"\nper trial, train {int(args.rows * 0.6):,} + valid {int(args.rows * 0.2):,} rows, 1 thread "
          f"(float32 arrays: {args.rows * 0.8 * args.cols * 4 / MB:.0f} MB):")
    print(f"{'':18s} {'build s':>8s} {'+RSS MB':>8s} {'after 1 round MB':>17s} {'round s':>8s}")
    for kind, c in costs.items():
        print(f"{kind:18s} {c['build_s']:8.2f} {c['built'] / MB:8.0f} {c['trained'] / MB:17.0f} {c['round_s']:8.2f}")

    print(f"\nhpo run: {args.trials} trials, {args.concurrent} at a time, cpu 1 each, {args.rounds} rounds, "
          f"max_depth 3, max_bin {args.max_bin}")
    runs = [(f"{args.rows:,} rows", r)] + ([(f"floor: {args.floor_rows:,} rows", floor)] if floor else [])
    print(f"{'':30s} " + " ".join(f"{label:>22s}" for label, _ in runs))
    for label, key in (("trials", "statuses"), ("median trial s", "trial_s"),
                       ("launch to first trial start s", "first"), ("launch to last trial end s", "search"),
                       ("whole run s (with refit)", "wall")):
        cells = [x[key] for _, x in runs]
        print(f"{label:30s} " + " ".join(f"{c:>22s}" if key == "statuses" else f"{c:22.1f}" for c in cells))

    print(f"\npeak, summed over hpo's process tree, MB (x the {size / MB:.0f} MB array):")
    print(f"{'':30s} {'to first trial':>16s} {'search':>16s} {'whole run':>16s}"
          + (f" {'floor':>8s} {'above floor':>16s}" if floor else ""))
    whole_peaks, search_peaks = r["memory"].peaks(), r["memory"].peaks(r["last"])
    start_peaks = r["memory"].peaks(r["launched"] + r["first"])  # the load, Ray's start: before any trial
    floor_peaks = floor["memory"].peaks() if floor else (0, 0, 0)
    for i, label in enumerate(("sum of RSS", "sum of PSS", "sum of USS")):
        line = f"{label:30s} " + " ".join(f"{v / MB:7.0f} ({v / size:5.2f}x)"
                                          for v in (start_peaks[i], search_peaks[i], whole_peaks[i]))
        if floor:
            above = whole_peaks[i] - floor_peaks[i]
            line += f" {floor_peaks[i] / MB:8.0f} {above / MB:7.0f} ({above / size:5.2f}x)"
        print(line)
    used = r["used_peak"]
    line = f"{'machine used memory, delta':30s} {'':16s} {'':16s} {used / MB:7.0f} ({used / size:5.2f}x)"
    if floor:
        line += f" {floor['used_peak'] / MB:8.0f} {(used - floor['used_peak']) / MB:7.0f} " \
                f"({(used - floor['used_peak']) / size:5.2f}x)"
    print(line)
    print(f"(/dev/shm after the run: {r['shm'] / MB:+.0f} MB)")
    memory = r["memory"]
    at = max(memory.samples, key=lambda s: s[2])[0] - r["launched"]
    print(f"\nat the PSS peak, {at:.1f} s after launch, by process:")
    print(f"  {'process':28s} {'RSS MB':>7s} {'PSS MB':>7s} {'USS MB':>7s}")
    for name, rss, pss, uss in memory.at_peak[:8]:
        print(f"  {name[:28]:28s} {rss / MB:7.0f} {pss / MB:7.0f} {uss / MB:7.0f}")
    rest = memory.at_peak[8:]
    if rest:
        print(f"  {f'{len(rest)} others':28s} {sum(s[1] for s in rest) / MB:7.0f} "
              f"{sum(s[2] for s in rest) / MB:7.0f} {sum(s[3] for s in rest) / MB:7.0f}")


if __name__ == "__main__":
    main()

"""Many short trials on one Ray: what the driver's bookkeeping costs as the trial count grows.

Ray Tune's own release test `test_bookkeeping_overhead` runs 10,000 trials that each sleep 1 s and
report once, 16 at a time on a 16-CPU node (ideal 625 s; accepted under 800 s), to measure what the
driver spends per trial on its state, its checkpoints and its files. This is that test scaled to a
small machine: the trials sleep and use no CPU, so this script starts a Ray head with 16 logical
CPUs (`ray start --head --num-cpus 16`, token auth on, as `hpo run --ray` expects) and runs, one
after the other on that head, each as a whole process timed from launch to exit:

- `bare Ray Tune`: a plain script, `tune.Tuner(fn, TuneConfig(num_samples=N, max_concurrent_trials=16,
  reuse_actors=True))` joined with `ray.init(address=...)`, Tune's default loggers on (what a user who
  tuned Ray by hand runs). It adds one small callback that notes each trial's start and end time, the
  same two events our Recorder writes to trials.parquet, so both rows get the same per-quarter cost.
- `hpo`: `hpo run SPEC --ray 127.0.0.1:PORT --quiet` on a user function trainable (`user_fn.py:train`)
  doing the same, with the random searcher.

Columns:
- wall, ideal (N x 1 s / 16) and wall / ideal.
- where the wall went: launch -> the first trial's start, the trials' span (first start -> last end)
  against the ideal, and last end -> exit. Most of the start is the trial workers': a head from
  `ray start` starts its workers only when a driver connects, two at a time, 16 here, and each imports
  Ray Tune for its trial actor; on 2 real cores that is ~10 s (on a node with 16 cores, about one
  worker's time). The span is what the driver's bookkeeping adds to the trials.
- driver ms/trial per quarter of the trials (by start order): (the quarter's span from its first start
  to its last end x 16 - the sum of its trials' wall_s) / its trials: slot-time no trial was running,
  per trial. A driver whose bookkeeping grows with the trials it has seen shows a rising row; with 2,000
  trials or more, the first and last 1,000 are printed as well (the issue's target: last within 20%).
- driver peak RSS: the driver process alone (the hpo process; for bare Ray Tune the script), sampled
  with psutil every 0.5 s, and its RSS at a quarter, half and three quarters of its run and at the end
  (a driver that keeps state per trial grows). Ray's own processes (raylet, GCS, workers) belong to
  the head and are not counted.
- Parquet share: the hpo driver's seconds in Recorder.flush() and close()'s merge (experiment.json's
  `recorder.flush_s`, once the run records it) over its wall time; "n/a" where the run has no such field.

A run past `--timeout-s` is killed (its row shows >limit); for hpo, the costs are then those of the
trials its last flush (every 5 s) wrote to trials.parquet as ended.

    flock /tmp/hpo-cpu.lock .venv/bin/python benchmarks/bookkeeping.py --trials 800
    flock /tmp/hpo-cpu.lock .venv/bin/python benchmarks/bookkeeping.py --trials 10000 --skip-bare

The machine's real cores only run Ray's and the driver's own processes here, but the 16 trials'
workers are 16 idle Python processes: with 2 cores the driver competes with Ray's processes for CPU,
so the numbers are an upper bound on the driver's cost on a 16-core node.
"""

from __future__ import annotations

import argparse
import contextlib
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

ROOT = Path(__file__).resolve().parent.parent

USER_FN = '''
import time
from ray import tune


def train(config):
    time.sleep(config["sleep_s"])
    tune.report({"loss": config["x1"]})
'''

BARE = '''
import csv
import sys
import time

import ray
from ray import tune

sys.path.insert(0, {folder!r})
from user_fn import train


class Times(tune.Callback):
    """When each trial started and ended, as the driver saw it (our Recorder's two events)."""

    def __init__(self):
        self.rows = {{}}

    def on_trial_start(self, iteration, trials, trial, **info):
        self.rows[trial.trial_id] = [time.time(), None]

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.rows[trial.trial_id][1] = time.time()


ray.init(address={address!r})
times = Times()
tuner = tune.Tuner(
    train,
    param_space={{"x1": tune.uniform(-5, 10), "sleep_s": {sleep_s}}},
    tune_config=tune.TuneConfig(metric="loss", mode="min", num_samples={trials}, max_concurrent_trials={cpus},
                                reuse_actors=True),
    run_config=tune.RunConfig(storage_path={storage!r}, name="bare", verbose=0, callbacks=[times]),
)
tuner.fit()
with open({times_csv!r}, "w", newline="") as f:
    csv.writer(f).writerows([trial_id, start, end] for trial_id, (start, end) in times.rows.items())
'''


def spec(name: str, trials: int, sleep_s: float, cpus: int) -> str:
    return textwrap.dedent(f"""\
        name: {name}
        family: user_fn.py:train
        metric: {{name: loss, mode: min}}
        space: {{x1: {{uniform: [-5, 10]}}, sleep_s: {sleep_s}}}
        searcher: {{name: random, seed: 0}}
        budget: {{trials: {trials}, concurrent: {cpus}}}
        resources: {{cpu: 1}}
        """)


class PeakRSS:
    """Samples one process's RSS every `every_s` from a thread; `peak` is the highest seen (bytes),
    `samples` every one."""

    def __init__(self, pid: int, every_s: float = 0.5):
        self.proc, self.every_s, self.peak = psutil.Process(pid), every_s, 0
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append(self.proc.memory_info().rss)
                self.peak = max(self.peak, self.samples[-1])
            except psutil.Error:  # it exited
                return
            self._stop.wait(self.every_s)

    def stop(self) -> tuple[int, list[int]]:
        """(the peak, the RSS at a quarter, half, three quarters of the samples and at the last one)."""
        self._stop.set()
        self._thread.join()
        n = len(self.samples)
        trace = [self.samples[n * k // 4] for k in (1, 2, 3)] + [self.samples[-1]] if n else []
        return self.peak, trace


def timed(cmd: list[str], cwd: Path, env: dict, log: Path,
          timeout_s: float) -> tuple[float, float | None, tuple[int, list[int]]]:
    """(launch time, wall seconds or None if it ran past `timeout_s` and was killed, (peak RSS, trace))."""
    launched = time.time()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        rss = PeakRSS(proc.pid)
        try:
            rc = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # its own session: the driver and nothing of the head's
            proc.wait()
            return launched, None, rss.stop()
    wall = time.time() - launched
    peak = rss.stop()
    if rc != 0:
        sys.exit(f"{' '.join(cmd)} failed ({rc}):\n{log.read_text()[-4000:]}")
    return launched, wall, peak


def driver_cost_ms(starts: pd.Series, ends: pd.Series, cpus: int) -> list[tuple[str, float]]:
    """(label, ms of idle slot-time per trial) for each quarter by start order, and the first and last
    1,000 when there are 2,000 trials or more. Slot-time is the span x `cpus`; busy is sum of walls."""
    frame = pd.DataFrame({"start": starts.to_numpy(), "end": ends.to_numpy()}).dropna().sort_values("start")
    frame["wall"] = frame["end"] - frame["start"]

    def cost(rows: pd.DataFrame) -> float:
        span = rows["end"].max() - rows["start"].min()
        return (span * cpus - rows["wall"].sum()) / len(rows) * 1000

    out = [(f"Q{i + 1}", cost(frame.iloc[rows])) for i, rows in enumerate(np.array_split(np.arange(len(frame)), 4))]
    if len(frame) >= 2000:
        out += [("first 1000", cost(frame.iloc[:1000])), ("last 1000", cost(frame.iloc[-1000:]))]
    return out


def phases(starts: pd.Series, ends: pd.Series, launched: float, wall: float) -> tuple[float, float, float]:
    """(launch -> first trial's start, first start -> last end, last end -> exit), in seconds: the
    start is where a 2-core machine pays for its 16 trial workers (see the docstring)."""
    first, last = float(starts.min()), float(ends.max())
    return first - launched, last - first, launched + wall - last


def seconds(column: pd.Series) -> pd.Series:
    return column.map(lambda t: t.timestamp() if pd.notna(t) else np.nan)


def start_head(cpus: int) -> tuple[subprocess.Popen, str, dict]:
    """`ray start --head --block` with token auth (see benchmarks/trial_overhead.py's joined());
    returns once `ray status` answers."""
    from orchestrator.cluster import auth
    from orchestrator.cluster.spec import free_port

    auth.enable_token_auth()  # the same token file the runs will use
    port = free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "token"}
    ray_bin = str(Path(sys.executable).with_name("ray"))
    head = subprocess.Popen([ray_bin, "start", "--head", "--block", "--node-ip-address", "127.0.0.1",
                             f"--port={port}", f"--num-cpus={cpus}", "--include-dashboard=false"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    address = f"127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        if head.poll() is not None:
            sys.exit(f"ray start --head exited ({head.returncode})")
        ok = subprocess.run([ray_bin, "status", "--address", address], env=env, capture_output=True).returncode == 0
        if ok:
            time.sleep(3)  # let the head settle before timing anything
            return head, address, env
        time.sleep(2)
    stop_head(head, str(port))
    sys.exit("ray start --head did not answer `ray status` within 120 s")


def stop_head(head: subprocess.Popen, port: str) -> None:
    """Terminates the --block process (it stops the head's processes), then kills any of them left,
    and removes the address file `ray start` left in /tmp/ray (`ray stop` would), so that a later
    plain `ray.init()` on this machine does not try to join the dead head."""
    try:
        children = psutil.Process(head.pid).children(recursive=True)
    except psutil.Error:
        children = []
    head.terminate()
    try:
        head.wait(timeout=60)
    except subprocess.TimeoutExpired:
        head.kill()
        head.wait()
    _, alive = psutil.wait_procs(children, timeout=10)
    for p in alive:
        p.kill()
    current = Path(os.environ.get("RAY_TMPDIR") or tempfile.gettempdir()) / "ray" / "ray_current_cluster"
    with contextlib.suppress(OSError):
        if current.read_text().strip().endswith(f":{port}"):
            current.unlink()


def run_bare(folder: Path, address: str, env: dict, args, tag: str) -> dict:
    storage, times_csv = folder / f"bare-{tag}", folder / f"bare-{tag}.csv"
    script = folder / f"bare-{tag}.py"
    script.write_text(BARE.format(folder=str(folder), address=address, sleep_s=args.sleep_s, trials=args.trials,
                                  cpus=args.cpus, storage=str(storage), times_csv=str(times_csv)))
    launched, wall, peak = timed([sys.executable, str(script)], folder, env, folder / f"bare-{tag}.log", args.timeout_s)
    row = {"name": "bare Ray Tune", "wall": wall, "rss": peak[0], "trace": peak[1], "flush_s": None, "quarters": []}
    if wall is not None:
        times = pd.read_csv(times_csv, names=["trial_id", "start", "end"])
        row["quarters"] = driver_cost_ms(times["start"], times["end"], args.cpus)
        row["phases"] = phases(times["start"], times["end"], launched, wall)
    return row


def run_hpo(folder: Path, address: str, env: dict, args, tag: str) -> dict:
    path = folder / f"hpo-{tag}.yaml"
    path.write_text(spec(f"bookkeeping-{tag}", args.trials, args.sleep_s, args.cpus))
    out = folder / "runs" / tag
    cmd = [sys.executable, "-m", "orchestrator.cli", "run", str(path), "--ray", address, "--quiet",
           "--output", str(out)]
    launched, wall, peak = timed(cmd, folder, {**env, "PYTHONPATH": str(ROOT)}, folder / f"hpo-{tag}.log",
                                 args.timeout_s)
    row = {"name": "hpo run --ray (user fn)", "wall": wall, "rss": peak[0], "trace": peak[1], "flush_s": None,
           "quarters": []}
    if (out / "trials.parquet").exists():  # killed at the limit: the trials its last flush wrote
        trials = pd.read_parquet(out / "trials.parquet")
        starts, ends = seconds(trials["started_at"]), seconds(trials["ended_at"])
        row["quarters"] = driver_cost_ms(starts, ends, args.cpus)
        row["ended"] = int(trials["ended_at"].notna().sum())
        if wall is not None:
            row["phases"] = phases(starts, ends, launched, wall)
    if wall is not None:
        meta = json.loads((out / "experiment.json").read_text())
        row["flush_s"] = (meta.get("recorder") or {}).get("flush_s")
    return row


def report(rows: list[dict], ideal: float, limit: float) -> None:
    labels = [label for row in rows for label, _ in row["quarters"]]
    labels = list(dict.fromkeys(labels)) or ["Q1", "Q2", "Q3", "Q4"]
    print(f"{'':26s} {'wall s':>8s} {'ideal s':>8s} {'x ideal':>8s} {'RSS MB':>7s} {'Parquet':>8s}")
    for row in rows:
        wall = f"{row['wall']:8.1f}" if row["wall"] is not None else f"{'>limit':>8s}"
        ratio = f"{row['wall'] / ideal:7.2f}x" if row["wall"] is not None else f"{'':8s}"
        share = f"{row['flush_s'] / row['wall']:8.2%}" if row["flush_s"] is not None else f"{'n/a':>8s}"
        print(f"{row['name']:26s} {wall} {ideal:8.1f} {ratio} {row['rss'] / 2**20:7.0f} {share}")
    print("\nwhere the wall went, s: launch -> first trial, the trials' span (x ideal), last trial's end -> exit")
    for row in rows:
        if row.get("phases"):
            start, span, tail = row["phases"]
            print(f"{row['name']:26s} {start:8.1f} {span:8.1f} ({span / ideal:.2f}x) {tail:8.1f}")
    print(f"\ndriver ms per trial (idle slot-time / trial), by start order:\n{'':26s} "
          + " ".join(f"{label:>10s}" for label in labels))
    for row in rows:
        costs = dict(row["quarters"])
        print(f"{row['name']:26s} " + " ".join(f"{costs[label]:10.1f}" if label in costs else f"{'':>10s}"
                                               for label in labels))
    print(f"\ndriver RSS MB at a quarter, half, three quarters of its run time, and at its last sample:\n{'':26s} "
          + " ".join(f"{label:>10s}" for label in ("1/4", "1/2", "3/4", "end")))
    for row in rows:
        print(f"{row['name']:26s} " + " ".join(f"{v / 2**20:10.0f}" for v in row["trace"]))
    for row in rows:
        if row["wall"] is None:
            print(f"{row['name']}: killed at --timeout-s {limit:g} s" + (
                f" with {row['ended']} trials ended; the costs above are theirs" if row.get("ended") else ""))
        if row["flush_s"] is not None:
            print(f"{row['name']}: {row['flush_s']:.1f} s writing Parquet in {row['wall']:.1f} s")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=800)
    p.add_argument("--cpus", type=int, default=16, help="logical CPUs of the head = trials at once")
    p.add_argument("--sleep-s", type=float, default=1.0, help="each trial's sleep before its one report")
    p.add_argument("--repeat", type=int, default=1, help="runs of each side, alternating")
    p.add_argument("--skip-bare", action="store_true", help="only the hpo side")
    p.add_argument("--timeout-s", type=float, default=1200, help="a run past this is killed and shown as >limit")
    args = p.parse_args()
    ideal = args.trials * args.sleep_s / args.cpus
    print(f"{args.trials} trials x 1 report after {args.sleep_s:g} s, {args.cpus} at a time on a head with "
          f"{args.cpus} logical CPUs ({os.cpu_count()} cores): ideal {ideal:.1f} s")
    rows = []
    with tempfile.TemporaryDirectory(prefix="hpo-bookkeeping-") as tmp:
        folder = Path(tmp)
        (folder / "user_fn.py").write_text(USER_FN)
        head, address, env = start_head(args.cpus)
        try:
            for r in range(args.repeat):
                if not args.skip_bare:
                    rows.append(run_bare(folder, address, env, args, str(r)))
                rows.append(run_hpo(folder, address, env, args, str(r)))
        finally:
            stop_head(head, address.rpartition(":")[2])
    report(rows, ideal, args.timeout_s)


if __name__ == "__main__":
    main()

"""What each tracker (orchestrator.tracking) costs per reported iteration, and what a run pays for it.

Two measurements, back to back in one invocation:

1. **Per report, in this process, no Ray**: a Recorder fed `--trials` x `--reports` results (one
   iteration each, as Tune delivers them) with one tracker listening. `driver µs/report` is the
   extra time the Recorder's caller spends per report with the tracker on (the listener only
   queues: this is what Tune's loop, and so a trial waiting in `tune.report`, could feel);
   `tracker ms/report` is the tracker's own time on its thread (`Tracking.busy_s`), including
   opening its store and one run per trial; `close s` is how long `close` waited for the thread
   to finish after the last report.
   `--ray-loggers N` adds Ray's own `MLflowLoggerCallback` and `TBXLoggerCallback` on N trials,
   called directly as Tune's loop calls them: all of their time is driver time. (Ray's
   `WandbLoggerCallback` is left out: it logs from a Ray actor per trial, so it needs a running Ray.)
2. **Whole runs**: `hpo run` on the synthetic family (`--trials` x `--reports` iterations of
   `--sleep-ms`, 2 trials at once), without tracking and with each tracker, timed from launch to
   exit (`--skip-runs` leaves this out).

    .venv/bin/python benchmarks/tracking_overhead.py --trials 100 --reports 20 --ray-loggers 20
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from orchestrator.results.writer import Recorder  # noqa: E402
from orchestrator.tracking.listener import open_tracking  # noqa: E402
from orchestrator.tracking.spec import TrackingSpec  # noqa: E402

TRACKERS = {"none": {}, "mlflow": {"mlflow": True}, "tensorboard": {"tensorboard": True},
            "wandb": {"wandb": True}, "all": {"mlflow": True, "tensorboard": True, "wandb": True}}


def feed(folder: Path, tracking: dict, trials: int, reports: int, concurrent: int = 2):
    """Results as Tune delivers them: `concurrent` trials interleaved, one iteration per result."""
    spec = TrackingSpec.model_validate(tracking)
    t_open = time.perf_counter()
    tr = open_tracking(spec, folder, "run-1", "bench", {"name": "bench"}, "loss")
    recorder = Recorder(folder, "loss", "min", flush_every_s=1e9)
    if tr:
        recorder.listeners.append(tr)
    driver = 0.0
    for first in range(0, trials, concurrent):
        ids = [f"t{i:05d}" for i in range(first, min(first + concurrent, trials))]
        t0 = time.perf_counter()
        for tid in ids:
            recorder.start(tid, {"x1": 0.1, "x2": 0.2})
        for it in range(1, reports + 1):
            for tid in ids:
                recorder.result(tid, {"x1": 0.1, "x2": 0.2},
                                {"loss": 1.0 / it, "regret": 0.5 / it, "training_iteration": it, "time_total_s": it})
        for tid in ids:
            recorder.complete(tid)
        driver += time.perf_counter() - t0
    t_close = time.perf_counter()
    problems = tr.close("finished", None) if tr else []
    close_s = time.perf_counter() - t_close
    if problems:
        sys.exit("\n".join(problems))
    busy = sum(tr.busy_s.values()) if tr else 0.0
    return driver, busy, close_s, time.perf_counter() - t_open


def ray_logger(name: str, folder: Path, trials: int, reports: int) -> float:
    """Ray's own logger callback (`mlflow`: MLflowLoggerCallback, `tensorboard`: TBXLoggerCallback),
    called as Tune's driver loop calls it: seconds per report, all of it driver time."""
    from ray.tune.experiment import Trial

    class LocalTrial(Trial):  # a trial folder without Ray's storage context (which needs a running Ray)
        local_path = property(lambda self: str(folder / self.trial_id))

        def init_local_path(self):
            os.makedirs(self.local_path, exist_ok=True)

    if name == "mlflow":
        from ray.air.integrations.mlflow import MLflowLoggerCallback

        callback = MLflowLoggerCallback(tracking_uri=f"sqlite:///{folder / 'ray.db'}", experiment_name="bench")
    else:
        from ray.tune.logger import TBXLoggerCallback

        callback = TBXLoggerCallback()
    callback.setup()
    t0 = time.perf_counter()
    for i in range(trials):
        trial = LocalTrial("fn", config={"x1": 0.1, "x2": 0.2}, stub=True, trial_id=f"t{i:05d}")
        callback.log_trial_start(trial)
        for it in range(1, reports + 1):  # the keys of one result of ours that are numbers
            callback.log_trial_result(it, trial, {"loss": 1.0 / it, "regret": 0.5 / it, "training_iteration": it,
                                                  "time_total_s": it * 0.1, "time_this_iter_s": 0.1})
        callback.log_trial_end(trial)
    return (time.perf_counter() - t0) / (trials * reports)


def spec_text(trials: int, reports: int, sleep_s: float) -> str:
    return textwrap.dedent(f"""\
        name: bench
        family: synthetic
        metric: {{name: loss}}
        space: {{iterations: {reports}, sleep_s: {sleep_s}}}
        searcher: {{name: random, seed: 0}}
        budget: {{trials: {trials}, concurrent: 2}}
        """)


def whole_run(folder: Path, name: str, tracking: dict, args) -> float:
    path = folder / "bench.yaml"
    path.write_text(spec_text(args.trials, args.reports, args.sleep_ms / 1000))
    sets = [f"--set=tracking.{k}={str(v).lower()}" for k, v in tracking.items()]
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-m", "orchestrator.cli", "run", str(path), "--output",
                           str(folder / "runs" / name), "--quiet", *sets], cwd=folder, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    wall = time.time() - t0
    if proc.returncode != 0:
        sys.exit(f"{name} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return wall


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=100)
    p.add_argument("--reports", type=int, default=20)
    p.add_argument("--sleep-ms", type=float, default=10.0)
    p.add_argument("--skip-runs", action="store_true")
    p.add_argument("--ray-loggers", type=int, default=0, metavar="TRIALS",
                   help="also time Ray's MLflowLoggerCallback and TBXLoggerCallback, driven directly, "
                        "on this many trials")
    args = p.parse_args()
    n = args.trials * args.reports
    print(f"{args.trials} trials x {args.reports} reports, fed to a Recorder in-process (no Ray)")
    print(f"{'tracker':12s} {'driver µs/report':>17s} {'tracker ms/report':>18s} {'close s':>8s} {'total s':>8s}")
    base = None
    for name, tracking in TRACKERS.items():
        with tempfile.TemporaryDirectory(prefix="hpo-track-") as tmp:
            driver, busy, close_s, total = feed(Path(tmp), tracking, args.trials, args.reports)
        base = driver if base is None else base
        extra = (driver - base) / n * 1e6 if name != "none" else driver / n * 1e6
        label = "(Recorder alone)" if name == "none" else ""
        print(f"{name:12s} {extra:17.1f} {busy / n * 1e3:18.3f} {close_s:8.2f} {total:8.2f} {label}")
    for name in ("mlflow", "tensorboard") if args.ray_loggers else ():
        with tempfile.TemporaryDirectory(prefix="hpo-track-") as tmp:
            per = ray_logger(name, Path(tmp), args.ray_loggers, args.reports)
        print(f"{'Ray ' + name:12s} {per * 1e6:17.1f} {'(all on the driver)':>18s}   {args.ray_loggers} trials")
    if args.skip_runs:
        return
    ideal = n * args.sleep_ms / 1000 / 2
    print(f"\nhpo run, synthetic family, {args.trials} x {args.reports} x {args.sleep_ms:g} ms, 2 at once "
          f"(ideal {ideal:.1f} s)")
    with tempfile.TemporaryDirectory(prefix="hpo-track-") as tmp:
        for name, tracking in TRACKERS.items():
            print(f"{name:12s} {whole_run(Path(tmp), name, tracking, args):7.1f} s", flush=True)


if __name__ == "__main__":
    main()

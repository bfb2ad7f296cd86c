"""Tiny trials, whole processes: `hpo run` against bare Ray Tune and the ideal, with CPU utilisation.

Every trial reports `--reports` times and sleeps `--sleep-ms` before each report, so the ideal wall
time is trials x reports x sleep / CPUs. Each row is one whole Python process, timed from launch to
exit (imports and Ray start-up included), run back to back in one invocation:

- `bare Ray Tune`: a plain script, `tune.Tuner(fn, TuneConfig(num_samples=N, max_concurrent_trials=C,
  reuse_actors=True))` with Tune's random search: what a user who tuned Ray by hand runs.
- `hpo <searcher> built-in`: `hpo run` on the `synthetic` family (our Trial contract).
- `hpo <searcher> user fn`: `hpo run` on a plain Ray Tune function trainable (`tune.report`).
- `--join`: also `hpo run --ray ADDRESS` against a Ray this script starts first with
  `ray start --head` (and stops after): the start-up a user saves by keeping one Ray running.

CPU utilisation is read from each run's trials.parquet: busy trial-seconds (sum of `wall_s` x `cpus`)
over (run wall time x CPUs), where run wall time spans the first trial's start to the last one's end;
"first trial" is the time from launching the process to the first trial's start.

    .venv/bin/python benchmarks/trial_overhead.py --trials 400 --reports 10 --sleep-ms 10
    .venv/bin/python benchmarks/trial_overhead.py --trials 100 --reports 1 --sleep-ms 1000   # 1 s trials

`--dashboard both --repeat N` times what the live Optuna journal (`dashboard: true`) adds: each `hpo`
row runs N times without and N times with it, alternating, and the table gives each one's median
wall time (with its range) and the change:

    .venv/bin/python benchmarks/trial_overhead.py --skip-bare --searchers random --dashboard both --repeat 3
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent

USER_FN = '''
import time
from ray import tune


def train(config):
    for i in range(config["reports"]):
        time.sleep(config["sleep_s"])
        tune.report({"loss": config["x1"] + config["x2"] / (i + 1)})
'''

BARE = '''
import sys
sys.path.insert(0, {folder!r})
from ray import tune
from user_fn import train

tuner = tune.Tuner(
    train,
    param_space={{"x1": tune.uniform(-5, 10), "x2": tune.uniform(0, 15), "reports": {reports}, "sleep_s": {sleep_s}}},
    tune_config=tune.TuneConfig(metric="loss", mode="min", num_samples={trials}, max_concurrent_trials={cpus},
                                reuse_actors=True),
    run_config=tune.RunConfig(storage_path={storage!r}, name="bare", verbose=0),
)
tuner.fit()
'''


def spec(name: str, family: str, searcher: str, trials: int, reports: int, sleep_s: float, cpus: int,
         dashboard: bool = False) -> str:
    space = (f"{{x1: {{uniform: [-5, 10]}}, x2: {{uniform: [0, 15]}}, reports: {reports}, sleep_s: {sleep_s}}}"
             if family.endswith(":train") else
             f"{{iterations: {reports}, sleep_s: {sleep_s}}}")
    return textwrap.dedent(f"""\
        name: {name}
        family: {family}
        metric: {{name: loss, mode: min}}
        space: {space}
        searcher: {{name: {searcher}, seed: 0}}
        budget: {{trials: {trials}, concurrent: {cpus}}}
        dashboard: {str(dashboard).lower()}
        """)


def timed(cmd: list[str], cwd: Path) -> tuple[float, float, str]:
    launched = time.time()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    wall = time.time() - launched
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return launched, wall, proc.stdout


def utilisation(trials: pd.DataFrame, cpus: int) -> tuple[float, pd.Timestamp]:
    first, last = trials["started_at"].min(), trials["ended_at"].max()
    span = (last - first).total_seconds()
    busy = (trials["wall_s"] * trials["cpus"].fillna(1)).sum()
    return busy / (span * cpus), first


def joined(folder: Path, args, sleep_s: float, cpus: int) -> list[tuple]:
    """`hpo run --ray ADDRESS` (built-in family, first searcher) on a Ray started once beforehand."""
    from orchestrator.cluster import auth
    from orchestrator.cluster.spec import free_port

    auth.enable_token_auth()  # the same token file the run will use
    port = free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "token"}
    head = subprocess.Popen(["ray", "start", "--head", "--block", "--node-ip-address", "127.0.0.1",
                             f"--port={port}", f"--num-cpus={cpus}", "--include-dashboard=false"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            executable=str(Path(sys.executable).with_name("ray")))
    try:
        time.sleep(15)  # let the head come up before timing anything
        searcher = args.searchers.split(",")[0]
        path = folder / "joined.yaml"
        path.write_text(spec("joined", "synthetic", searcher, args.trials, args.reports, sleep_s, cpus))
        out = folder / "runs" / "joined"
        launched, wall, _ = timed([sys.executable, "-m", "orchestrator.cli", "run", str(path), "--output", str(out),
                                   "--quiet", "--ray", f"127.0.0.1:{port}"], folder)
        util, first = utilisation(pd.read_parquet(out / "trials.parquet"), cpus)
        return [(f"hpo {searcher} built-in --ray", wall, util, first.timestamp() - launched)]
    finally:
        head.terminate()
        head.wait(timeout=60)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=400)
    p.add_argument("--reports", type=int, default=10)
    p.add_argument("--sleep-ms", type=float, default=10.0)
    p.add_argument("--searchers", default="random,optuna-tpe")
    p.add_argument("--skip-bare", action="store_true")
    p.add_argument("--join", action="store_true", help="add runs joining a running Ray (hpo run --ray)")
    p.add_argument("--dashboard", choices=("off", "on", "both"), default="off",
                   help="the live Optuna journal (dashboard: true) in the hpo runs; both: without, with, alternating")
    p.add_argument("--repeat", type=int, default=1, help="runs of each hpo row (the table gives the median)")
    args = p.parse_args()
    cpus = os.cpu_count() or 2
    sleep_s = args.sleep_ms / 1000
    ideal = args.trials * args.reports * sleep_s / cpus
    print(f"{args.trials} trials x {args.reports} reports x {args.sleep_ms:g} ms on {cpus} CPUs: "
          f"ideal {ideal:.1f} s (work / cores)")
    rows = []
    with tempfile.TemporaryDirectory(prefix="hpo-bench-") as tmp:
        folder = Path(tmp)
        (folder / "user_fn.py").write_text(USER_FN)
        if not args.skip_bare:
            script = folder / "bare.py"
            script.write_text(BARE.format(folder=str(folder), reports=args.reports, sleep_s=sleep_s,
                                          trials=args.trials, cpus=cpus, storage=str(folder / "bare")))
            launched, wall, _ = timed([sys.executable, str(script)], folder)
            rows.append(("bare Ray Tune (reuse_actors)", wall, None, None, None))
        modes = {"off": (False,), "on": (True,), "both": (False, True)}[args.dashboard]
        changes = []
        for searcher in args.searchers.split(","):
            for label, family in (("built-in", "synthetic"), ("user fn", "user_fn.py:train")):
                runs: dict[bool, list[tuple]] = {m: [] for m in modes}
                for r in range(args.repeat):
                    for dashboard in modes:
                        name = f"{searcher}-{label.replace(' ', '-')}-{r}{'-dashboard' if dashboard else ''}"
                        path = folder / f"{name}.yaml"
                        path.write_text(spec(name, family, searcher, args.trials, args.reports, sleep_s, cpus,
                                             dashboard))
                        out = folder / "runs" / name
                        launched, wall, _ = timed([sys.executable, "-m", "orchestrator.cli", "run", str(path),
                                                   "--output", str(out), "--quiet"], folder)
                        util, first = utilisation(pd.read_parquet(out / "trials.parquet"), cpus)
                        runs[dashboard].append((wall, util, first.timestamp() - launched))
                        shutil.rmtree(out, ignore_errors=True)  # Tune's checkpoints: keep the disk small
                for dashboard, done in runs.items():
                    walls = sorted(w for w, _, _ in done)
                    rows.append((f"hpo {searcher} {label}" + (" +dashboard" if dashboard else ""),
                                 statistics.median(walls), statistics.median(u for _, u, _ in done),
                                 statistics.median(f for _, _, f in done), (walls[0], walls[-1])))
                if len(modes) == 2:
                    off, on = (statistics.median(w for w, _, _ in runs[m]) for m in modes)
                    changes.append(f"dashboard on hpo {searcher} {label}: {on / off - 1:+.1%} wall time "
                                   f"(median of {args.repeat}: {off:.1f} s -> {on:.1f} s)")
        if args.join:
            rows += [(*row, None) for row in joined(folder, args, sleep_s, cpus)]
    print(f"{'':34s} {'wall s':>7s} {'x ideal':>8s} {'CPU util':>9s} {'first trial s':>14s}"
          + (f" {'range s':>12s}" if args.repeat > 1 else ""))
    for name, wall, util, first, *spread in rows:
        util_text = f"{util:9.0%}" if util is not None else f"{'':9s}"
        first_text = f"{first:14.1f}" if first is not None else f"{'':14s}"
        span = spread[0] if spread else None
        span_text = f" {span[0]:5.1f}-{span[1]:5.1f}" if args.repeat > 1 and span else ""
        print(f"{name:34s} {wall:7.1f} {wall / ideal:7.2f}x {util_text} {first_text}{span_text}")
    for line in changes:
        print(line)


if __name__ == "__main__":
    main()

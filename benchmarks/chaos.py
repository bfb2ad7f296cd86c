"""Faults together, at random, while real searches run: does the record of what ran survive whole?

For each setup (TPE + ASHA, BOHB + HyperBand, PBT, NSGA-II on two metrics, SMAC) one `hpo run` is
started in its own process session and hit, at random moments after its first trial started, by
faults drawn at random: a trial's worker killed (kill -9: Ray retries it, budget.max_failures),
the driver killed with everything it started (kill -9: then `hpo resume`), SIGTERM (`hpo stop`'s
signal; then `hpo resume`), Ctrl-C (SIGINT; then `hpo resume`). It goes on until the run finishes.
Then it checks what the issue asks of a run that survived chaos:

- exactly `budget.trials` finished trials (completed, stopped, errored), each once; beyond them
  only the documented surplus: trials created after Tune's last snapshot and cut off
  (experiment.json `resumes[].cut_off_after_snapshot`);
- every result on disk before a fault (history parts read right after it) present once after;
- no trial left `running` or `pending`; the scores of finished trials unchanged by later faults;
  no trial errored but for its worker lost twice (the family never raises);
- no Ray process of the run left; no `.tmp` file in the run folder.

One more setup, `tpe+asha on 2 nodes`, submits the search as a job to the 2-node loopback cluster
(cluster/local.yaml on free ports, its own token, state and storage) and kills the worker node
outright (its `ray start`, raylet and trial workers, kill -9, as a machine that loses power) while
trials run there, then brings it back with `hpo cluster up`'s restart, more than once; the same
checks follow, on the job's results folder.

It prints one row per setup: faults injected, driver sessions, results lost (must be 0), the
checks that failed, wall time. `--short` is the version the test suite runs (two setups, fewer
trials and faults). Each trial logs its reports to a file (the `counting` family below), so a
run without faults can also be checked against what the trainable really reported.

    .venv/bin/python benchmarks/chaos.py                 # all setups, ~4-6 min on 2 cores
    .venv/bin/python benchmarks/chaos.py --short --seed 1
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import psutil
import yaml

ROOT = Path(__file__).resolve().parent.parent

# The synthetic family, each report also appended to $HPO_CHAOS_LOG: "trial iteration value".
COUNTING = '''
import os
from experiments.synthetic import FAMILY as SYNTHETIC
from orchestrator.families.contract import Family


class _Logged:
    def __init__(self, trial):
        self._trial = trial

    def __getattr__(self, name):
        return getattr(self._trial, name)

    def report(self, metrics, state=None):
        from ray import tune

        line = f"{tune.get_context().get_trial_id()} {metrics['loss']!r}\\n"
        fd = os.open(os.environ["HPO_CHAOS_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        os.write(fd, line.encode())
        os.close(fd)
        self._trial.report(metrics, state=state)


def train(config, data, trial):
    SYNTHETIC.train(config, data, _Logged(trial))


FAMILY = Family(name="counting", train=train, default_space=SYNTHETIC.default_space,
                iterations_param="iterations", checkpoints=True, metrics=SYNTHETIC.metrics, needs_data=False)
'''

BASE = {"family": "counting.py:FAMILY", "metric": {"name": "loss", "mode": "min"},
        "space": {"iterations": 9, "sleep_s": 0.12}, "budget": {"trials": 16, "concurrent": 2}, "seed": 0}
SETUPS = {
    "tpe+asha": {"searcher": {"name": "optuna-tpe", "seed": 0},
                 "scheduler": {"name": "asha", "max_t": 9, "grace_period": 3}},
    "bohb+hyperband": {"searcher": {"name": "bohb", "seed": 0},
                       "scheduler": {"name": "bohb-hyperband", "max_t": 9}},
    "pbt": {"searcher": {"name": "random", "seed": 0},
            "scheduler": {"name": "pbt", "perturbation_interval": 3, "hyperparam_mutations": ["x1", "x2"]}},
    "nsga2 (2 metrics)": {"searcher": {"name": "optuna-nsga2", "seed": 0, "population_size": 4},
                          "metric": [{"name": "loss", "mode": "min"}, {"name": "regret", "mode": "min"}]},
    "smac": {"searcher": {"name": "smac", "seed": 0}},
}
SHORT = ("tpe+asha", "pbt")
NODES = "tpe+asha on 2 nodes"  # the cluster setup: node_loss()
FAULTS = ("worker", "kill", "term", "int")
FINISHED = ("completed", "stopped", "errored")


@dataclass
class Outcome:
    setup: str
    faults: list[str] = field(default_factory=list)
    sessions: int = 0
    lost: int = 0
    failed: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    finished: int = 0
    surplus: int = 0


def spec_for(setup: str, trials: int) -> dict:
    spec = {"name": f"chaos-{setup.split()[0].replace('+', '-')}", **BASE, **SETUPS[setup]}
    spec["budget"] = {**BASE["budget"], "trials": trials}
    return spec


def start(args: list[str], folder: Path, log: Path, ray_tmp: Path) -> subprocess.Popen:
    # Ray's temp folder of its own (a killed Ray leaves its address file there), and short: Ray's
    # socket paths under it are limited to 107 bytes.
    env = {**os.environ, "PYTHONPATH": f"{ROOT}:{folder}", "HPO_CHAOS_LOG": str(log), "RAY_TMPDIR": str(ray_tmp)}
    out = open(folder / "driver.log", "a")  # the child's stdout and stderr, kept open for its lifetime
    return subprocess.Popen([sys.executable, "-m", "orchestrator.cli", *args, "--quiet"], cwd=folder, env=env,
                            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def session(proc: subprocess.Popen) -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter():
        try:
            if os.getsid(p.pid) == proc.pid:
                found.append(p)
        except (psutil.Error, ProcessLookupError, PermissionError):
            pass
    return found


def trial_workers(proc: subprocess.Popen) -> list[psutil.Process]:
    out = []
    for p in session(proc):
        try:
            if "ImplicitFunc" in " ".join(p.cmdline()) or p.name().startswith("ray::ImplicitFunc"):
                out.append(p)
        except psutil.Error:
            pass
    return out


def written(run_dir: Path) -> tuple[set[tuple], dict[str, float]]:
    """What the run folder holds now: (trial, attempt, iteration) of every history row on disk, and the
    score of every finished trial."""
    from orchestrator.results.reader import load

    try:
        trials, history = load(run_dir)
    except (FileNotFoundError, OSError, ValueError):
        return set(), {}
    rows = set(zip(history.get("trial_id", []), history.get("attempt", []), history.get("iteration", [])))
    done = trials[trials["status"].isin(FINISHED)] if "status" in trials else trials.iloc[0:0]
    return rows, dict(zip(done["trial_id"], done["score"]))


def reports(log: Path) -> int:
    """Reports the trials made so far (the counting family's log): the run is searching once it grows."""
    try:
        return sum(1 for _ in log.open())
    except OSError:
        return 0


def one_setup(setup: str, trials: int, faults: int | list[str], rng: random.Random, root: Path,
              timeout_s: float = 240) -> Outcome:
    """Runs one setup through `faults` (a number drawn at random, or the faults in order) and checks it."""
    folder = root / setup.split()[0].replace("+", "-")
    folder.mkdir(parents=True)
    (folder / "counting.py").write_text(COUNTING)
    (folder / "spec.yaml").write_text(yaml.safe_dump(spec_for(setup, trials), sort_keys=False))
    run_dir, log = folder / "run", folder / "reports.log"
    out, t0 = Outcome(setup), time.monotonic()
    seen: set[tuple] = set()
    scores: dict[str, float] = {}
    args = ["run", "spec.yaml", "--output", "run"]
    plan = list(faults) if isinstance(faults, list) else [rng.choice(FAULTS) for _ in range(faults)]
    drivers = sum(f != "worker" for f in plan)
    ray_tmp = Path(tempfile.mkdtemp(prefix="hpo-chaos-", dir="/tmp"))
    while True:
        proc = start(args, folder, log, ray_tmp)
        out.sessions += 1
        args = ["resume", "run"]
        deadline, before = time.monotonic() + timeout_s, reports(log)
        while reports(log) == before and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        if plan and proc.poll() is None:
            time.sleep(rng.uniform(0.5, 3.0))
        killed = False
        while plan and proc.poll() is None:
            fault = plan.pop(0)
            out.faults.append(fault)
            if fault == "worker":
                workers = trial_workers(proc)
                if workers:
                    rng.choice(workers).kill()
                time.sleep(rng.uniform(1.0, 3.0))
                continue
            if fault == "kill":
                killed = True
                for p in session(proc):
                    p.kill()
            elif fault == "term":  # to the driver, as `hpo stop` or a batch scheduler sends it
                proc.send_signal(signal.SIGTERM)
            else:  # Ctrl-C: to the whole process group, as a terminal sends it
                os.killpg(proc.pid, signal.SIGINT)
            break
        try:
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            out.failed.append("a session timed out")
            for p in session(proc):
                p.kill()
            proc.wait()
        if not killed:  # the driver ended by itself (or on a signal): its Ray must go with it
            stray_deadline = time.monotonic() + 15
            while session(proc) and time.monotonic() < stray_deadline:
                time.sleep(0.5)
            if left := session(proc):
                out.failed.append(f"{len(left)} Ray processes outlived their driver: {left[0].name()}")
        for p in session(proc):  # a killed driver's Ray: gone with its session, or killed here
            p.kill()
        rows, finished = written(run_dir)
        out.lost += len(seen - rows)  # on disk before this session, gone after it
        seen |= rows
        for trial, score in finished.items():
            if trial in scores and not (score == scores[trial] or (pd.isna(score) and pd.isna(scores[trial]))):
                out.failed.append(f"trial {trial}'s score changed: {scores[trial]} -> {score}")
            scores.setdefault(trial, score)
        if not (run_dir / "experiment.json").exists():
            out.failed.append(f"the run never started: {(folder / 'driver.log').read_text().strip()[-300:]}")
            break
        status = json.loads((run_dir / "experiment.json").read_text()).get("status")
        if status == "finished" or out.sessions > drivers + 3:
            break
    shutil.rmtree(ray_tmp, ignore_errors=True)
    out.wall_s = time.monotonic() - t0
    if (run_dir / "experiment.json").exists():
        check(run_dir, trials, seen, out, log if not drivers else None)
    return out


def node_loss(trials: int, faults: int, rng: random.Random, root: Path, timeout_s: float = 300) -> Outcome:
    """A job on the 2-node loopback cluster; its worker node killed whole `faults` times while trials run
    there, each time brought back by `hpo cluster up` (orchestrator.cluster.local.up restarts dead nodes)."""
    import io
    import secrets

    from orchestrator.cluster import jobs
    from orchestrator.cluster import local as cluster_local
    from orchestrator.cluster import spec as cluster_spec

    folder = root / "nodes"
    folder.mkdir(parents=True)
    raw = yaml.safe_load((ROOT / "cluster" / "local.yaml").read_text())
    hpo = raw["metadata"]["hpo"]
    hpo.update(jobs_address=f"http://127.0.0.1:{cluster_spec.free_port()}", storage=str(folder / "storage"),
               auth={"token_file": str(folder / "state" / "auth_token")})
    hpo["local"].update(gcs_port=cluster_spec.free_port(), state_dir=str(folder / "state"),
                        temp_dir=f"/tmp/hpo-chaos-{secrets.token_hex(3)}")  # short: Ray's socket paths
    (folder / "cluster.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    (folder / "counting.py").write_text(COUNTING)
    spec = {**spec_for("tpe+asha", trials), "name": "chaos-nodes", "resources": {"cpu": 1, "gpu": 0}}
    spec["budget"]["concurrent"] = 3  # the head's 1 CPU and the worker's 2: trials on both nodes
    (folder / "spec.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    log = folder / "reports.log"
    os.environ["HPO_CHAOS_LOG"] = str(log)  # the nodes, hence the job's trials, inherit it
    c = cluster_spec.load(folder / "cluster.yaml")
    out, t0, seen = Outcome(NODES, sessions=1), time.monotonic(), set()
    state = cluster_local.up(c, log=lambda m: None, die_with_parent=True)
    try:
        sub = jobs.submit(c, folder / "spec.yaml", [], folder)
        run_dir, deadline = Path(sub.results), time.monotonic() + timeout_s
        for _ in range(faults):
            before = reports(log)
            while reports(log) < before + rng.randint(6, 20) and time.monotonic() < deadline:
                time.sleep(0.1)
            rows, _ = written(run_dir)
            seen |= rows  # on disk before the fault
            worker = next(n for n in state.nodes if not n.head)
            node = psutil.Process(worker.pid)
            for p in [node, *node.children(recursive=True)]:  # the whole machine at once
                p.kill()
            out.faults.append("node")
            time.sleep(rng.uniform(1.0, 4.0))
            state = cluster_local.up(c, log=lambda m: None, die_with_parent=True)  # `hpo cluster up`
        status = jobs.follow(c, sub.job_id, io.StringIO())
        if status != "SUCCEEDED":
            out.failed.append(f"the job ended {status}: {jobs.logs(c, sub.job_id)[-300:]}")
    finally:
        cluster_local.down(c, grace_s=20)
        cluster_local.remove_temp_dir(c)
    for n in state.nodes:
        if psutil.pid_exists(n.pid) and abs(psutil.Process(n.pid).create_time() - n.create_time) < 1e-3:
            out.failed.append(f"node {n.node_type} outlived hpo cluster down")
    out.wall_s = time.monotonic() - t0
    # No report count against the trainables' log: a report logged just before its node died never
    # reached the driver, so it was never a result (the local setups check the count when no driver dies).
    check(run_dir, trials, seen, out)
    return out


def check(run_dir: Path, budget: int, seen: set[tuple], out: Outcome, log: Path | None = None) -> None:
    """The checks of the module docstring; with `log` (a run no driver fault hit), also that history
    holds exactly the reports the trainables made."""
    from orchestrator.results.reader import load

    meta = json.loads((run_dir / "experiment.json").read_text())
    trials, history = load(run_dir)
    if meta.get("status") != "finished":
        out.failed.append(f"the run ended {meta.get('status')}: {meta.get('error')}")
    out.finished = int(trials["status"].isin(FINISHED).sum())
    cut = {t for r in meta.get("resumes", []) for t in r.get("cut_off_after_snapshot", [])}
    surplus = trials[~trials["status"].isin(FINISHED)]
    out.surplus = len(surplus)
    if out.finished != budget:
        out.failed.append(f"{out.finished} finished trials, budget {budget}")
    if not trials["trial_id"].is_unique:
        out.failed.append("a trial twice in trials.parquet")
    if set(surplus["status"]) - {"interrupted"} or not set(surplus["trial_id"]) <= cut:
        out.failed.append(f"unfinished trials beyond the documented surplus: {sorted(surplus['trial_id'])}")
    rows = list(zip(history["trial_id"], history["attempt"], history["iteration"]))
    if len(rows) != len(set(rows)):
        out.failed.append("a result recorded twice")
    missing = seen - set(rows)
    out.lost += len(missing)
    if list(run_dir.rglob(".*.tmp")):
        out.failed.append("temporary files left")
    errored = trials[trials["status"] == "errored"]
    # The family never raises: an error is a fault's, and only a lost worker may end a trial (retried first).
    unexplained = errored[~errored["error"].fillna("").str.contains("was lost")]
    if len(unexplained):
        out.failed.append(f"{len(unexplained)} trials errored: {unexplained['error'].iloc[0][:200]}")
    if log is not None and reports(log) != len(history):
        out.failed.append(f"the trials reported {reports(log)} results, history.parquet holds {len(history)}")


def main(argv: list[str] | None = None) -> list[Outcome]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--short", action="store_true", help="the test suite's size: two setups, 12 trials, 2 faults")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--setups", nargs="*", help=f"default: all ({', '.join(SETUPS)})")
    p.add_argument("--keep", type=Path, help="folder to keep the runs in (default: a temporary one)")
    args = p.parse_args(argv)
    rng = random.Random(args.seed)
    setups = args.setups or (SHORT if args.short else [*SETUPS, NODES])
    trials, faults = (12, 2) if args.short else (20, 4)
    with tempfile.TemporaryDirectory(prefix="hpo-chaos-") as tmp:
        root = args.keep or Path(tmp)
        outcomes = [node_loss(trials, 2, rng, root) if s == NODES else one_setup(s, trials, faults, rng, root)
                    for s in setups]
    print(f"chaos: {trials} trials per run, 2 at a time, {faults} faults drawn from {', '.join(FAULTS)}; "
          f"on 2 nodes 3 at a time, the worker node killed twice; seed {args.seed}; {os.cpu_count()} CPUs")
    print(f"{'setup':<20} {'faults':<28} {'sessions':>8} {'finished':>8} {'surplus':>7} {'lost':>4} "
          f"{'wall s':>7}  checks")
    for o in outcomes:
        print(f"{o.setup:<20} {' '.join(o.faults):<28} {o.sessions:>8} {o.finished:>8} {o.surplus:>7} {o.lost:>4} "
              f"{o.wall_s:>7.1f}  {'ok' if not o.failed else '; '.join(o.failed)}")
    return outcomes


if __name__ == "__main__":
    results = main()
    sys.exit(0 if all(not o.failed and not o.lost for o in results) else 1)

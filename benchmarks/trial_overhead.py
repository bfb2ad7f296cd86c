"""Per-trial overhead: hpo-orchestrator vs bare Ray Tune, same tiny trials, same Ray instance.

Each trial reports `iterations` times, sleeping `sleep_ms` per report, so the ideal wall time is
trials * iterations * sleep_ms / cpus. Prints seconds per trial over that ideal and the ratios.

    .venv/bin/python benchmarks/trial_overhead.py --trials 100
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time


def bare_trainable(config):
    from ray import tune

    for i in range(config["iterations"]):
        time.sleep(config["sleep_s"])
        tune.report({"loss": config["x1"] + i})


def bare(trials: int, iterations: int, sleep_s: float, storage: str, reuse: bool) -> float:
    from ray import tune

    tuner = tune.Tuner(
        bare_trainable,
        param_space={"x1": tune.uniform(0, 1), "iterations": iterations, "sleep_s": sleep_s},
        tune_config=tune.TuneConfig(metric="loss", mode="min", num_samples=trials, reuse_actors=reuse),
        run_config=tune.RunConfig(storage_path=storage, name=f"bare-{reuse}", verbose=0),
    )
    start = time.perf_counter()
    tuner.fit()
    return time.perf_counter() - start


def ours(trials: int, iterations: int, sleep_s: float, storage: str) -> float:
    from orchestrator.runner import run
    from orchestrator.spec import validate

    exp = validate({"name": "overhead", "family": "synthetic", "metric": {"name": "loss"},
                    "space": {"iterations": iterations, "sleep_s": sleep_s},
                    "budget": {"trials": trials, "concurrent": os.cpu_count()}})
    start = time.perf_counter()
    run(exp, os.path.join(storage, "ours"), quiet=True)
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=100)
    p.add_argument("--iterations", type=int, default=10)
    p.add_argument("--sleep-ms", type=float, default=10.0)
    args = p.parse_args()

    from orchestrator.runner import quiet_driver_logs, start_local_ray

    t0 = time.perf_counter()
    start_local_ray()
    quiet_driver_logs()
    import ray

    cpus = int(ray.cluster_resources()["CPU"])
    print(f"ray.init: {time.perf_counter() - t0:.1f}s, {cpus} CPUs, {args.trials} trials x "
          f"{args.iterations} reports x {args.sleep_ms:g} ms")
    sleep_s = args.sleep_ms / 1000
    ideal = args.trials * args.iterations * sleep_s / cpus
    with tempfile.TemporaryDirectory() as storage:
        rows = [("bare Ray Tune, defaults", bare(args.trials, args.iterations, sleep_s, storage, reuse=False)),
                ("bare Ray Tune, reuse_actors", bare(args.trials, args.iterations, sleep_s, storage, reuse=True)),
                ("hpo-orchestrator", ours(args.trials, args.iterations, sleep_s, storage))]
    baseline = rows[0][1]
    print(f"{'':30s} {'fit s':>7s} {'overhead s/trial':>17s} {'vs bare defaults':>17s}")
    for name, seconds in rows:
        print(f"{name:30s} {seconds:7.1f} {(seconds - ideal) / args.trials:17.3f} {seconds / baseline:16.2f}x")
    print(f"(ideal {ideal:.1f}s: trials x reports x sleep / CPUs)")


if __name__ == "__main__":
    main()

"""What the progress display costs the driver: per call in-process, and whole `hpo run`s with and without it.

1. In-process, no Ray: a Recorder holding `--recorded` trials (half finished, half running), and
   `Progress.tick()` timed as the driver's loop calls it (throttled: most calls return at once) and
   forced (every call updates): on a pseudo-terminal (the rich live bar) and into a log (the plain
   line, written to /dev/null). Also one redraw of the bar, which rich's own refresh thread does
   10 times a second, so its share of a CPU is 10 x that.
2. Whole processes, back to back, alternating, `--repeats` times each: `hpo run` of the synthetic
   family's tiny trials on a pseudo-terminal (the live bar), into a pipe (plain lines), and with
   `--quiet` (no progress at all). Wall time from launch to exit; the median is printed.

    .venv/bin/python benchmarks/progress_overhead.py --trials 200 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import pty
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SPEC = """
name: progress-overhead
family: synthetic
metric: {{name: loss}}
space: {{iterations: {reports}, sleep_s: {sleep_s}}}
searcher: {{name: random, seed: 0}}
budget: {{trials: {trials}, concurrent: 2}}
seed: 0
"""


def _drain(fd: int, sink: list[bytes]) -> None:
    while True:
        try:
            data = os.read(fd, 65536)
        except OSError:
            return
        if not data:
            return
        sink.append(data)


def _per_call_us(fn, n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n * 1e6


def in_process(recorded: int, calls: int) -> None:
    from orchestrator.results.writer import Recorder
    from orchestrator.run.progress import Progress

    rec = Recorder(Path(tempfile.mkdtemp()), "loss", "min")
    for i in range(recorded):
        tid = f"t{i:05d}"
        rec.start(tid, {"x": i})
        rec.result(tid, {"x": i}, {"training_iteration": 1, "loss": float(i % 97)})
        if i % 2:
            rec.complete(tid)
    master, slave = pty.openpty()
    sink: list[bytes] = []
    threading.Thread(target=_drain, args=(master, sink), daemon=True).start()
    tty = os.fdopen(slave, "w", buffering=1)
    with open(os.devnull, "w") as log:
        live, plain = Progress(rec, recorded, stream=tty, time_s=600), Progress(rec, recorded, stream=log)
        rows = [
            ("tick(), throttled (most calls)", _per_call_us(live.tick, calls * 100)),
            ("tick(force=True), live bar", _per_call_us(lambda: live.tick(force=True), calls)),
            ("tick(force=True), log line", _per_call_us(lambda: plain.tick(force=True), calls)),
            ("one redraw of the bar (rich thread)", _per_call_us(live._bar.rich.refresh, calls)),
        ]
        live.finish()
    tty.close()
    print(f"in-process, {recorded} trials recorded            us per call")
    for name, us in rows:
        print(f"  {name:<40} {us:10.1f}")
    redraw = rows[-1][1]
    print(f"  rich's refresh thread at 10 redraws/s: {redraw * 10 / 1e4:.2f}% of one CPU")


def whole_run(mode: str, spec: Path, out: Path) -> float:
    cmd = [sys.executable, "-m", "orchestrator.cli", "run", str(spec), "--output", str(out)]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    start = time.perf_counter()
    if mode == "terminal":
        master, slave = pty.openpty()
        sink: list[bytes] = []
        reader = threading.Thread(target=_drain, args=(master, sink), daemon=True)
        reader.start()
        proc = subprocess.run(cmd, stdout=slave, stderr=slave, env=env, cwd=ROOT)
        os.close(slave)
        took = time.perf_counter() - start
        reader.join(timeout=5)
        os.close(master)
        if b"ETA" not in b"".join(sink):
            raise SystemExit("no live bar was drawn on the terminal")
    else:
        proc = subprocess.run(cmd + (["--quiet"] if mode == "quiet" else []), capture_output=True,
                              env=env, cwd=ROOT)
        took = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{mode} run failed: {proc.returncode}")
    return took


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=200)
    ap.add_argument("--reports", type=int, default=1)
    ap.add_argument("--sleep-ms", type=float, default=0.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--recorded", type=int, default=2000, help="trials in the in-process Recorder")
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--skip-runs", action="store_true", help="only the in-process measurement")
    args = ap.parse_args()

    in_process(args.recorded, args.calls)
    if args.skip_runs:
        return
    with tempfile.TemporaryDirectory() as tmp:
        spec = Path(tmp) / "spec.yaml"
        spec.write_text(SPEC.format(trials=args.trials, reports=args.reports, sleep_s=args.sleep_ms / 1000))
        times: dict[str, list[float]] = {"terminal": [], "log": [], "quiet": []}
        for r in range(args.repeats):
            for mode in times:
                times[mode].append(whole_run(mode, spec, Path(tmp) / f"{mode}-{r}"))
    print(f"\nhpo run, {args.trials} trials x {args.reports} reports, {args.repeats} runs each   "
          f"median wall s   (all)")
    for mode, ts in times.items():
        shown = '(live bar)' if mode == 'terminal' else '(plain lines)' if mode == 'log' else '(none)'
        print(f"  {mode:<10} {shown:<14}"
              f"{statistics.median(ts):16.2f}   ({', '.join(f'{t:.2f}' for t in ts)})")


if __name__ == "__main__":
    main()

"""The job side of `hpo submit`: what runs on the cluster, as `python -m orchestrator.job_entry`.

It does what `hpo run` does, through the library (load the spec, run it joined to the cluster,
print the summary), into the results location `submit` chose: a path every node shares is written
directly; for an object store the run is written locally on the head and its files uploaded,
also when the run fails or is stopped.

`hpo stop` makes Ray send SIGTERM; the runner's handler (orchestrator.run.signals) stops the run at
once, flushes what it has and marks the run interrupted (Ray waits 3 s, then SIGKILL).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from orchestrator.errors import HpoError
from orchestrator.results import storage
from orchestrator.run import summary
from orchestrator.run.driver import run
from orchestrator.spec.load import load_spec


def run_into(spec: str, output: str, overrides: list[str]) -> int:
    """Runs the spec into `output`; returns the exit code `hpo run` would."""
    exp = load_spec(spec, overrides)
    if not storage.is_uri(output) or output.startswith("file://"):
        return summary.report(run(exp, output.removeprefix("file://")))
    with tempfile.TemporaryDirectory(prefix="hpo-job-") as tmp:
        local = Path(tmp) / "run"
        try:
            return summary.report(run(exp, local))
        finally:
            if local.exists():
                storage.upload(local, output)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m orchestrator.job_entry")
    p.add_argument("spec")
    p.add_argument("--output", required=True)
    p.add_argument("--set", action="append", default=[])
    args = p.parse_args(argv)
    try:
        return run_into(args.spec, args.output, args.set)
    except (HpoError, KeyboardInterrupt, OSError) as exc:
        return summary.report_failure(exc)


if __name__ == "__main__":
    sys.exit(main())

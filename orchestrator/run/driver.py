"""`hpo run`: a new run folder, from a validated experiment to its summary.

Everything the user can get wrong is checked before Ray starts (it takes seconds): the data loads
and the folder is claimed first (orchestrator.results.rundir). Then the shared lifecycle
(orchestrator.run.lifecycle) writes `experiment.json`, fits a fresh Tuner, records how the run
ended and refits the best config. The status recorded and the exit code the CLI gives agree:
`finished` (0) needs a best trial; `failed` (1) says why; `interrupted` (128 + the signal).
"""

from __future__ import annotations

import platform
from importlib import metadata
from pathlib import Path
from typing import Any

from orchestrator.errors import InputError, Problem, SpecError
from orchestrator.families.contract import Family
from orchestrator.results import rundir
from orchestrator.results.contract import EXPERIMENT, SCHEMA_KEY, SCHEMA_VERSION
from orchestrator.results.writer import Recorder
from orchestrator.run import lifecycle
from orchestrator.run.ray_local import apply_fast_env
from orchestrator.run.run_data import RunData
from orchestrator.run.summary import RunSummary
from orchestrator.run.tuner import build_tuner
from orchestrator.spec import data as data_mod
from orchestrator.spec.experiment import Experiment

VERSIONED_PACKAGES = ("hpo-orchestrator", "ray", "optuna", "pandas", "pyarrow", "numpy", "scikit-learn",
                      "xgboost", "lightgbm", "torch", "pydantic")


def new_run_dir(exp: Experiment, root: str | Path = "results") -> tuple[Path, str]:
    """results/<name>/<run id>: sortable by time, and the same spec shares a suffix."""
    run_id = rundir.new_run_id(exp.spec_hash)
    return Path(root) / exp.spec.name / run_id, run_id


def run(exp: Experiment, output: str | Path | None = None, *, quiet: bool = False,
        ray_address: str | None = None) -> RunSummary:
    """Runs an experiment on the Ray this process is connected to: else the one at `ray_address`
    ("auto": the one `ray start` left running here), else a local one started for this run."""
    apply_fast_env()
    if output is None:
        run_dir, run_id = new_run_dir(exp)
    else:
        run_dir, run_id = Path(output), rundir.new_run_id(exp.spec_hash)
    if run_dir.is_dir() and any(run_dir.iterdir()):  # fail fast; the claim below is the real check
        raise InputError(f"{run_dir} already holds results; choose an empty or new folder "
                         f"(results are never overwritten)")
    dataset = load_data(exp)
    claim = claim_folder(run_dir)

    def begin() -> tuple[dict[str, Any], Recorder]:
        meta = run_metadata(exp, run_id, claim.owner)
        rundir.write_json(run_dir / EXPERIMENT, meta)
        return meta, Recorder(run_dir, exp.metric, exp.mode, max_t=exp.max_t, on_flush=lambda _: claim.beat(),
                              objectives=exp.objectives, constraints=exp.constraints)

    return lifecycle.drive(exp, run_dir, dataset, begin, build_tuner, quiet=quiet, ray_address=ray_address)


def claim_folder(run_dir: Path) -> rundir.Claim:
    """The run folder, made this run's alone (orchestrator.results.rundir.claim), or a one-line refusal."""
    try:
        return rundir.claim(run_dir)
    except rundir.FolderTaken as exc:
        raise InputError(str(exc)) from None
    except OSError as exc:
        raise InputError(f"cannot write the run folder {run_dir}: {exc.strerror or exc}; choose another --output "
                         f"on a writable disk with free space") from None


def load_data(exp: Experiment) -> RunData:
    """The experiment's dataset (None for a family without data), held for the run
    (orchestrator.run.run_data); a bad file is the user's to fix."""
    return RunData(_dataset(exp), reload=lambda: _dataset(exp))


def _dataset(exp: Experiment):
    if not (isinstance(exp.family, Family) and exp.family.needs_data):
        return None
    try:
        return data_mod.load(exp.spec.data, exp.base_dir)
    except data_mod.DataError as exc:
        raise SpecError(Problem(exc.field, str(exc)), exp.source) from None


def run_metadata(exp: Experiment, run_id: str, owner: dict[str, Any]) -> dict[str, Any]:
    """A new run's experiment.json, written before the first trial starts."""
    return {
        SCHEMA_KEY: SCHEMA_VERSION,
        "run_id": run_id,
        "name": exp.spec.name,
        "source": exp.source,
        "base_dir": str(exp.base_dir),  # where the spec's relative paths point (resume needs it)
        "spec_hash": exp.spec_hash,
        "spec": exp.resolved(),
        "seed": exp.spec.seed,
        "metric": {"name": exp.metric, "mode": exp.mode},  # with several metrics, the first; all under objectives
        **({"objectives": [{"name": n, "mode": m} for n, m in exp.objectives]} if exp.multi_objective else {}),
        # a metric's known optimum (a test function's), for regret in analysis: orchestrator.analysis.anytime
        **({"optima": dict(exp.family.optima)} if getattr(exp.family, "optima", None) else {}),
        "status": "running",
        "started_at": rundir.now(),
        "ended_at": None,
        "owner": {k: owner[k] for k in ("host", "pid")},  # heartbeat: owner.json (orchestrator.results.rundir)
        "python": platform.python_version(),
        "versions": _versions(),
    }


def _versions() -> dict[str, str]:
    out = {}
    for pkg in VERSIONED_PACKAGES:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out

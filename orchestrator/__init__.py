"""hpo-orchestrator: YAML experiment -> validated spec -> Ray Tune -> Parquet -> analysis.

What a user calls, importable from here (each is imported on first use, so that importing a
sub-package, say `orchestrator.analysis` in a notebook, pulls in nothing else):

    load_spec(path, overrides)   orchestrator.spec.load       YAML -> a validated Experiment
    load_runs(paths)             orchestrator.analysis.runs   run folders -> frames for analysis
    load(run_dir)                orchestrator.results.reader  one run's (trials, history)
    load_model(run_dir)          orchestrator.model.load      the run's saved model: predict, predict_proba

Running one from Python: `orchestrator.run.driver.run(experiment, output)` (`hpo run`) and
`orchestrator.run.resume.resume(run_dir)` (`hpo resume`); `orchestrator.run` is the package.

The packages, bottom to top (a package imports only those below it): families, results, search,
analysis, tracking, spec, trial, model, cluster, run; then cli and job_entry. analysis reads
results (and search.space) alone. Where the old flat modules went: docs/extending.md.
"""

from __future__ import annotations

import importlib
from typing import Any

from orchestrator.errors import HpoError, InputError, ModelError, ResultsError, RunError, SpecError

_LAZY = {
    "ExperimentSpec": "orchestrator.spec.experiment",
    "Experiment": "orchestrator.spec.experiment",
    "load_spec": "orchestrator.spec.load",
    "load_runs": "orchestrator.analysis.runs",
    "load": "orchestrator.results.reader",
    "load_model": "orchestrator.model.load",
}

__all__ = ["HpoError", "InputError", "ModelError", "ResultsError", "RunError", "SpecError", *_LAZY]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'orchestrator' has no attribute {name!r}")

"""hpo-orchestrator: YAML experiment -> validated spec -> Ray Tune -> Parquet."""

from orchestrator.errors import HpoError, RunError, SpecError
from orchestrator.spec.experiment import ExperimentSpec
from orchestrator.spec.load import load_spec

__all__ = ["ExperimentSpec", "HpoError", "RunError", "SpecError", "load_spec"]
__version__ = "0.1.0"

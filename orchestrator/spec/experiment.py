"""The experiment spec as typed objects: `ExperimentSpec` (the YAML's sections, each a frozen pydantic
model with unknown keys refused, the searcher and scheduler sections typed per algorithm by their
`name`), and `Experiment`, the spec with everything looked up that the run builds from.

Reading YAML and the rules that span sections live in orchestrator.spec.load.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import Discriminator, Field, Tag, model_validator

from orchestrator.base import StrictModel
from orchestrator.families.registry import FamilyRef
from orchestrator.results.constraints import Constraint
from orchestrator.search.rules import most_iterations
from orchestrator.search.schedulers import SCHEDULERS
from orchestrator.search.searchers import SEARCHERS
from orchestrator.search.space import Param
from orchestrator.spec.data import DataSpec
from orchestrator.spec.evaluation import EvaluationSpec
from orchestrator.tracking.spec import TrackingSpec


class MetricSpec(StrictModel):
    name: str = Field(min_length=1)
    mode: Literal["min", "max"] | None = Field(None, description="inferred for the built-in metric names")


# `metric:` is one mapping, or a list of two or more for a multi-objective search (orchestrator.results.pareto).
# Tagged by shape, so that an error in either form gets the path `metric.name` or `metric[1].name`.
Metrics = Annotated[Annotated[MetricSpec, Tag("one")] | Annotated[list[MetricSpec], Field(min_length=2), Tag("list")],
                    Discriminator(lambda v: "list" if isinstance(v, list) else "one")]


class ConstraintSpec(StrictModel):
    """One entry of `constraints:`: a bound on a metric the trials report (orchestrator.results.constraints)."""

    metric: str = Field(min_length=1, description="a metric the family reports, cost metrics included")
    max: float | None = Field(None, allow_inf_nan=False,
                              description="feasible when the trial's last value is at most this")
    min: float | None = Field(None, allow_inf_nan=False,
                              description="feasible when the trial's last value is at least this")

    @model_validator(mode="after")
    def _one_bound(self):
        if (self.max is None) == (self.min is None):
            if self.max is None:
                raise ValueError(f"needs a bound, got neither max nor min; add max: X (feasible when {self.metric} "
                                 f"<= X) or min: X (when >= X)")
            raise ValueError(f"needs exactly one of max or min, got both (max {self.max:g}, min {self.min:g}); "
                             f"keep the one the search would cross (one bound per metric)")
        return self


REGRET_BOUND_MIN_TRIALS = 30  # finished trials with a score before the regret bound can end a search


class RegretBoundSpec(StrictModel):
    """`budget.stop.regret_bound: {}`: Optuna's Terminator rule (orchestrator.run.regret_bound)."""

    seed: int | None = Field(None, description="seeds the rule's Gaussian process (default: the spec's seed)")


class StopSpec(StrictModel):
    """`budget.stop:` ends the whole search once it stops paying (orchestrator.run.stopping): after
    `patience` trials without improvement, once `regret_bound`'s model says the best can hardly be
    beaten, or at the first of the two."""

    patience: int | None = Field(None, ge=1, description="finished trials in a row, in the order they finish, that "
                                                          "do not improve the best score by more than min_delta")
    min_delta: float = Field(0, ge=0, description="how much better than the best a score must be to count "
                             "as an improvement, in the metric's units")
    regret_bound: RegretBoundSpec | None = Field(None, description="ends the search once a model of the objective "
                                                 "bounds what is left to find below the noise of its early trials "
                                                 f"(needs {REGRET_BOUND_MIN_TRIALS} trials with a score)")

    @model_validator(mode="after")
    def _a_rule(self):
        if self.patience is None and self.regret_bound is None:
            raise ValueError("set patience (trials without improvement), regret_bound: {}, or both")
        return self


class BudgetSpec(StrictModel):
    trials: int = Field(20, ge=1, description="number of trials (Ray's num_samples)")
    concurrent: int = Field(1, ge=1, description="trials running at once, at most")
    time_s: float | None = Field(None, gt=0, description="wall-clock budget for the whole search")
    max_failures: int = Field(1, ge=0, description="times a trial whose worker or node was lost is retried "
                              "(Ray's FailureConfig); a trainable's own exception is never retried")
    cpu_hours: float | None = Field(None, gt=0, description="CPUs granted to trials x their wall time, "
                                    "summed over trials (those running included)")
    gpu_hours: float | None = Field(None, gt=0, description="GPUs granted to trials x their wall time, "
                                    "summed over trials (those running included)")
    stop: StopSpec | None = Field(None, description="ends the search early when it stops improving")
    in_flight: Literal["stop", "finish"] = Field("stop", description="when budget.stop, cpu_hours or gpu_hours "
                                                 "ends the search, the trials already running: `stop` at once, "
                                                 "or `finish` as their scheduler ends them; no new trial starts")


class ResourcesSpec(StrictModel):
    cpu: float = Field(1, gt=0, description="CPUs per trial")
    gpu: float = Field(0, ge=0, description="GPUs per trial; a fraction below 1 shares a GPU")

    @model_validator(mode="after")
    def _gpu_shape(self):
        if self.gpu > 1 and not float(self.gpu).is_integer():
            raise ValueError(f"gpu: above 1 must be a whole number, got {self.gpu}; "
                             f"Ray cannot split a trial across a fraction of several GPUs")
        return self


# The registries' options models as one discriminated union each: Union[...] of a tuple built at
# import time, which the `X | Y` spelling cannot express.
SearcherSpec = Annotated[Union[tuple(e.options for e in SEARCHERS.values())], Field(discriminator="name")]  # noqa: UP007
SchedulerSpec = Annotated[Union[tuple(e.options for e in SCHEDULERS.values())], Field(discriminator="name")]  # noqa: UP007


class ExperimentSpec(StrictModel):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=100)
    family: str = Field(min_length=1)
    data: DataSpec = DataSpec(name="digits")
    metric: Metrics
    space: dict[str, Any] = Field(default_factory=dict)
    searcher: SearcherSpec = Field(default_factory=lambda: SEARCHERS["random"].options())
    scheduler: SchedulerSpec = Field(default_factory=lambda: SCHEDULERS["fifo"].options())
    budget: BudgetSpec = BudgetSpec()
    resources: ResourcesSpec = ResourcesSpec()
    seed: int = Field(0, description="seeds the searcher (unless it has its own) and every trial")
    evaluation: EvaluationSpec = EvaluationSpec()
    extra_params: list[str] = Field(default_factory=list, description="space entries a built-in family does not "
                                    "declare, passed to its library on purpose")
    constraints: list[ConstraintSpec] = Field(default_factory=list, description="bounds on reported metrics; "
                                              "only trials that meet all of them can be the best")
    tracking: TrackingSpec = TrackingSpec()  # MLflow, TensorBoard, W&B (orchestrator.tracking); off by default
    dashboard: bool = Field(False, description="write the run as a live Optuna journal (RUN_DIR/optuna.journal) "
                            "that `hpo dashboard RUN_DIR` serves while the run goes (orchestrator.tracking.journal)")


@dataclass(frozen=True)
class Experiment:
    """A spec with everything looked up: what the runner builds from."""

    spec: ExperimentSpec
    family: FamilyRef
    params: Mapping[str, Param]
    mode: Literal["min", "max"]
    base_dir: Path  # relative paths in the spec are looked up here first
    source: str = "<spec>"
    warm_points: tuple[dict[str, Any], ...] = ()  # best configs of an earlier run, best first
    warm_scores: tuple[float, ...] = ()
    objectives: tuple[tuple[str, str], ...] = ()  # (name, mode) of each metric, when the spec lists several

    @property
    def multi_objective(self) -> bool:
        return len(self.objectives) > 1

    @property
    def constraints(self) -> tuple[Constraint, ...]:
        return tuple(Constraint(c.metric, c.max, c.min) for c in self.spec.constraints)

    @property
    def total_trials(self) -> int:
        return self.spec.budget.trials * SEARCHERS[self.spec.searcher.name].grid_size(self.params)

    @property
    def metric(self) -> str:
        """The (first) metric: what every single-metric part of a run (progress, checks) follows."""
        return self.objectives[0][0] if self.objectives else self.spec.metric.name

    @property
    def searcher_seed(self) -> int:
        return self.spec.searcher.seed if self.spec.searcher.seed is not None else self.spec.seed

    @property
    def max_t(self) -> int | None:
        """The most iterations any trial runs, when the scheduler or family bounds it."""
        return getattr(self.spec.scheduler, "max_t", None) or most_iterations(self.params, self.family)

    @property
    def spec_hash(self) -> str:
        """Eight hex digits of the resolved spec: runs of the same spec share it."""
        return hashlib.sha256(json.dumps(self.resolved(), sort_keys=True).encode()).hexdigest()[:8]

    def resolved(self) -> dict[str, Any]:
        """The spec as run: defaults filled in, the family's default space merged, mode inferred."""
        out = self.spec.model_dump(mode="json")
        if self.objectives:
            out["metric"] = [{"name": name, "mode": mode} for name, mode in self.objectives]
        else:
            out["metric"]["mode"] = self.mode
        out["space"] = {name: _entry(p) for name, p in self.params.items()}
        # A default entry the spec removed (`width: null`) stays removed when this validates again.
        removed = [name for name in getattr(self.family, "default_space", {}) if name not in self.params]
        out["space"].update(dict.fromkeys(removed))
        out["evaluation"] = self.spec.evaluation.resolved()
        if not out["constraints"]:  # left out when none, so an unconstrained spec keeps its spec_hash
            del out["constraints"]
        if out["budget"]["in_flight"] == "stop":  # the default, left out as constraints are: the same spec_hash
            del out["budget"]["in_flight"]
        if out["budget"]["stop"] and out["budget"]["stop"]["regret_bound"] is None:  # the same spec_hash as before it
            del out["budget"]["stop"]["regret_bound"]
        return out


def _entry(p: Param) -> Any:
    entry: Any = p.args[0] if p.kind == "constant" else {p.kind: list(p.args)}
    if p.when:
        entry = dict(entry, when={k: list(v) for k, v in p.when.items()})
    return entry

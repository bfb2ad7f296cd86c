"""The contract a model family fulfils, and the `trial` it trains in: what a family module imports.

A built-in family (a module in `experiments/` with a `FAMILY` object) supplies one decision, how
to train one config, through `train(config, data, trial)`; the framework owns data loading,
evaluation names, resources and reporting. `trial` is anything that fulfils `Trial`: the Ray
trial (orchestrator.trial.context), one fold's view of it under k-fold (orchestrator.trial.folds),
the refit after the search (orchestrator.run.refit), or a test's fake; a family depends on this
contract and on nothing of Ray's.

What a user takes home is the refit's model: a family hands its finished model over with
`trial.keep(model)`, and names, in `Family.model_format`, the entry of orchestrator.model.formats that
saves it in its library's own format. Only the refit's context stores it; in a Ray trial `keep` does
nothing, so a search never pays for it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from orchestrator.families.metrics import COSTS, Mode, reported


@dataclass(frozen=True)
class Family:
    """A built-in family.

    Attributes:
        train: `train(config, data, trial)`; calls `trial.report(...)` once per iteration
            (boosting round, epoch) so that schedulers can stop it early.
        default_space: YAML-shaped space used where the spec gives none; the spec's `space:`
            overrides it entry by entry.
        iterations_param: the hyperparameter that sets how many iterations a trial reports;
            a scheduler's `max_t` above its largest value could never be reached.
        checkpoints: whether `train` saves state through `trial.report(..., state=...)` and
            resumes from `trial.restore()` (needed by PBT and resume).
        metrics: names reported and their natural mode; None means the shared vocabulary of
            `orchestrator.families.metrics` for the data's task.
        params: hyperparameters `train` understands beyond those of `default_space`. A spec
            naming any other one is refused with a did-you-mean (XGBoost silently ignores
            `learnig_rate`), unless the spec lists it under `extra_params:` on purpose. None: the
            family passes every name on to a library that checks them itself, so nothing is checked.
        check_space: the family's own rules on the parsed space (`{name: orchestrator.search.space.Param}`),
            returning `orchestrator.errors.Problem`s; run by `hpo validate` with every other check.
        costs: cost metrics (`orchestrator.families.metrics.COSTS`: `predict_ms`, `model_size`) `train`
            reports at a trial's last report when the spec lists them (`metrics.wants`).
        optima: the known optimum of a reported metric (a test function's), written to
            experiment.json so that analysis reports regret without importing the family.
        model_format: the entry of `orchestrator.model.formats.FORMATS` that saves what `train` hands
            to `trial.keep(...)` (its docstring says what object it takes); None: the family keeps no
            model, and nothing is saved after the refit.
        library: the module `train` imports (inside `train`, so that validating a spec does not);
            where the refit will train in the driver, the driver imports it while Ray starts
            (orchestrator.run.lifecycle), not after the search.
    """

    name: str
    train: Callable[..., None]
    default_space: Mapping[str, Any]
    iterations_param: str | None = None
    checkpoints: bool = False
    metrics: Mapping[str, Mode] | None = None
    needs_data: bool = True
    params: tuple[str, ...] | None = None
    check_space: Callable[[Mapping[str, Any]], list] | None = None
    costs: tuple[str, ...] = ()
    optima: Mapping[str, float] | None = None
    model_format: str | None = None
    library: str | None = None

    def known_params(self) -> list[str] | None:
        """Every hyperparameter name this family understands, or None if it does not say."""
        return None if self.params is None else sorted({*self.default_space, *self.params})

    def reports(self, task: str | None) -> dict[str, Mode]:
        known = dict(self.metrics) if self.metrics is not None else reported(task or "classification")
        return {**known, **{name: COSTS[name] for name in self.costs}}


@runtime_checkable
class Trial(Protocol):
    """The trial a family trains in.

    Attributes:
        seed: seeds the model (and anything random in training).
        cpus: threads to use, exactly (what Ray assigned).
        gpus: GPUs Ray assigned (0.5 for half a GPU).
        metric: the spec's metric name, so a family can skip work no one asked for; None outside
            a search (the refit, tests), meaning "report everything".
        checkpointing: whether `report` will save a `state=` (build state only then).
    """

    seed: int
    cpus: int
    gpus: float
    metric: str | None

    @property
    def device(self) -> str:
        """'cuda' when the trial has a GPU, else 'cpu'."""

    @property
    def checkpointing(self) -> bool: ...

    def report(self, metrics: dict[str, Any], state: Any = None) -> None:
        """One iteration's metrics; `state` (any picklable object) becomes its checkpoint."""

    def restore(self) -> Any | None:
        """The state this trial resumes from (PBT exploit, resume), or None."""

    def keep(self, model: Any) -> None:
        """The finished model, once `train` has trained its last iteration: the refit saves it
        (`Family.model_format`); a trial inside a search ignores it. Call it after the last report."""

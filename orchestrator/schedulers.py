"""Scheduler registry: a name in the spec -> a typed options model and a lazy factory.

Schedulers never get `metric`/`mode`: those are owned by `TuneConfig` (Ray refuses them in both
places). Every scheduler measures time in reported iterations (`training_iteration`), the unit
families report in, so `max_t` and `grace_period` count reports.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Literal

from pydantic import Field, field_validator, model_validator

from orchestrator.base import StrictModel


class SchedulerOptions(StrictModel):
    pass


class FIFOOptions(SchedulerOptions):
    name: Literal["fifo"] = "fifo"


class ASHAOptions(SchedulerOptions):
    name: Literal["asha"] = "asha"
    max_t: int = Field(100, ge=1, description="most iterations any trial runs")
    grace_period: int = Field(1, ge=1, description="iterations before a trial can be stopped")
    reduction_factor: float = Field(3, gt=1)
    brackets: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _grace_within_max_t(self):
        if self.grace_period > self.max_t:
            raise ValueError(f"grace_period ({self.grace_period}) must be <= max_t ({self.max_t}); "
                             f"lower grace_period or raise max_t")
        return self


class HyperBandOptions(SchedulerOptions):
    name: Literal["hyperband"] = "hyperband"
    max_t: int = Field(81, ge=1)
    reduction_factor: float = Field(3, gt=1)
    stop_last_trials: bool = True


class BOHBHyperBandOptions(HyperBandOptions):
    name: Literal["bohb-hyperband"] = "bohb-hyperband"


class MedianStoppingOptions(SchedulerOptions):
    name: Literal["median-stopping"] = "median-stopping"
    grace_period: int = Field(1, ge=1, description="iterations before a trial can be stopped")
    min_samples_required: int = Field(3, ge=1, description="finished trials needed to compute the median")


class PBTOptions(SchedulerOptions):
    """Population based training: every `perturbation_interval` iterations, the bottom quantile
    copies (exploits) a top trial's checkpoint and perturbs (explores) the named parameters."""

    name: Literal["pbt"] = "pbt"
    perturbation_interval: int = Field(2, ge=1)
    hyperparam_mutations: list[str] = Field(min_length=1, description="space parameters PBT may change")
    quantile_fraction: float = Field(0.25, gt=0, le=0.5)
    resample_probability: float = Field(0.25, ge=0, le=1)

    @field_validator("hyperparam_mutations")
    @classmethod
    def _distinct(cls, v):
        if len(set(v)) != len(v):
            raise ValueError(f"list each parameter once, got {v}")
        return v


class PB2Options(PBTOptions):
    """PBT whose explore step is a GP bandit over the numeric ranges of the named parameters."""

    name: Literal["pb2"] = "pb2"


@dataclass(frozen=True)
class SchedulerEntry:
    options: type[SchedulerOptions]
    build: Callable[..., Any]
    summary: str
    stops_early: bool = False  # needs per-iteration reports to do anything
    needs_checkpoints: bool = False  # restores trials from checkpoints (the family must save them)
    pauses: bool = False  # pauses trials at rungs and resumes them later: a checkpoint at every report
    clones_trials: bool = False  # a trial may load another trial's checkpoint (population based)
    needs_searcher: tuple[str, ...] | None = None  # only these searchers work with it
    numeric_mutations: bool = False  # mutated parameters must be numeric ranges


def _build_fifo(opts: FIFOOptions, params=None):
    from ray.tune.schedulers import FIFOScheduler

    return FIFOScheduler()


def _build_asha(opts: ASHAOptions, params=None):
    from ray.tune.schedulers import ASHAScheduler

    return ASHAScheduler(
        time_attr="training_iteration",
        max_t=opts.max_t,
        grace_period=opts.grace_period,
        reduction_factor=opts.reduction_factor,
        brackets=opts.brackets,
    )


def _build_hyperband(opts: HyperBandOptions, params=None):
    from orchestrator.ray_schedulers import FinishingHyperBand

    return FinishingHyperBand(time_attr="training_iteration", max_t=opts.max_t,
                              reduction_factor=opts.reduction_factor, stop_last_trials=opts.stop_last_trials)


def _build_bohb_hyperband(opts: BOHBHyperBandOptions, params=None):
    from orchestrator.ray_schedulers import FinishingHyperBandForBOHB

    return FinishingHyperBandForBOHB(time_attr="training_iteration", max_t=opts.max_t,
                            reduction_factor=opts.reduction_factor, stop_last_trials=opts.stop_last_trials)


def _build_median(opts: MedianStoppingOptions, params=None):
    from orchestrator.ray_schedulers import ContinuingMedianStoppingRule

    return ContinuingMedianStoppingRule(time_attr="training_iteration", grace_period=opts.grace_period,
                                        min_samples_required=opts.min_samples_required)


def _build_pbt(opts: PBTOptions, params):
    from ray.tune.schedulers import PopulationBasedTraining

    from orchestrator.space import to_tune

    mutations = to_tune({n: params[n] for n in opts.hyperparam_mutations})
    return PopulationBasedTraining(time_attr="training_iteration", perturbation_interval=opts.perturbation_interval,
                                   hyperparam_mutations=mutations, quantile_fraction=opts.quantile_fraction,
                                   resample_probability=opts.resample_probability)


def _build_pb2(opts: PB2Options, params):
    import warnings

    from ray.tune.schedulers.pb2 import PB2
    from sklearn.exceptions import ConvergenceWarning

    # PB2 refits a small GP at every perturbation; its optimiser's convergence notes are not actionable.
    warnings.filterwarnings("ignore", category=ConvergenceWarning)

    bounds = {n: [params[n].args[0], params[n].args[1]] for n in opts.hyperparam_mutations}
    return PB2(time_attr="training_iteration", perturbation_interval=opts.perturbation_interval,
               hyperparam_bounds=bounds, quantile_fraction=opts.quantile_fraction)


_POPULATION = ("random", "grid")  # Ray refuses any SearchGenerator beside PBT/PB2

SCHEDULERS: dict[str, SchedulerEntry] = {
    "fifo": SchedulerEntry(FIFOOptions, _build_fifo, "run every trial to completion"),
    "asha": SchedulerEntry(ASHAOptions, _build_asha, "asynchronous successive halving: stops weak trials early",
                           stops_early=True),
    "hyperband": SchedulerEntry(HyperBandOptions, _build_hyperband, "synchronous HyperBand brackets",
                                stops_early=True, needs_checkpoints=True, pauses=True),
    "bohb-hyperband": SchedulerEntry(BOHBHyperBandOptions, _build_bohb_hyperband,
                                     "HyperBand for BOHB (pairs with searcher bohb)", stops_early=True,
                                     needs_searcher=("bohb",), needs_checkpoints=True, pauses=True),
    "median-stopping": SchedulerEntry(MedianStoppingOptions, _build_median,
                                      "stops a trial below the median of others at the same iteration",
                                      stops_early=True),
    "pbt": SchedulerEntry(PBTOptions, _build_pbt, "population based training: exploit + explore",
                          needs_checkpoints=True, clones_trials=True, needs_searcher=_POPULATION),
    "pb2": SchedulerEntry(PB2Options, _build_pb2, "PBT with a GP-bandit explore step (numeric parameters)",
                          needs_checkpoints=True, clones_trials=True, needs_searcher=_POPULATION,
                          numeric_mutations=True),
}


def build_scheduler(opts: SchedulerOptions, params=None):
    """`params` (the parsed space) is needed by the population schedulers to build mutations."""
    return SCHEDULERS[opts.name].build(opts, params)

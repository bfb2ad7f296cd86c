"""Scheduler registry: a name in the spec -> a typed options model and a lazy factory.

Schedulers never get `metric`/`mode`: those are owned by `TuneConfig` (Ray refuses them in both
places). Every scheduler measures time in reported iterations (`training_iteration`), the unit
families report in, so `max_t` and `grace_period` count reports.

Every entry owns its rules (which searchers it pairs with, whether the family must checkpoint,
PBT's mutations), its checkpoint policy (how often a trial saves state for it, and whether trials
load each other's checkpoints; orchestrator.run.checkpoints prunes accordingly), and how late its
decisions may come: `report_window_s` lets a built-in family's trial batch its reports (see
orchestrator.trial.context), except at the iterations it decides at (`on_time`: ASHA's rungs).
Schedulers that pause trials at milestones or clone them (HyperBand, PBT)
need every report on time, as Ray's own result buffering assumes (it is forced off for them).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from orchestrator.base import StrictModel
from orchestrator.errors import Problem
from orchestrator.families.contract import Family
from orchestrator.search.rules import Rule, Strategy, flat_space, one_objective


class SchedulerOptions(StrictModel):
    section: ClassVar[str] = "scheduler"


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
class CheckpointPolicy:
    """How a scheduler needs trials to checkpoint."""

    every: int = 0  # save state every this many reports; 0: never
    shared: bool = False  # trials load each other's checkpoints (population based)


NEVER = CheckpointPolicy()


@dataclass(frozen=True)
class SchedulerEntry:
    options: type[SchedulerOptions]
    build: Callable[..., Any]
    rules: tuple[Rule, ...] = ()
    checkpoints: Callable[[Any], CheckpointPolicy] = lambda opts: NEVER
    report_window_s: float = 0.0  # reports may reach the scheduler this much later than they happen
    on_time: Callable[[Any], frozenset[int]] = lambda opts: frozenset()  # iterations it decides at: never late
    changes_config: bool = False  # a trial's config changes mid-run (PBT): the refit replays its schedule

    def check(self, strategy: Strategy) -> list[Problem]:
        problems = _max_t_reachable(strategy.scheduler, strategy)
        for rule in self.rules:
            problems += rule(strategy.scheduler, strategy)
        return problems


def _max_t_reachable(opts: SchedulerOptions, strategy: Strategy) -> list[Problem]:
    max_t, most = getattr(opts, "max_t", None), strategy.most_iterations
    if max_t is None or most is None or max_t <= most:
        return []
    return [Problem("scheduler.max_t", f"{max_t} is above the most iterations a trial reports "
                                       f"({strategy.iterations_param} <= {most}); lower max_t to {most} "
                                       f"or raise {strategy.iterations_param}")]


def with_searchers(*names: str) -> Rule:
    def rule(opts: SchedulerOptions, strategy: Strategy) -> list[Problem]:
        if strategy.searcher.name in names:
            return []
        return [Problem("searcher.name", f"scheduler {opts.name} only works with searcher "
                                         f"{' or '.join(names)}, got {strategy.searcher.name}")]

    return rule


def checkpointing_family(opts: SchedulerOptions, strategy: Strategy) -> list[Problem]:
    """The scheduler resumes trials from checkpoints, so the family must save them."""
    family = strategy.family
    if isinstance(family, Family) and not family.checkpoints:
        return [Problem("scheduler.name", f"{opts.name} resumes trials from checkpoints, and family "
                                          f"{family.name} does not save any; use asha or median-stopping")]
    return []


def mutations(opts: PBTOptions, strategy: Strategy) -> list[Problem]:
    """PBT/PB2 mutate parameters of the space, and need room to perturb before a trial ends."""
    problems, params = [], strategy.params
    for i, pname in enumerate(opts.hyperparam_mutations):
        path = f"scheduler.hyperparam_mutations[{i}]"
        p = params.get(pname)
        if p is None:
            problems.append(Problem(path, f"{pname!r} is not in the space; parameters: {', '.join(params)}"))
        elif p.kind in ("constant", "grid"):
            problems.append(Problem(path, f"{pname} is a {p.kind}; mutate a range or a choice"))
    most = strategy.most_iterations
    if most is not None and opts.perturbation_interval >= most:
        problems.append(Problem("scheduler.perturbation_interval",
                                f"{opts.perturbation_interval} leaves no room to perturb: trials run at most "
                                f"{most} iterations; lower it below {most}"))
    return problems


def numeric_mutations(opts: PBTOptions, strategy: Strategy) -> list[Problem]:
    """PB2's GP bandit explores numeric ranges only."""
    out = []
    for i, pname in enumerate(opts.hyperparam_mutations):
        p = strategy.params.get(pname)
        if p is not None and p.kind not in ("constant", "grid") and not p.is_numeric_range:
            out.append(Problem(f"scheduler.hyperparam_mutations[{i}]", f"{opts.name} explores numeric ranges "
                                                                       f"only; {pname} is a {p.kind}: use pbt, "
                                                                       f"or make it a range"))
    return out


def asha_rungs(opts: ASHAOptions) -> frozenset[int]:
    """The iterations at which ASHA compares trials (Ray's `_Bracket` rungs, every bracket).

    A batched trial sends these reports on time, so each rung compares every trial at the same
    iteration, exactly as without batching.
    """
    rungs = set()
    for s in range(opts.brackets):
        count = int(math.log(opts.max_t / opts.grace_period) / math.log(opts.reduction_factor) - s + 1)
        rungs |= {math.ceil(opts.grace_period * opts.reduction_factor ** (k + s)) for k in range(count)}
    return frozenset(rungs)


def _build_fifo(opts: FIFOOptions, params=None):
    from orchestrator.search.ray_schedulers import PickingFIFOScheduler

    return PickingFIFOScheduler()


def _build_asha(opts: ASHAOptions, params=None):
    from orchestrator.search.ray_schedulers import PickingASHAScheduler

    return PickingASHAScheduler(
        time_attr="training_iteration",
        max_t=opts.max_t,
        grace_period=opts.grace_period,
        reduction_factor=opts.reduction_factor,
        brackets=opts.brackets,
    )


def _build_hyperband(opts: HyperBandOptions, params=None):
    from orchestrator.search.ray_schedulers import FinishingHyperBand

    return FinishingHyperBand(time_attr="training_iteration", max_t=opts.max_t,
                              reduction_factor=opts.reduction_factor, stop_last_trials=opts.stop_last_trials)


def _build_bohb_hyperband(opts: BOHBHyperBandOptions, params=None):
    from orchestrator.search.ray_schedulers import FinishingHyperBandForBOHB

    return FinishingHyperBandForBOHB(time_attr="training_iteration", max_t=opts.max_t,
                            reduction_factor=opts.reduction_factor, stop_last_trials=opts.stop_last_trials)


def _build_median(opts: MedianStoppingOptions, params=None):
    from orchestrator.search.ray_schedulers import ContinuingMedianStoppingRule

    return ContinuingMedianStoppingRule(time_attr="training_iteration", grace_period=opts.grace_period,
                                        min_samples_required=opts.min_samples_required)


def _build_pbt(opts: PBTOptions, params):
    from ray.tune.schedulers import PopulationBasedTraining

    from orchestrator.search.space import to_tune

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


_POPULATION = (with_searchers("random", "grid"),  # Ray refuses any SearchGenerator beside PBT/PB2
               checkpointing_family, flat_space, mutations, one_objective)
_EVERY_REPORT = CheckpointPolicy(every=1)  # a paused trial resumes from its last report


def _perturbations(opts: PBTOptions) -> CheckpointPolicy:
    return CheckpointPolicy(every=opts.perturbation_interval, shared=True)


# Half a second of lateness: a stop comes at most that much training late, while tiny trials send
# one or two reports instead of one per iteration.
LATE_OK_S = 0.5

SCHEDULERS: dict[str, SchedulerEntry] = {
    "fifo": SchedulerEntry(FIFOOptions, _build_fifo, report_window_s=LATE_OK_S),
    # Every scheduler but FIFO ranks trials on the first metric: with several, `one_objective` refuses it.
    "asha": SchedulerEntry(ASHAOptions, _build_asha, rules=(one_objective,), report_window_s=LATE_OK_S,
                           on_time=asha_rungs),
    "hyperband": SchedulerEntry(HyperBandOptions, _build_hyperband, rules=(checkpointing_family, one_objective),
                                checkpoints=lambda opts: _EVERY_REPORT),
    "bohb-hyperband": SchedulerEntry(BOHBHyperBandOptions, _build_bohb_hyperband,
                                     rules=(with_searchers("bohb"), checkpointing_family, one_objective),
                                     checkpoints=lambda opts: _EVERY_REPORT),
    "median-stopping": SchedulerEntry(MedianStoppingOptions, _build_median, rules=(one_objective,),
                                      report_window_s=LATE_OK_S),
    "pbt": SchedulerEntry(PBTOptions, _build_pbt, rules=_POPULATION, checkpoints=_perturbations,
                          changes_config=True),
    "pb2": SchedulerEntry(PB2Options, _build_pb2, rules=(*_POPULATION, numeric_mutations),
                          checkpoints=_perturbations, changes_config=True),
}


def build_scheduler(opts: SchedulerOptions, params=None):
    """`params` (the parsed space) is needed by the population schedulers to build mutations."""
    return SCHEDULERS[opts.name].build(opts, params)

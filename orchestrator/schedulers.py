"""Scheduler registry: a name in the spec -> a typed options model and a lazy factory.

Schedulers never get `metric`/`mode`: those are owned by `TuneConfig` (Ray refuses them in both
places). Every scheduler measures time in reported iterations (`training_iteration`), the unit
families report in, so `max_t` and `grace_period` count reports.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Literal

from pydantic import Field, model_validator

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


@dataclass(frozen=True)
class SchedulerEntry:
    options: type[SchedulerOptions]
    build: Callable[[Any], Any]
    summary: str
    stops_early: bool = False  # needs per-iteration reports to do anything


def _build_fifo(opts: FIFOOptions):
    from ray.tune.schedulers import FIFOScheduler

    return FIFOScheduler()


def _build_asha(opts: ASHAOptions):
    from ray.tune.schedulers import ASHAScheduler

    return ASHAScheduler(
        time_attr="training_iteration",
        max_t=opts.max_t,
        grace_period=opts.grace_period,
        reduction_factor=opts.reduction_factor,
        brackets=opts.brackets,
    )


SCHEDULERS: dict[str, SchedulerEntry] = {
    "fifo": SchedulerEntry(FIFOOptions, _build_fifo, "run every trial to completion"),
    "asha": SchedulerEntry(ASHAOptions, _build_asha, "asynchronous successive halving: stops weak trials early",
                           stops_early=True),
}


def build_scheduler(opts: SchedulerOptions):
    return SCHEDULERS[opts.name].build(opts)

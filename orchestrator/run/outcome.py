"""How a run ended, as a pure function of what it recorded and how its fit returned.

`outcome()` reads only the Recorder's trials and the `Ended` that `lifecycle.fit` returned, so
a fresh run, a resumed one and a test with a hand-made Recorder get the same answer:

- `interrupted` when a signal ended the fit (Ctrl-C, SIGTERM, `hpo stop`);
- `failed` when Tune failed (the reason, in one line), or when the run ended normally with no
  best trial (several metrics: no Pareto front), saying why: with constraints, that no trial met
  them, and how close the trials came;
- `finished` otherwise, with the best trial (or the front) and the counts by status.
"""

from __future__ import annotations

import signal
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from orchestrator.results.contract import ELIGIBLE
from orchestrator.results.pareto import FRONT_STATUS
from orchestrator.results.writer import Recorder, TrialRecord
from orchestrator.spec.experiment import Experiment

NO_REFIT = ("several objectives: no single best config to refit on train+valid; pick a trade-off from the "
            "Pareto front (trials.parquet column pareto) and refit it with a one-metric spec")


@dataclass(frozen=True)
class Ended:
    """How `lifecycle.fit` returned: the signal that stopped it, or why Tune failed; else neither
    (and, when a rule such as `budget.stop` ended the search early, which one and why)."""

    signum: int | None = None
    failure: str | None = None
    stop_reason: str | None = None  # a rule of orchestrator.run.stopping ended the search early


@dataclass(frozen=True)
class Outcome:
    status: str  # finished | failed | interrupted, as experiment.json records it
    failure: str | None  # why it failed or was interrupted
    signum: int | None
    counts: dict[str, int]  # trials by status, plus `not_started`
    best: TrialRecord | None  # one metric: the best trial
    pareto: list[dict[str, Any]] | None  # several metrics: the front, best first on the first

    @property
    def best_row(self) -> dict[str, Any] | None:
        return self.best.row() if self.best else None

    @property
    def signal_name(self) -> str | None:
        return signal.Signals(self.signum).name if self.signum else None


def outcome(exp: Experiment, recorder: Recorder, ended: Ended) -> Outcome:
    """The run's status, counts and best trial (or front), from what `recorder` holds."""
    best = None if exp.multi_objective else recorder.best
    pareto = recorder.pareto() if exp.multi_objective else None
    counts = {**recorder.counts(), "not_started": max(0, exp.total_trials - len(recorder.trials))}
    failure = ended.failure
    if ended.signum:
        failure = (f"interrupted by {signal.Signals(ended.signum).name}: {counts['interrupted']} trials cut off, "
                   f"{counts['not_started']} never started; results so far are in {recorder.run_dir}")
    elif failure is None and best is None and not pareto:
        failure = no_feasible(recorder) or (no_front(exp.objectives, recorder.rows()) if exp.multi_objective
                                            else no_best(recorder, exp.metric))
    status = "interrupted" if ended.signum else "failed" if failure else "finished"
    return Outcome(status, failure, ended.signum, counts, best, pareto)


def no_best(recorder: Recorder, metric: str) -> str:
    """Why a run that ended normally has no best trial."""
    errors = [r.error for r in recorder.trials.values() if r.status == "errored" and r.error]
    if errors:
        return (f"no trial reported a finite {metric} and ended normally; {len(errors)} errored, "
                f"the first: {errors[0]} (all errors: trials.parquet, column error)")
    if not recorder.trials:
        return "no trial started; see the log above"
    return f"no trial reported a finite value of {metric} (NaN and infinite scores are never the best)"


def no_feasible(recorder: Recorder) -> str | None:
    """Why a constrained run has no best trial (or front) when trials did end with a score but none
    is known to meet the constraints; None when that is not the reason."""
    if not recorder.constraints:
        return None
    done = [r for r in recorder.trials.values() if r.status in ELIGIBLE]
    if not done or any(r.feasible for r in done):
        return None
    parts = []
    for c in recorder.constraints:
        reported = [r.last[c.metric] for r in done if isinstance(r.last.get(c.metric), (int, float))]
        if not reported:
            parts.append(f"{c}: no trial reported {c.metric}")
        else:
            closest = min(reported) if c.max is not None else max(reported)
            parts.append(f"{c}: the closest trial had {closest:g}")
    return (f"no feasible trial: {len(done)} trials ended normally and none met every constraint "
            f"({'; '.join(parts)}); loosen the constraints or widen the space (trials.parquet: feasible, "
            f"constraint.*)")


def no_front(objectives: Sequence[tuple[str, str]], rows: list[dict[str, Any]]) -> str:
    """Why a multi-objective run that ended normally has no front, naming a metric no trial reported."""
    names = [n for n, _ in objectives]
    done = [r for r in rows if r.get("status") == FRONT_STATUS]
    reported = sorted({k.removeprefix("metric.") for r in done for k, v in r.items()
                       if k.startswith("metric.") and v is not None})
    never = [n for n in names if n not in reported]
    if done and never:
        return (f"no completed trial reported {', '.join(never)}: they reported {', '.join(reported)}; list metrics "
                f"the trials report (metric: [...]), or report them at each trial's end")
    return (f"no trial completed with a finite value of every objective ({', '.join(names)}); see trials.parquet "
            f"(status, error, metric.*)")


def pareto_evaluation(pareto: list[dict[str, Any]]) -> dict[str, Any]:
    """experiment.json's `evaluation` entry of a multi-objective run: why there is no refit."""
    return {"protocol": "pareto", "refit": None, "skipped": NO_REFIT, "front_size": len(pareto)}

"""Search algorithms that a resumed run can tell what finished after Tune's last snapshot.

Tune snapshots its experiment (trials, the searcher's state) every 10 s or more, and a run killed
between two snapshots (kill -9, OOM, SIGTERM from a scheduler) leaves trials that finished since:
the run's Parquet holds them, Tune's snapshot does not, or holds them as still running. Restored
as it is, Tune would run the second kind again and, for the first kind, propose as many new
trials as it no longer knows: a budget of 24 ended with 34 trials. So every run's search
algorithm is one of the two below; `hpo resume` (orchestrator.run.resume) hands the restored one
the trials that finished after the snapshot (`after_snapshot`), and when Tune restores its state
from the snapshot they are told as they would have been:

- a trial Tune's snapshot holds as running: its result, as Tune reports a trial's end
  (`on_trial_complete`); Tune itself takes it for finished (the resume edits the snapshot);
- a trial created after the snapshot: the searcher gets its config and score as an evaluated point
  (`add_evaluated_point`, which every searcher here takes), and it counts toward `num_samples`.
  Ray's generator (random, grid) creates trials in a fixed order with ids from a counter, so it
  makes that same trial again: it is skipped.

`ResumableSearch` wraps a Ray `Searcher` (with its ConcurrencyLimiter), as Tune itself wraps one;
`ResumableVariants` is Ray's generator. Nothing changes while a run goes on.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from ray.tune.search import BasicVariantGenerator, SearchGenerator

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Finished:
    """A trial that finished after Tune's last snapshot, as the run recorded it."""

    trial_id: str
    config: dict[str, Any]
    result: dict[str, float] | None  # its last reported values; None: it errored
    known: bool  # in the snapshot (as running there), else created after it
    curve: tuple[float, ...] = ()  # its metric by iteration, for searchers that model budgets (BOHB)


class _Told:
    """What both algorithms share: the trials to tell, held until Tune restores the state."""

    _after_snapshot: tuple[Finished, ...] = ()
    told: tuple[str, ...] = ()  # trial ids told by the last restore, for experiment.json

    def after_snapshot(self, finished: list[Finished]) -> None:
        self._after_snapshot = tuple(finished)


class ResumableSearch(_Told, SearchGenerator):
    """Tune's wrapper of a Searcher, which on restore tells it what finished after the snapshot."""

    def restore_from_dir(self, dirpath: str) -> None:
        super().restore_from_dir(dirpath)
        told = []
        for f in self._after_snapshot:
            if f.known:
                self.on_trial_complete(f.trial_id, result=f.result, error=f.result is None)
            else:
                self._counter += 1  # it took one of num_samples
                _add_evaluated_point(self.searcher, f)
            told.append(f.trial_id)
        self.told, self._after_snapshot = tuple(told), ()


class ResumableVariants(_Told, BasicVariantGenerator):
    """Ray's generator of random and grid variants: trials it makes again that had finished after
    the snapshot are skipped; it has nothing to learn."""

    def restore_from_dir(self, dirpath: str) -> None:
        super().restore_from_dir(dirpath)
        self._skip = {f.trial_id for f in self._after_snapshot if not f.known}
        for f in self._after_snapshot:
            if f.known:
                self._live_trials.discard(f.trial_id)
        self.told, self._after_snapshot = tuple(f.trial_id for f in self._after_snapshot), ()

    def next_trial(self):
        trial = super().next_trial()
        while trial is not None and trial.trial_id in getattr(self, "_skip", ()):
            self._skip.discard(trial.trial_id)
            self._live_trials.discard(trial.trial_id)
            trial = super().next_trial()
        return trial


def base_searcher(search_alg: Any) -> Any:
    """The searcher inside Tune's wrappers (ResumableSearch -> ConcurrencyLimiter -> the searcher)."""
    while hasattr(search_alg, "searcher"):
        search_alg = search_alg.searcher
    return search_alg


def _add_evaluated_point(searcher: Any, f: Finished) -> None:
    """Through the wrappers (ConcurrencyLimiter forwards it) to the searcher, with the spec's
    metric (a list of values for several)."""
    metric = searcher.metric
    if f.result is None:
        value: Any = None
    elif isinstance(metric, list):
        value = [f.result.get(m) for m in metric]
    else:
        value = f.result.get(metric)
    error = f.result is None or value is None or (isinstance(value, list) and None in value)
    searcher.add_evaluated_point(dict(f.config), value, error=error, intermediate_values=list(f.curve) or None)

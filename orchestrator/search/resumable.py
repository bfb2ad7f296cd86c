"""Search algorithms that a resumed run can tell what happened after Tune's last snapshot.

Tune snapshots its experiment (trials, the searcher's state) every 10 s or more, and a run killed
between two snapshots (kill -9, OOM, SIGTERM from a scheduler) leaves trials the snapshot does not
know as they ended: the run's Parquet holds them, Tune's snapshot does not, or holds them as still
running. Restored as it is, Tune would run the second kind again and, in place of the first kind,
propose new trials: a budget of 24 ended with 34. So every run's search algorithm is one of the
two below; `hpo resume` (orchestrator.run.resume) hands the restored one what happened after the
snapshot (`after_snapshot`), and when Tune restores its state from the snapshot it is told:

- a trial Tune's snapshot holds as running that finished: its result, as Tune reports a trial's
  end (`on_trial_complete`); Tune itself takes it for finished (the resume edits the snapshot);
- a trial created after the snapshot that finished: the searcher gets its config and score as an
  evaluated point (`add_evaluated_point`, which every searcher here takes), and it counts toward
  `num_samples`;
- a trial created after the snapshot and cut off: it is created again, under its own id and with
  its own config, so it runs to its end and the search keeps to its budget; its result then
  reaches the searcher as an evaluated point, since the searcher never proposed it.

Ray's generator (random, grid) creates trials in a fixed order with ids from a counter: it makes
a trial created after the snapshot again by itself, so one that had finished is skipped.

What was told travels in the algorithm's own state, which Tune snapshots with the searcher's: a
resume killed before Tune's next snapshot tells the same trials again, and one after it does not.
`ResumableSearch` wraps a Ray `Searcher` and its ConcurrencyLimiter, as Tune itself would;
`ResumableVariants` is Ray's generator. While a run goes on they do nothing of their own.
"""

from __future__ import annotations

import copy
import itertools
import logging
from dataclasses import dataclass
from typing import Any

from ray.tune.search import BasicVariantGenerator, SearchGenerator

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AfterSnapshot:
    """A trial whose end (or start) came after Tune's last snapshot, as the run recorded it."""

    trial_id: str
    config: dict[str, Any]  # the sampled parameters (a re-created trial: its whole config)
    result: dict[str, float] | None  # its last reported values; None: it errored, or was cut off
    known: bool  # in the snapshot (as running there), else created after it
    finished: bool = True  # False: cut off, to be created again
    curve: tuple[float, ...] = ()  # its metric by iteration, for searchers that model budgets (BOHB)


class _Told:
    """What both algorithms share: what to tell, held until Tune restores the state, and what was."""

    _after_snapshot: tuple[AfterSnapshot, ...] = ()
    _new_total: int | None = None  # the run's budget, when a resume changed it (--set budget.trials=N)

    def after_snapshot(self, trials: list[AfterSnapshot], total: int | None = None) -> None:
        self._after_snapshot, self._new_total = tuple(trials), total

    @property
    def told(self) -> set[str]:
        return self.__dict__.setdefault("_told", set())


class ResumableSearch(_Told, SearchGenerator):
    """Tune's wrapper of a Searcher (inside its ConcurrencyLimiter), which on restore tells it what
    happened after the snapshot, and creates the trials that were cut off again.

    Its own state, snapshotted with the searcher's: `_told` (trials whose end it told the searcher),
    `_rerun` (cut-off trials to create again: id, config), `_rerunning` (created again, not ended)."""

    def get_state(self) -> dict:
        return {**super().get_state(), "hpo_told": sorted(self.told), "hpo_rerun": list(self._reruns()),
                "hpo_rerunning": dict(self._running_again())}

    def set_state(self, state: dict) -> None:
        state = dict(state)
        self._told = set(state.pop("hpo_told", ()))
        self._rerun = [tuple(r) for r in state.pop("hpo_rerun", ())]
        self._rerunning = dict(state.pop("hpo_rerunning", {}))
        super().set_state(state)

    def restore_from_dir(self, dirpath: str) -> None:
        after, self._after_snapshot = self._after_snapshot, ()
        total, self._new_total = self._new_total, None
        super().restore_from_dir(dirpath)
        if total is not None and total != self._total_samples:  # a new budget: the searcher goes on to it
            self._total_samples, self._finished = total, False
        for t in after:
            if not t.finished:
                room = self._total_samples - self._counter - len(self._reruns())  # never beyond num_samples
                if room > 0 and t.trial_id not in {i for i, _ in self._reruns()} | set(self._running_again()):
                    self._reruns().append((t.trial_id, dict(t.config)))
            elif t.trial_id in self.told:
                continue  # told by an earlier resume, whose state this is
            elif t.trial_id in self._running_again():  # created again, ended after the snapshot
                self._ended_again(t.trial_id, t.result, t.curve)
            elif t.trial_id in {i for i, _ in self._reruns()}:  # created again and ended, all after it
                self._rerun = [r for r in self._reruns() if r[0] != t.trial_id]
                self._counter += 1
                _add_evaluated_point(self.searcher, t.config, t.result, t.curve)
                self.told.add(t.trial_id)
            elif t.known:  # proposed by the searcher before the snapshot, which holds it as pending
                self.on_trial_complete(t.trial_id, result=t.result, error=t.result is None)
                self.told.add(t.trial_id)
            else:  # proposed and ended after the snapshot: it took one of num_samples
                self._counter += 1
                _add_evaluated_point(self.searcher, t.config, t.result, t.curve)
                self.told.add(t.trial_id)

    def _reruns(self) -> list[tuple[str, dict[str, Any]]]:
        return self.__dict__.setdefault("_rerun", [])

    def _running_again(self) -> dict[str, dict[str, Any]]:
        return self.__dict__.setdefault("_rerunning", {})

    def _ended_again(self, trial_id: str, result: dict | None, curve: tuple[float, ...] = ()) -> None:
        config = self._running_again().pop(trial_id)
        self.searcher.live_trials.discard(trial_id)
        _add_evaluated_point(self.searcher, config, result, curve)
        self.told.add(trial_id)

    def create_trial_if_possible(self, experiment_spec: dict):
        """The trials cut off come first, each at once: they held places under the concurrency cap
        when the run was killed (so a searcher that keeps its own cap, as BOHB does, runs them
        beside its own for a while), and no new trial is proposed before them."""
        if not self._reruns():
            return super().create_trial_if_possible(experiment_spec)
        from ray.tune.experiment.config_parser import _create_trial_from_spec
        from ray.tune.utils.util import flatten_dict, merge_dicts

        trial_id, config = self._reruns().pop(0)
        spec = copy.deepcopy(experiment_spec)
        spec["config"] = merge_dicts(spec["config"], copy.deepcopy(config))
        self._counter += 1
        self.searcher.live_trials.add(trial_id)  # a ConcurrencyLimiter that counts counts it too
        self._running_again()[trial_id] = config
        return _create_trial_from_spec(spec, self._parser, evaluated_params=flatten_dict(config),
                                       experiment_tag=f"{self._counter}_again", trial_id=trial_id)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id not in self._running_again():  # the searcher never proposed it: only its end counts
            super().on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self._running_again():
            self._ended_again(trial_id, None if error else result)
        else:
            super().on_trial_complete(trial_id, result=result, error=error)


class ResumableVariants(_Told, BasicVariantGenerator):
    """Ray's generator of random and grid variants: it has nothing to learn; a trial it creates
    again that had finished after the snapshot is skipped, one that was cut off runs again."""

    def get_state(self):
        state = super().get_state()
        if state:  # False where Ray's generator cannot be resumed (a huge grid)
            state.pop("_after_snapshot", None)
            state.pop("_new_total", None)
        return state

    def restore_from_dir(self, dirpath: str) -> None:
        # The restored state replaces the whole generator's (Ray's set_state updates __dict__).
        after, self._after_snapshot = self._after_snapshot, ()
        total, self._new_total = self._new_total, None
        super().restore_from_dir(dirpath)
        if total is not None and total > self._total_samples and self._iterators:  # a new budget
            last = self._iterators[-1]
            per_sample = max(1, self._total_samples // max(1, last.num_samples))  # a grid's points per sample
            more = (total - self._total_samples) // per_sample
            last.num_samples += more
            last.num_samples_left += more
            self._total_samples += more * per_sample
            self._finished = False
            self._trial_generator = []
            for iterator in self._iterators:
                self._trial_generator = itertools.chain(self._trial_generator, iterator)
        made = sum(it.counter for it in self._iterators)  # variants created before the snapshot
        skip = self.__dict__.setdefault("_skip", set())
        for t in after:
            if t.known and t.finished:
                self._live_trials.discard(t.trial_id)  # its place under the concurrency cap is free
            elif t.finished and _index(t.trial_id) >= made:
                skip.add(t.trial_id)  # the generator will make it again: skipped then

    def next_trial(self):
        trial = super().next_trial()
        skip = self.__dict__.get("_skip", set())
        while trial is not None and trial.trial_id in skip:
            skip.discard(trial.trial_id)
            self._live_trials.discard(trial.trial_id)
            trial = super().next_trial()
        return trial


def _index(trial_id: str) -> int:
    """Ray's generator numbers its trials: `<prefix>_<counter>`."""
    tail = trial_id.rpartition("_")[2]
    return int(tail) if tail.isdigit() else -1


def base_searcher(search_alg: Any) -> Any:
    """The searcher inside Tune's wrappers (ResumableSearch -> ConcurrencyLimiter -> the searcher)."""
    while hasattr(search_alg, "searcher"):
        search_alg = search_alg.searcher
    return search_alg


def _add_evaluated_point(searcher: Any, config: dict[str, Any], result: dict[str, float] | None,
                         curve: tuple[float, ...] = ()) -> None:
    """Through the wrappers (ConcurrencyLimiter forwards it) to the searcher, with the spec's
    metric (a list of values for several)."""
    metric = searcher.metric
    if result is None:
        value: Any = None
    elif isinstance(metric, list):
        value = [result.get(m) for m in metric]
    else:
        value = result.get(metric)
    error = value is None or (isinstance(value, list) and None in value)
    # Each searcher takes the parameters of its own space from `config` (constants are in it too).
    inner = base_searcher(searcher)
    if getattr(inner, "_constraints", ()):  # a constrained Optuna search: its constraint values from the result
        # (ConcurrencyLimiter forwards only Ray's arguments; it keeps no state of a finished trial)
        inner.add_evaluated_point(dict(config), value, error=error, intermediate_values=list(curve) or None,
                                  result=result)
        return
    searcher.add_evaluated_point(dict(config), value, error=error, intermediate_values=list(curve) or None)

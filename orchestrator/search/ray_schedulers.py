"""Ray scheduler subclasses that fix behaviour we cannot configure away. Imported only when chosen."""

from __future__ import annotations

from ray.tune.experiment import Trial
from ray.tune.schedulers import (
    AsyncHyperBandScheduler,
    FIFOScheduler,
    HyperBandForBOHB,
    HyperBandScheduler,
    MedianStoppingRule,
    TrialScheduler,
)
from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter


class _PicksAmongLiveTrials:
    """Ray's FIFO pick of the next trial to start, without walking every trial of the run.

    At each step of Tune's loop, `FIFOScheduler.choose_trial_to_run` walks the run's whole trial
    list for the first PENDING trial, and again for the first PAUSED one when none is pending
    (every step once the last trials are made). At 10,000 trials it took 15% of the driver's time
    and the per-trial cost grew with the run (docs/performance.md). The same pick, the first in the
    list's order, is made among Tune's live trials (those not ended: PENDING, RUNNING, PAUSED),
    a few dozen at most. Each trial's place in the list is kept as the list grows; all are read
    again only when Tune moved a trial to the end (a retried one), the one change it makes but
    appending. Test: tests/test_strategies.py::test_the_fifo_pick_among_live_trials_is_ray_s_own."""

    _places: dict[Trial, int] | None = None  # each trial's place in Tune's list, as last read

    def choose_trial_to_run(self, tune_controller) -> Trial | None:
        place = self._place_of(tune_controller.get_trials())
        live = tune_controller.get_live_trials()
        for status in (Trial.PENDING, Trial.PAUSED):
            waiting = [trial for trial in live if trial.status == status]
            if waiting:
                return min(waiting, key=place.__getitem__)
        return None

    def _place_of(self, trials: list[Trial]) -> dict[Trial, int]:
        place = self._places or {}
        seen = len(place)  # the list's first `seen` trials, where they were
        if seen > len(trials) or (seen and place.get(trials[seen - 1]) != seen - 1):  # a trial was moved
            place, seen = {}, 0
        place.update((trial, i) for i, trial in enumerate(trials[seen:], seen))
        self._places = place
        return place


class PickingFIFOScheduler(_PicksAmongLiveTrials, FIFOScheduler):
    """Ray's FIFOScheduler, its pick made among the live trials."""


class PickingASHAScheduler(_PicksAmongLiveTrials, AsyncHyperBandScheduler):
    """Ray's ASHA (AsyncHyperBandScheduler), its pick made among the live trials."""


class ContinuingMedianStoppingRule(_PicksAmongLiveTrials, MedianStoppingRule):
    """Ray's rule, except that too few samples means "continue", never "pause".

    Ray pauses such a trial to let pending ones run (time-sharing); a paused trial whose family
    does not checkpoint then restarts from iteration 1, which here cost ~9x the work. Ray's
    `min_time_slice` cannot prevent the first pause (the last pause time starts at -inf).
    """

    def _on_insufficient_samples(self, tune_controller, trial, time: float) -> str:
        return TrialScheduler.CONTINUE


class _StopsFinishedBrackets:
    """Ray's HyperBand left a paused trial waiting forever (the run hung; ~1 in 25 runs here).

    A trial that reaches its bracket's last milestone while others in the bracket are still below it
    is paused. If the last of those others then ends (completes, errors) instead of reporting, Ray's
    `on_trial_remove` skips a bracket that is now finished, and nothing else stops the paused trial.
    """

    def on_trial_remove(self, tune_controller, trial) -> None:
        if trial not in self._trial_info:  # ended before a resume: never in a bracket (below)
            return
        bracket, _ = self._trial_info[trial]
        super().on_trial_remove(tune_controller, trial)
        if bracket.finished():
            bracket.cleanup_full(tune_controller)  # stops the bracket's paused trials


class _LeavesEndedTrialsOutOnResume:
    """`hpo resume` restores Tune's trials but not the scheduler's brackets: Tune adds every trial to
    a fresh scheduler, the ones that had ended too. In a bracket, an ended trial is one that never
    reports again, so the bracket never filled: each live trial was paused after every iteration
    and resumed, and once none could be resumed the run spun forever (seen with BOHB in
    benchmarks/chaos.py). Ended trials stay out of the brackets; the live ones fill new brackets,
    continuing from their checkpoints."""

    def on_trial_add(self, tune_controller, trial) -> None:
        if trial.status not in (Trial.TERMINATED, Trial.ERROR):
            super().on_trial_add(tune_controller, trial)


class _FillsBracketsUnderTheCap:
    """With `budget.concurrent` below a bracket's size, Ray's HyperBand never stopped a trial.

    Two causes, both fixed here:
    - The cap lives in the searcher (Ray's generator's `max_concurrent`, or the ConcurrencyLimiter
      Tune wraps a searcher in), which counts every unfinished trial, paused ones included: once the
      running trials were paused at a rung, no new trial was made to fill the bracket. The cap is
      now widened by the trials paused at a rung (trials about to resume count as running).
    - Ray halves a bracket as soon as every trial added *so far* reached the rung, and keeps
      n0/eta of its n0 slots: with 2 trials of 5 present it kept both. A trial at the rung of a
      bracket that is not full now waits paused while the searcher can still add trials (as Ray's
      HyperBandForBOHB does); when nothing runs, a bracket with paused trials is processed.
    Seen: 9 of 9 trials ran to max_t 9 with `concurrent: 2` (3 should stop at iteration 3).
    `tests/test_strategies.py::test_hyperband_stops_trials_under_a_concurrency_cap` would catch it.
    BOHB's searcher counts paused trials itself (HyperBandForBOHB tells it), so only `hyperband`
    needs this.
    """

    # The run's cap (budget.concurrent), set by the runner when the scheduler is built, so that it
    # travels in Tune's tuner.pkl: the limiter's own value (the cap plus the paused trials) is what
    # Tune's searcher snapshot restores on `hpo resume`, and must not become the new cap.
    cap: int | None = None

    def on_trial_result(self, tune_controller, trial, result):
        bracket, _ = self._trial_info[trial]
        bracket.update_trial_stats(trial, result)
        if bracket.continue_trial(trial):
            decision = TrialScheduler.CONTINUE
        elif not bracket.filled() and not tune_controller.search_alg.is_finished():
            decision = TrialScheduler.PAUSE  # the bracket's other trials are still to come
        else:
            decision = self._process_bracket(tune_controller, bracket)
        self._widen_cap(tune_controller, trial if decision == TrialScheduler.PAUSE else None)
        return decision

    def on_trial_remove(self, tune_controller, trial) -> None:
        super().on_trial_remove(tune_controller, trial)
        self._widen_cap(tune_controller)

    def choose_trial_to_run(self, tune_controller):
        self._widen_cap(tune_controller)
        chosen = super().choose_trial_to_run(tune_controller)
        if chosen is None and not any(t.status in (Trial.RUNNING, Trial.PENDING) for t in tune_controller.get_trials()):
            for bracket in self._brackets():
                if any(t.status == Trial.PAUSED for t in bracket.current_trials()):
                    self._process_bracket(tune_controller, bracket)
            chosen = super().choose_trial_to_run(tune_controller)
        return chosen

    def _brackets(self):
        return [bracket for band in self._hyperbands for bracket in band if bracket is not None]

    def _widen_cap(self, tune_controller, pausing=None) -> None:
        limiter = _limiter(tune_controller.search_alg)
        if limiter is None:
            return
        if self.cap is None:  # built outside the runner
            self.cap = limiter.max_concurrent
        if not self.cap:  # 0: the generator has no cap
            return
        paused = {t for bracket in self._brackets() for t in bracket.current_trials()
                  if t is pausing or (t.status == Trial.PAUSED and t not in bracket.trials_to_unpause)}
        limiter.max_concurrent = self.cap + len(paused)


def _limiter(search_alg):
    """What holds the run's concurrency cap: Ray's generator itself, or the ConcurrencyLimiter."""
    if isinstance(search_alg, BasicVariantGenerator):
        return search_alg
    searcher = getattr(search_alg, "searcher", None)
    while searcher is not None:
        if isinstance(searcher, ConcurrencyLimiter):
            return searcher
        searcher = getattr(searcher, "searcher", None)
    return None


class FinishingHyperBand(_LeavesEndedTrialsOutOnResume, _StopsFinishedBrackets, _FillsBracketsUnderTheCap,
                         HyperBandScheduler):
    """Ray's HyperBandScheduler with finished brackets always closed, and paused trials outside the cap."""


class FinishingHyperBandForBOHB(_LeavesEndedTrialsOutOnResume, _StopsFinishedBrackets, HyperBandForBOHB):
    """Ray's HyperBandForBOHB with finished brackets always closed."""

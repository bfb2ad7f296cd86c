"""Ray scheduler subclasses that fix behaviour we cannot configure away. Imported only when chosen."""

from __future__ import annotations

from ray.tune.schedulers import HyperBandForBOHB, HyperBandScheduler, MedianStoppingRule, TrialScheduler


class ContinuingMedianStoppingRule(MedianStoppingRule):
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
        bracket, _ = self._trial_info[trial]
        super().on_trial_remove(tune_controller, trial)
        if bracket.finished():
            bracket.cleanup_full(tune_controller)  # stops the bracket's paused trials


class FinishingHyperBand(_StopsFinishedBrackets, HyperBandScheduler):
    """Ray's HyperBandScheduler with finished brackets always closed."""


class FinishingHyperBandForBOHB(_StopsFinishedBrackets, HyperBandForBOHB):
    """Ray's HyperBandForBOHB with finished brackets always closed."""

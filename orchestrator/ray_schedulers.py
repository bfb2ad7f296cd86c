"""Ray scheduler subclasses that fix behaviour we cannot configure away. Imported only when chosen."""

from __future__ import annotations

from ray.tune.schedulers import MedianStoppingRule, TrialScheduler


class ContinuingMedianStoppingRule(MedianStoppingRule):
    """Ray's rule, except that too few samples means "continue", never "pause".

    Ray pauses such a trial to let pending ones run (time-sharing); a paused trial whose family
    does not checkpoint then restarts from iteration 1, which here cost ~9x the work. Ray's
    `min_time_slice` cannot prevent the first pause (the last pause time starts at -inf).
    """

    def _on_insufficient_samples(self, tune_controller, trial, time: float) -> str:
        return TrialScheduler.CONTINUE

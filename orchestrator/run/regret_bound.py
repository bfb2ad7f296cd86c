"""`budget.stop: {regret_bound: {}}`: end a search once a model of the objective says the best
found is as good as the search can still tell apart, Optuna's Terminator rule (Makarova et al.,
"Automatic Termination for Hyperparameter Optimization", AutoML 2022).

Its two parts are Optuna's own evaluators, at their defaults:

- `RegretBoundEvaluator`: a Gaussian process fitted to the better half of the finished trials (at
  least 20) bounds, with high probability, how much better than the best so far the optimum can
  be (upper confidence bound at its maximiser minus the lower confidence bound at the best).
- `MedianErrorEvaluator` (Ishibashi et al., AISTATS 2023): the threshold that bound must fall
  below, 1% of the median bound over the search's early trials (trials 11-30). Optuna's
  Terminator defaults to a cross-validation error evaluator instead, which needs each trial's
  fold scores (`report_cross_validation_scores`); our trials report one score, and the median
  rule is the one Optuna pairs with the regret bound for that case.

The search ends when bound < threshold, which needs 30 finished trials at least. Trials count as
`Patience` counts them (in the order they finish, their best score; an infeasible or errored
trial is not a point of the model). Optuna's `optuna.terminator` is deprecated from 4.9 and due to
leave the core in 6.0 (its successor is an OptunaHub package, fetched from the network at run
time, which this project cannot rely on); we pin Optuna 5.0, where it is complete.

Fitting the process takes a fraction of a second per finished trial (the first threshold, 20
fits, a few seconds), so it runs on a worker thread, one evaluation at a time, on a copy of the
trials: the driver's loop never waits for it, and the rule answers with its latest conclusion.
"""

from __future__ import annotations

import logging
import math
import threading
import warnings
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from orchestrator.search.space import Param, optuna_distributions
from orchestrator.spec.experiment import REGRET_BOUND_MIN_TRIALS

log = logging.getLogger(__name__)
MIN_TRIALS = REGRET_BOUND_MIN_TRIALS  # MedianErrorEvaluator's 10 warm-up + 20 initial trials: no threshold before


class _QuietKernelFits(logging.Filter):
    """Drops Optuna's "The optimization of kernel parameters failed" warnings (it falls back to
    default kernel parameters) while this rule evaluates: on near-flat scores it says so at most
    fits, several lines each, in the middle of the run's progress. The rule's own failures are
    still logged (`_evaluate`), and the searcher's own GP (optuna-gp) still warns."""

    active = threading.local()

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(self.active, "on", False)


_QUIET = _QuietKernelFits()
logging.getLogger("optuna._gp.gp").addFilter(_QUIET)


class RegretBound:
    """Told each finished trial (its config and score); `reason()` says when the search should end.

    Args:
        params: the experiment's parameters (the model's inputs: every sampled one).
        mode: the metric's mode.
        seed: the evaluators' random seed.
        background: evaluate on a worker thread (False: at once, for tests and replays).
    """

    def __init__(self, params: Mapping[str, Param], mode: str, seed: int | None = None, background: bool = True):
        import optuna
        from optuna.exceptions import ExperimentalWarning

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)
            from optuna.terminator import MedianErrorEvaluator, RegretBoundEvaluator

            self._improvement = RegretBoundEvaluator(seed=seed)
            self._error = MedianErrorEvaluator(paired_improvement_evaluator=RegretBoundEvaluator(seed=seed))
        self._distributions = optuna_distributions(params)
        self._study = optuna.create_study(direction="minimize" if mode == "min" else "maximize")
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hpo-regret-bound") if background else None
        self._running: Future | None = None
        self._stale = False  # trials told since the evaluation in flight started
        self.finished = 0  # trials told
        self.last: tuple[int, float, float] | None = None  # (trials seen, bound, threshold) of the latest evaluation
        self.stop_reason: str | None = None

    def __getstate__(self) -> dict:
        """Tune pickles the run's callbacks, the Recorder and its listeners (this rule) with them,
        into its experiment snapshot; a copy is never asked (`hpo resume` builds its own), so its
        worker and the evaluation in flight are left out."""
        return {**self.__dict__, "_pool": None, "_running": None}

    def observe(self, trial_id: str, config: Mapping[str, Any], score: float | None) -> None:
        """One more finished trial; `score` None when it has none that could be the best."""
        import optuna

        self.finished += 1
        if score is None or not math.isfinite(score) or self.stop_reason is not None:
            return
        params = {k: config[k] for k in self._distributions if k in config}
        self._study.add_trial(optuna.trial.create_trial(
            params=params, distributions={k: self._distributions[k] for k in params}, value=float(score),
            user_attrs={"hpo_trial_id": trial_id}))
        self._evaluate_soon()

    def reason(self) -> str | None:
        if self.stop_reason is None and self._running is not None and self._running.done():
            future, self._running = self._running, None
            self._conclude(future.result())
            if self._stale:
                self._evaluate_soon()
        return self.stop_reason

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    def _evaluate_soon(self) -> None:
        """Evaluate the trials told so far: now, or on the worker once the evaluation in flight ends."""
        trials = self._study.get_trials(deepcopy=False)
        if len(trials) < MIN_TRIALS or self.stop_reason is not None:
            return
        if self._pool is None:
            self._conclude(self._evaluate(trials))
            return
        if self._running is not None:
            if not self._running.done():
                self._stale = True  # evaluated again when this one ends (reason())
                return
            future, self._running = self._running, None
            self._conclude(future.result())
            if self.stop_reason is not None:
                return
        self._stale = False
        self._running = self._pool.submit(self._evaluate, list(trials))

    def _evaluate(self, trials: list) -> tuple[int, float, float] | None:
        """(trials, bound, threshold); None when the model could not be fitted (the rule then waits
        for more trials: a search is never ended by a failure of its stopping rule)."""
        from optuna.exceptions import ExperimentalWarning

        _QUIET.active.on = True
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ExperimentalWarning)
                direction = self._study.direction
                bound = self._improvement.evaluate(trials, direction)
                threshold = self._error.evaluate(trials, direction)
        except Exception as e:  # logged, and the search goes on
            log.warning("regret_bound: could not evaluate %d trials (%s: %s); trying again at the next",
                        len(trials), type(e).__name__, e)
            return None
        finally:
            _QUIET.active.on = False
        return len(trials), float(bound), float(threshold)

    def _conclude(self, evaluated: tuple[int, float, float] | None) -> None:
        if evaluated is None:
            return
        self.last = seen, bound, threshold = evaluated
        if bound < threshold:
            best = self._study.best_trial
            self.stop_reason = (f"regret_bound: the model's bound on the best's regret ({bound:.4g}) fell below "
                                f"the threshold ({threshold:.4g}, 1% of the early trials' median bound) after "
                                f"{seen} trials with a score (best {best.value:.6g}, "
                                f"{best.user_attrs['hpo_trial_id']})")

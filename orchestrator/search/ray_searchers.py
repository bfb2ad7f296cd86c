"""Ray searcher subclasses that take a finished trial they did not propose (`add_evaluated_point`),
which a resumed run needs for trials that finished after Tune's last snapshot
(orchestrator.search.resumable). Imported only when chosen.

- Optuna: Ray's `OptunaSearch.add_evaluated_point` refuses a define-by-run space, the only kind
  we give it (conditional parameters need one); the trial is added to its study with the
  distributions of our space instead, one value per objective.
  With the spec's constraints it also hands Optuna each finished trial's constraint values
  (`trial.set_constraint`, Optuna 5's per-trial API, which TPE, NSGA-II and GP read from the
  trial itself, no `constraints_func` needed) just before Ray's `on_trial_complete` calls
  `study.tell`: Optuna reads them only from a trial told COMPLETE. A trial that ended without a
  constrained metric (a cost metric is measured at a trial's last report, which a trial ASHA
  stopped never makes) is told as pruned instead: its feasibility is unknown, and the GP sampler
  refuses completed trials with differing numbers of constraints.
- HyperOpt: Ray's `HyperOptSearch` has none; the point becomes a finished trial document in its
  `Trials`, categories as indices, as Ray does for `points_to_evaluate`.
- BOHB: Ray's `TuneBOHB` has none; the result goes to BOHB's model at the budget (iterations) the
  trial reached, as `on_trial_result` hands it results.

Each class is made when first asked for (the module's `__getattr__`): importing Ray's HyperOpt and
BOHB wrappers costs ~1.2 s, which an Optuna run must not pay. Pickle finds a class the same way,
so Tune's snapshots of these searchers restore in a fresh process.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Mapping
from typing import Any

from orchestrator.results.constraints import Constraint, judge
from orchestrator.search.space import Param, optuna_distributions


def __getattr__(name: str) -> type:
    makers = {"DefineByRunOptunaSearch": _optuna, "EvaluatedPointsHyperOptSearch": _hyperopt,
              "EvaluatedPointsBOHB": _bohb}
    if name not in makers:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    cls = makers[name]()
    cls.__module__, cls.__qualname__ = __name__, name
    globals()[name] = cls
    return cls


def _optuna() -> type:
    from ray.tune.search.optuna import OptunaSearch

    return type("DefineByRunOptunaSearch", (_OptunaPoints, OptunaSearch), {})


def _hyperopt() -> type:
    from ray.tune.search.hyperopt import HyperOptSearch

    return type("EvaluatedPointsHyperOptSearch", (_HyperOptPoints, HyperOptSearch), {})


def _bohb() -> type:
    from ray.tune.search.bohb import TuneBOHB

    return type("EvaluatedPointsBOHB", (_BOHBPoints, TuneBOHB), {})


class _OptunaPoints:
    """OptunaSearch over our define-by-run space that also takes evaluated points."""

    _ot_study: Any
    _ot_trials: dict[str, Any]
    _completed_trials: set[str]
    _constraints: tuple[Constraint, ...] = ()  # also for a searcher unpickled from a snapshot made before them

    def __init__(self, *args, params: Mapping[str, Param], constraints: tuple[Constraint, ...] = (), **kwargs):
        super().__init__(*args, **kwargs)
        self._distributions = optuna_distributions(params)
        self._constraints = tuple(constraints)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        ot_trial = self._ot_trials.get(trial_id)
        if self._constraints and result and not error and ot_trial is not None \
                and trial_id not in self._completed_trials:
            values, _ = judge(self._constraints, result)
            if None in values.values():
                result = None  # Ray tells a trial without a result as PRUNED
            else:
                for metric, value in values.items():
                    ot_trial.set_constraint(metric, value)
        super().on_trial_complete(trial_id, result, error)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        # A trial cut off by a stop and continued by `hpo resume` reports again the steps after its
        # last checkpoint; Optuna keeps the first value of a step and warns on each repeat.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The reported value is ignored because this `step=")
            super().on_trial_result(trial_id, result)

    def add_evaluated_point(self, parameters: dict, value: Any, error: bool = False, pruned: bool = False,
                            intermediate_values: list[float] | None = None,
                            result: Mapping[str, Any] | None = None) -> None:
        """`result`: the trial's last result, for the constraint values of a constrained search
        (without them a completed trial is added as pruned, as `on_trial_complete` tells it)."""
        import optuna
        from optuna.trial import TrialState

        dists = {k: d for k, d in self._distributions.items() if k in parameters}
        state = TrialState.FAIL if error else TrialState.PRUNED if pruned else TrialState.COMPLETE
        values: dict[str, float | None] = {}
        if self._constraints and state == TrialState.COMPLETE:
            values, _ = judge(self._constraints, result or {})
            if None in values.values():
                state, values = TrialState.PRUNED, {}
        several = isinstance(value, (list, tuple))
        done = state == TrialState.COMPLETE
        trial = optuna.trial.create_trial(
            state=state, params={k: parameters[k] for k in dists}, distributions=dists,
            value=None if several or not done else value, values=list(value) if several and done else None,
            intermediate_values=dict(enumerate(intermediate_values, start=1)) if intermediate_values else None)
        for metric, v in values.items():
            trial.set_constraint(metric, v)
        self._ot_study.add_trial(trial)


class _HyperOptPoints:
    """HyperOptSearch that also takes evaluated points."""

    _hpopt_trials: Any
    _space: Any
    metric_op: float

    def add_evaluated_point(self, parameters: dict, value: Any, error: bool = False, pruned: bool = False,
                            intermediate_values: list[float] | None = None) -> None:
        import hyperopt as hpo
        from hyperopt.fmin import generate_trial

        point = copy.deepcopy({k: v for k, v in parameters.items() if k in self._space})
        self._convert_categories_to_indices(point)
        tid = self._hpopt_trials.new_trial_ids(1)[0]
        doc = generate_trial(tid, point)
        doc["state"] = hpo.base.JOB_STATE_DONE
        doc["result"] = {"status": hpo.STATUS_FAIL} if error or value is None else \
            {"loss": self.metric_op * float(value), "status": hpo.STATUS_OK}
        self._hpopt_trials.insert_trial_docs([doc])
        self._hpopt_trials.refresh()


class _BOHBPoints:
    """TuneBOHB that also takes evaluated points, at the budget their curve reached."""

    bohber: Any
    _space: Any
    _metric_op: float

    def add_evaluated_point(self, parameters: dict, value: Any, error: bool = False, pruned: bool = False,
                            intermediate_values: list[float] | None = None) -> None:
        from ray.tune.search.bohb.bohb_search import _BOHBJobWrapper

        if error or value is None:
            return  # BOHB's model has no place for a failed run: Ray drops those too
        budget = len(intermediate_values) if intermediate_values else 1
        config = {k: v for k, v in parameters.items() if k in self._space}
        self.bohber.new_result(_BOHBJobWrapper(self._metric_op * float(value), budget, config))

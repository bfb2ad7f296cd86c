"""Ax (BoTorch Bayesian optimisation) as a Ray Tune Searcher, through Ax's own ask/tell `Client`.

Why not Ray's wrapper: Ray 2.60's `ray.tune.search.ax.AxSearch` drives Ax's old `AxClient` and
reads `objective.metric` / `objective.objectives`, which Ax 1.x objectives no longer have; with
ax-platform 1.3.1 building it fails ("AttributeError: 'Objective' object has no attribute
'objectives'"). Ax 1.x's supported API is `ax.api.Client` (configure_experiment,
configure_optimization, get_next_trials, complete_trial), which this class drives as
orchestrator.search.smac drives SMAC.

What we found in Ax 1.3.1 and do about it:

- Constraints are Ax's own: `configure_optimization(outcome_constraints=["c0 <= 2.0"])` models
  each constrained metric as one more output and proposes where they likely hold. So this
  searcher takes the spec's constraints (SearcherEntry.constraints = TAKES).
- Ax parses its objective and constraints as expressions, so a metric named `val-loss` or
  `a.b` would not parse: Ax sees the objective as `m0` and the constraints as `c0`, `c1`, ...
- A choice is given to Ax as unordered indices into its values (space.ax_parameter) and mapped
  back here, so any YAML values work; a quantized range is searched plain and rounded for the trial.
- After its Sobol initial design, each suggestion fits BoTorch's Gaussian process and optimises
  the acquisition function: seconds per suggestion on a small machine (benchmarks/search_quality.py
  prints it). Ax is for trials that cost more than that; `initialization_budget` sets the design.
- Ax holds back proposals while too many trials await results: its initial design pauses after
  `initialization_budget` proposals until enough have data (DataRequiredError), its model steps
  cap the trials in flight (MaxParallelismReachedException, or fewer trials than asked).
  `suggest` then returns None: Tune asks again once a trial ends, as Ray's own wrapper does.
- A trial that errored, or ended without a finite score, is marked failed in Ax (no data). A
  trial HyperBand stops while paused gets no result from Tune: its last reported one counts.
- Ax logs a line per trial at INFO to its own stderr handler: that handler is set to WARNING
  (`set_stderr_log_level`; Ax's loggers set their own levels, so the `ax` logger's level does nothing).
- The state (what was told, what is pending) is plain data; Ax's client is rebuilt from it on
  restore (`hpo resume`) by attaching each trial again, so nothing of Ax's is pickled.
"""

from __future__ import annotations

import logging
import math
import pickle
import random
import warnings
from collections.abc import Mapping
from typing import Any

from ray.tune.search import Searcher

from orchestrator.results.constraints import Constraint
from orchestrator.search.space import KINDS, Param, ax_parameter, contains, on_grid

_REBUILT = ("_ax", "_index")  # left out of the saved state
OBJECTIVE = "m0"  # the objective's name inside Ax; constraint i is f"c{i}"


class AxSearch(Searcher):
    """Ax's Client (Sobol, then BoTorch) behind Ray Tune's Searcher.

    Args:
        params: the experiment's parameters (constants are added to every config).
        metric, mode: what to optimise.
        seed: Ax's random seed (its initial design and acquisition optimisation).
        points: configs to evaluate first, in order; with `rewards`, results already known (warm start).
        constraints: the spec's constraints, handed to Ax as outcome constraints.
        initialization_budget: Sobol trials before the model; None is Ax's own rule.
    """

    def __init__(self, params: Mapping[str, Param], metric: str, mode: str, seed: int,
                 points: list[dict[str, Any]] | None = None, rewards: list[float] | None = None,
                 constraints: tuple[Constraint, ...] = (), initialization_budget: int | None = None):
        super().__init__(metric=metric, mode=mode)
        self.params = dict(params)
        self.seed = seed
        self.initialization_budget = initialization_budget
        self._constraints = tuple(constraints)
        # Plain-data state, saved and restored: results told (values, Ax's outcomes or None if failed)
        # and trials pending (trial id -> values). Points still to try go first.
        self.told: list[tuple[dict[str, Any], dict[str, float] | None]] = []
        self.pending: dict[str, dict[str, Any]] = {}
        self.last: dict[str, dict[str, Any]] = {}  # pending trial -> its last result
        self.queue: list[dict[str, Any]] = [] if rewards is not None else [dict(p) for p in points or ()]
        if rewards is not None:
            self.told = [(self._of_this_space(p), self._outcomes({metric: r})) for p, r in zip(points or (), rewards)]
        self._ax = None  # built on first use, never pickled
        self._index: dict[str, int] = {}  # pending trial -> its Ax trial index

    # --- Ray's Searcher interface -------------------------------------------------------------

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        # The space is ours (param_space is empty); only take metric/mode if Tune passes them.
        self._metric = metric or self._metric
        self._mode = mode or self._mode
        return True

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        ax = self._ensure()
        if self.queue:
            values = self._of_this_space(self.queue.pop(0))
            index = ax.attach_trial(self._to_ax(values))
        else:
            from ax.exceptions.core import DataRequiredError
            from ax.exceptions.generation_strategy import MaxParallelismReachedException

            try:
                with warnings.catch_warnings():
                    # BoTorch's restarts of the acquisition optimisation and its numerical notes.
                    warnings.simplefilter("ignore")
                    proposed = ax.get_next_trials(max_trials=1)
            except (DataRequiredError, MaxParallelismReachedException):
                proposed = {}
            if not proposed:
                return None  # Ax waits for results first: Tune asks again when a trial ends
            index, parameters = next(iter(proposed.items()))
            values = self._from_ax(parameters)
        self.pending[trial_id], self._index[trial_id] = values, index
        return self._trial_config(values)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self.pending:
            self.last[trial_id] = dict(result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        """Tune passes no result for a trial stopped while paused (HyperBand): its last report counts."""
        values = self.pending.pop(trial_id, None)
        last = self.last.pop(trial_id, None)
        index = self._index.pop(trial_id, None)
        if values is None:
            return
        outcomes = None if error else self._outcomes(result or last or {})
        self.told.append((values, outcomes))
        self._tell(index, outcomes)

    def add_evaluated_point(self, parameters: dict, value: Any, error: bool = False, pruned: bool = False,
                            intermediate_values: list[float] | None = None,
                            result: Mapping[str, Any] | None = None) -> None:
        """A finished trial Ax did not propose (one that finished after Tune's last snapshot, told
        on `hpo resume`); `result` carries its constraint values."""
        ax = self._ensure()
        values = self._of_this_space(parameters)
        outcomes = None if error else self._outcomes({**(result or {}), self._metric: value})
        self.told.append((values, outcomes))
        self._tell(ax.attach_trial(self._to_ax(values)), outcomes)

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__getstate__(), f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.__setstate__(pickle.load(f))

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in _REBUILT}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._ax, self._index = None, {}

    # --- Ax -------------------------------------------------------------------------------------

    def _ensure(self):
        if self._ax is not None:
            return self._ax
        from ax.api.client import Client
        from ax.utils.common.logger import set_stderr_log_level

        set_stderr_log_level(logging.WARNING)  # Ax's own switch: its loggers set their levels themselves
        ax = Client(random_seed=self.seed)
        ax.configure_experiment(parameters=[ax_parameter(p) for p in self._sampled().values()], name="hpo")
        sign = "-" if self._mode == "min" else ""
        bounds = [f"c{i} <= {c.max!r}" if c.max is not None else f"c{i} >= {c.min!r}"
                  for i, c in enumerate(self._constraints)]
        ax.configure_optimization(objective=f"{sign}{OBJECTIVE}", outcome_constraints=bounds or None)
        if self.initialization_budget is not None:
            ax.configure_generation_strategy(initialization_budget=self.initialization_budget,
                                             initialization_random_seed=self.seed)
        self._ax = ax
        # Results known before the first ask (warm start, a resumed run), then the trials that were
        # running when the state was saved, which Ax must count as running.
        for values, outcomes in self.told:
            self._tell(ax.attach_trial(self._to_ax(values)), outcomes)
        self._index = {trial_id: ax.attach_trial(self._to_ax(values)) for trial_id, values in self.pending.items()}
        return ax

    def _tell(self, index: int | None, outcomes: dict[str, float] | None) -> None:
        if index is None:
            return
        if outcomes is None:
            self._ax.mark_trial_failed(index)
        else:
            self._ax.complete_trial(index, raw_data=outcomes)

    def _outcomes(self, result: Mapping[str, Any]) -> dict[str, float] | None:
        """Ax's data for a result: the score (None: no finite score, told as failed) and each
        constrained metric it reported."""
        score = _finite(result.get(self._metric))
        if score is None:
            return None
        outcomes = {OBJECTIVE: score}
        for i, c in enumerate(self._constraints):
            if (value := _finite(result.get(c.metric))) is not None:
                outcomes[f"c{i}"] = value
        return outcomes

    def _sampled(self) -> dict[str, Param]:
        """The parameters Ax searches: every one but constants and one-value choices."""
        return {n: p for n, p in self.params.items()
                if not p.is_constant and not (p.is_categorical and len(p.args) == 1)}

    def _of_this_space(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """A config of this space from one given to us (points to evaluate, warm start, a resumed
        trial): its values of this space, those it lacks or this space cannot take drawn at random
        (seeded), so that Ax accepts it."""
        rng = random.Random(self.seed + len(self.told) + len(self.pending))
        out = {}
        for name, p in self._sampled().items():
            if name in values and contains(p, values[name]):
                v = values[name]
            elif p.is_categorical:
                v = rng.choice(p.args)
            elif KINDS[p.kind].log:
                v = math.exp(rng.uniform(math.log(p.args[0]), math.log(p.args[1])))
            else:
                v = rng.uniform(*p.args[:2])
            out[name] = v if p.is_categorical else int(round(v)) if p.is_integer else float(v)
        return out

    def _to_ax(self, values: Mapping[str, Any]) -> dict[str, Any]:
        params = self._sampled()
        return {n: params[n].args.index(v) if params[n].is_categorical else v for n, v in values.items()}

    def _from_ax(self, parameters: Mapping[str, Any]) -> dict[str, Any]:
        """Ax's values as Python values of the YAML's own types (Ax may give numpy numbers)."""
        out = {}
        for name, v in parameters.items():
            p = self.params[name]
            out[name] = p.args[int(v)] if p.is_categorical else int(v) if p.is_integer else float(v)
        return out

    def _trial_config(self, values: dict[str, Any]) -> dict[str, Any]:
        """What the trial gets: Ax's values, quantized kinds rounded, constants added."""
        config = {n: on_grid(self.params[n], v) if self.params[n].q is not None else v for n, v in values.items()}
        for p in self.params.values():
            if p.name not in config:
                config[p.name] = p.values[0]
        return config


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)

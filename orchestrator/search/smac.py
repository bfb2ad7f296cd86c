"""SMAC3 (random-forest Bayesian optimisation) as a Ray Tune Searcher, through SMAC's ask/tell API.

SMAC models the score with a random forest over a ConfigSpace space, so it handles categorical and
conditional parameters natively (an inactive parameter is simply absent from a config), which the
GP- and TPE-based searchers here either cannot or do only through Optuna's define-by-run API.

What we found in SMAC 2.4.1 and do about it:

- No pyrfr needed. `HyperparameterOptimizationFacade` builds `smac.model.random_forest.RandomForest`,
  SMAC's own forest on scikit-learn's `DecisionTreeRegressor` (10 trees, log-scaled costs, EI,
  Sobol initial design, 20% random interleaving). pyrfr is only imported by the old facades in
  `smac.facade.old` (`HyperparameterOptimizationRFRFacade`, `MultiFidelityRFRFacade`), which we never use.
- SMAC reconfigures the host's logging by default: the facade's `logging_level=None` runs
  `logging.config.dictConfig` on its bundled logging.yml (root logger at INFO, a stdout handler),
  which would flood the driver and the progress line. We pass `logging_level=False` and keep the
  `smac` logger at WARNING.
- SMAC writes scenario/runhistory JSON files into `output_directory` at construction, by default
  `smac3_output/` under the working directory. We give it a temporary folder, removed when the
  searcher is garbage-collected, and never save per trial (`tell(..., save=False)`).
- `deterministic=True`: each config is evaluated once. Otherwise SMAC's intensifier re-runs the
  incumbent on new seeds, which a Ray trial (one config, one run) cannot express.
- Concurrency: `ask()` while other trials are pending returns a different config (SMAC's config
  selector skips configs it already handed out); tested with four pending asks.
- Configs we give SMAC ourselves (points_to_evaluate, warm start, the trials replayed after a
  resume) are told with the seed its intensifier uses, so SMAC counts them as the same
  instance-seed key as its own; warm-start results are told before the first ask (SMAC's own
  warm-start recipe).
- A failed trial cannot be told at SMAC's own crash cost (inf): its forest then fails on NaN targets
  at the next ask (seen as "Input y contains NaN" under HyperBand in the strategies matrix). It is
  told as the worst cost so far (tests/test_smac.py). A trial HyperBand stops while paused gets no
  result from Tune; it is told its last reported score.
- The searcher's state (what was told, what is pending) is plain data; SMAC itself is rebuilt from
  it on restore (`hpo resume`) by replaying the results, so nothing of SMAC's is pickled.

Quantized kinds (`quniform`, `qrandint`, ...) are searched as the plain range and rounded to a
multiple of q when handed to the trial; SMAC keeps modelling the unrounded value it proposed.
"""

from __future__ import annotations

import logging
import math
import pickle
import shutil
import tempfile
import warnings
from collections.abc import Mapping
from typing import Any

from ray.tune.search import Searcher

from orchestrator.search.space import Param, active, on_grid, to_tune, unquantized

_REBUILT = ("_smac", "_dir", "_cs", "_seed_key", "_worst", "_crashed", "_ahead")  # left out of the state


def config_space(params: Mapping[str, Param], seed: int):
    """ConfigSpace space of the sampled parameters, with `when:` conditions as ConfigSpace conditions.

    The hyperparameters come from Ray's own converter (the one TuneBOHB uses), fed plain ranges
    for quantized kinds so that it does not warn about dropping q; the conditions are ours.
    """
    from ConfigSpace import EqualsCondition, InCondition
    from ray.tune.search.bohb import TuneBOHB

    constants = {n: p.args[0] for n, p in params.items() if p.is_constant}
    sampled = {n: unquantized(p) for n, p in params.items() if not p.is_constant and not _never_active(p, constants)}
    cs = TuneBOHB.convert_search_space(to_tune(sampled))
    for p in sampled.values():
        for parent, allowed in p.when.items():
            if params[parent].is_constant:
                continue  # always the same value: active() decides once, below
            child, par = cs[p.name], cs[parent]
            cs.add(EqualsCondition(child, par, allowed[0]) if len(allowed) == 1
                   else InCondition(child, par, list(allowed)))
    cs.seed(seed)
    return cs


def _never_active(p: Param, constants: Mapping[str, Any]) -> bool:
    """A parameter conditional on a constant that never takes an enabling value."""
    return any(parent in constants and constants[parent] not in allowed for parent, allowed in p.when.items())


class SMACSearch(Searcher):
    """SMAC's HPO facade (random forest + EI), or its black-box facade (GP), behind Ray Tune's Searcher.

    Args:
        params: the experiment's parameters (constants are added to every config).
        metric, mode: what to optimise; SMAC minimises `cost`, so `max` is negated.
        seed: SMAC's scenario seed (initial design, forest, acquisition search, random interleaving).
        n_trials: the run's trial budget; SMAC sizes its initial design from it (a quarter at most).
        points: configs to evaluate first, in order; with `rewards`, results already known (warm start).
        n_configs: initial design size; None is SMAC's own rule.
        facade: "hpo" (random forest, the default) or "blackbox" (SMAC's Gaussian process, for
            small continuous spaces; ~0.4 s per suggestion here).
    """

    def __init__(self, params: Mapping[str, Param], metric: str, mode: str, seed: int, n_trials: int,
                 points: list[dict[str, Any]] | None = None, rewards: list[float] | None = None,
                 n_configs: int | None = None, facade: str = "hpo"):
        super().__init__(metric=metric, mode=mode)
        self.params = dict(params)
        self.seed = seed
        self.n_trials = n_trials
        self.n_configs = n_configs
        self.facade = facade
        # Plain-data state, saved and restored: results told (config, cost or None if crashed) and
        # trials pending (trial id -> SMAC config). Points still to try go first.
        self.told: list[tuple[dict[str, Any], float | None]] = []
        self.pending: dict[str, dict[str, Any]] = {}
        self.last: dict[str, float] = {}  # pending trial -> its last reported score
        self.queue: list[dict[str, Any]] = [] if rewards is not None else [dict(p) for p in points or ()]
        if rewards is not None:
            self.told = [(dict(p), self._cost(r)) for p, r in zip(points or (), rewards)]
        self._smac = None  # built on first use, never pickled

    # --- Ray's Searcher interface -------------------------------------------------------------

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        # The space is ours (param_space is empty); only take metric/mode if Tune passes them.
        self._metric = metric or self._metric
        self._mode = mode or self._mode
        return True

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        smac = self._ensure()
        if self.queue:
            config = self._configuration(self.queue.pop(0))
            self._running(config)  # so that SMAC does not propose it again while it runs
        elif self._ahead is not None:
            config, self._ahead = self._ahead, None
        else:
            with warnings.catch_warnings():
                # The forest's variance over empty leaves and numpy's "Mean of empty slice".
                warnings.simplefilter("ignore", RuntimeWarning)
                config = smac.ask().config
        values = self._from_smac(config)
        self.pending[trial_id] = values
        return self._trial_config(values)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if result.get(self._metric) is not None:
            self.last[trial_id] = result[self._metric]

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        """Tune passes no result for a trial stopped while paused (HyperBand): its last report counts."""
        values = self.pending.pop(trial_id, None)
        last = self.last.pop(trial_id, None)
        if values is None:
            return
        score = None if error else (result or {}).get(self._metric, last)
        cost = None if score is None or not math.isfinite(score) else self._cost(float(score))
        self.told.append((values, cost))
        self._tell(values, cost)

    def add_evaluated_point(self, parameters: dict, value: Any, error: bool = False, pruned: bool = False,
                            intermediate_values: list[float] | None = None) -> None:
        """A finished trial SMAC did not propose (one that finished after Tune's last snapshot, told
        on `hpo resume`): told as one of its own."""
        self._ensure()
        values = self._from_smac(self._configuration(parameters))
        cost = None if error or value is None or not math.isfinite(value) else self._cost(float(value))
        self.told.append((values, cost))
        self._tell(values, cost)

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
        self._smac = None

    def __del__(self):
        if getattr(self, "_dir", None):
            shutil.rmtree(self._dir, ignore_errors=True)

    # --- SMAC -----------------------------------------------------------------------------------

    def _ensure(self):
        if self._smac is not None:
            return self._smac
        from smac import BlackBoxFacade, HyperparameterOptimizationFacade, Scenario

        Facade = HyperparameterOptimizationFacade if self.facade == "hpo" else BlackBoxFacade

        logging.getLogger("smac").setLevel(logging.WARNING)
        self._cs = config_space(self.params, self.seed)
        if getattr(self, "_dir", None) is None:
            self._dir = tempfile.mkdtemp(prefix="hpo-smac-")
        scenario = Scenario(self._cs, deterministic=True, n_trials=self.n_trials, seed=self.seed,
                            output_directory=f"{self._dir}/smac")
        sized = {} if self.n_configs is None else {"n_configs": self.n_configs}
        design = Facade.get_initial_design(scenario, **sized)
        self._smac = Facade(scenario, _never_called, initial_design=design, overwrite=True, logging_level=False)
        # Results known before the first ask (warm start, a resumed run) are told with one seed,
        # which the intensifier then adopts as its own; with none, its first ask fixes the seed.
        self._seed_key = self.seed
        self._worst: float | None = None  # the worst finite cost told, which crashed trials are told
        self._crashed: list[dict[str, Any]] = []  # crashed before any finite cost was told
        # Warm-start configs may lack parameters of this space: completed once, so a replay tells the same.
        self.told = [(self._from_smac(self._configuration(values)), cost) for values, cost in self.told]
        for values, cost in self.told:
            self._tell(values, cost)
        for values in self.pending.values():  # running when the state was saved: SMAC must not re-propose them
            self._running(self._configuration(values))
        self._ahead = None
        if not self.told and not self.pending:
            # SMAC's first proposal, asked now to learn the seed its intensifier runs configs with;
            # handed out after the points to evaluate.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                first = self._smac.ask()
            self._seed_key, self._ahead = first.seed, first.config
        return self._smac

    def _running(self, config) -> None:
        from smac.runhistory.dataclasses import TrialInfo

        self._smac.runhistory.add_running_trial(TrialInfo(config, seed=self._seed_key))

    def _tell(self, values: dict[str, Any], cost: float | None) -> None:
        """Tell SMAC one result; `None` is a crashed trial (errored, or no finite score).

        A crash is told as the worst cost seen so far, with status CRASHED. SMAC's own crash cost
        (`Scenario.crash_cost`, inf) breaks its HPO facade: the log-scaled encoder divides by an
        infinite range and the forest refuses the NaN targets ("Input y contains NaN"), so the next
        ask fails. Crashes before any finite result wait for the first one.
        """
        self._ensure()
        if cost is None:
            self._crashed.append(values)
        else:
            self._worst = cost if self._worst is None else max(self._worst, cost)
            self._add(values, cost, crashed=False)
        if self._worst is not None:
            for crashed in self._crashed:
                self._add(crashed, self._worst, crashed=True)
            self._crashed = []

    def _add(self, values: dict[str, Any], cost: float, crashed: bool) -> None:
        from smac.runhistory.dataclasses import TrialInfo, TrialValue
        from smac.runhistory.enumerations import StatusType

        info = TrialInfo(self._configuration(values), seed=self._seed_key)
        status = StatusType.CRASHED if crashed else StatusType.SUCCESS
        self._smac.tell(info, TrialValue(cost=cost, status=status), save=False)

    def _cost(self, score: float) -> float:
        return score if self._mode == "min" else -score

    def _configuration(self, values: Mapping[str, Any]):
        """A ConfigSpace Configuration from a config dict; parameters it lacks are sampled (seeded)."""
        import numpy as np
        from ConfigSpace import Configuration

        rng = np.random.RandomState(self.seed + len(self.told) + len(self.pending))
        full: dict[str, Any] = {}
        for p in sorted(self.params.values(), key=lambda p: bool(p.when)):
            if p.name not in self._cs or (p.when and not active(p, {**full, **self._constants()})):
                continue
            hp = self._cs[p.name]
            v = values[p.name] if p.name in values else hp.sample_value(seed=rng)
            if p.is_categorical:
                v = hp.choices[list(p.args).index(v)] if v in p.args else v
            elif p.is_integer:
                v = int(v)
            else:
                v = float(v)
            full[p.name] = v
        return Configuration(self._cs, values=full)

    def _constants(self) -> dict[str, Any]:
        return {n: p.args[0] for n, p in self.params.items() if p.is_constant}

    def _from_smac(self, config) -> dict[str, Any]:
        """SMAC's config as Python values of the YAML's own types (ConfigSpace gives numpy strings)."""
        out = {}
        for name, v in dict(config).items():
            p = self.params[name]
            if p.is_categorical:
                out[name] = p.args[list(self._cs[name].choices).index(v)]
            elif p.is_integer:
                out[name] = int(v)
            else:
                out[name] = float(v)
        return out

    def _trial_config(self, values: dict[str, Any]) -> dict[str, Any]:
        """What the trial gets: SMAC's values, quantized kinds rounded, active constants added."""
        config = dict(values)
        for name, v in values.items():
            p = self.params[name]
            if p.q is not None:
                config[name] = on_grid(p, v)
        for p in self.params.values():
            if p.is_constant and (not p.when or active(p, config)):
                config[p.name] = p.args[0]
        return config


def _never_called(config, seed: int = 0) -> float:
    """SMAC's facade wants a target function; Ray runs the trials, so SMAC never calls it."""
    raise RuntimeError("SMAC's target function is not used: trials run in Ray Tune")

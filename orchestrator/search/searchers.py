"""Searcher registry: a name in the spec -> a typed options model and a lazy factory.

`SEARCHERS` is the only list of names. Each entry's options model is what the spec validates
`searcher:` against (chosen by `name`), and each factory imports its optional dependency only
when chosen. Factories return a `SearchPlan`: the Ray search algorithm plus the `param_space`
the Tuner gets (define-by-run searchers take the space themselves and leave it empty).

Every entry owns its rules (`rules=`, see orchestrator.search.rules): what it needs installed, which
scheduler it must run with, whether it honours conditions or a space of only choices. The spec
asks `entry.check(strategy)` and so refuses a pairing that cannot work before Ray starts.

Constraints (`constraints:`) go to a searcher only where its library has a mechanism for them:
an entry says so with `constraints=` (TAKES: Optuna's per-trial constraints, which its TPE,
NSGA-II and GP samplers read, and Ax's outcome constraints; IGNORES: random and grid, which learn
nothing from any result, so feasibility only decides the best trial). An entry without it refuses a constrained spec.

Options a library has its own default for default to None here, meaning "the library's choice":
we pass only what the user set (Optuna 5's TPE, for one, picks the multivariate variant itself
for a single objective; forcing the old default cost 2.5x in median regret on Hartmann-3).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Literal

from pydantic import ConfigDict, Field

from orchestrator.base import StrictModel
from orchestrator.errors import Problem
from orchestrator.results.constraints import Constraint
from orchestrator.search.rules import Rule, Strategy, flat_space, one_objective, requires
from orchestrator.search.space import Param, active, is_conditional, optuna_distributions, optuna_suggest, to_tune


class WarmStart(StrictModel):
    """Seed the search with the best configs of an earlier run (its folder or its trials.parquet)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    from_: str = Field(alias="from", min_length=1)
    top_k: int = Field(10, ge=1)


class SearcherOptions(StrictModel):
    """Options every searcher accepts."""

    section: ClassVar[str] = "searcher"

    seed: int | None = Field(None, description="defaults to the spec's top-level seed")
    points_to_evaluate: list[dict[str, Any]] = Field(default_factory=list, description="configs to try first")
    max_concurrent: int | None = Field(None, ge=1, description="caps budget.concurrent for this searcher")
    warm_start: WarmStart | None = None


class RandomOptions(SearcherOptions):
    name: Literal["random"] = "random"


class GridOptions(SearcherOptions):
    name: Literal["grid"] = "grid"


class OptunaTPEOptions(SearcherOptions):
    name: Literal["optuna-tpe"] = "optuna-tpe"
    multivariate: bool | None = Field(None, description="None: Optuna's choice (multivariate for one objective)")
    group: bool | None = Field(None, description="multivariate per group of parameters active together")
    n_startup_trials: int | None = Field(None, ge=0, description="random trials before the model (Optuna: 10)")
    constant_liar: bool | None = Field(None, description="avoid proposing near running trials (Optuna 5: on)")


class OptunaNSGA2Options(SearcherOptions):
    """Optuna's NSGA-II: a genetic algorithm for several objectives (one works too)."""

    name: Literal["optuna-nsga2"] = "optuna-nsga2"
    population_size: int | None = Field(None, ge=2, description="trials per generation (Optuna: 50)")
    mutation_prob: float | None = Field(None, ge=0, le=1, description="None: Optuna's 1/number of parameters")
    crossover_prob: float | None = Field(None, ge=0, le=1)
    swapping_prob: float | None = Field(None, ge=0, le=1)


class OptunaCmaEsOptions(SearcherOptions):
    name: Literal["optuna-cmaes"] = "optuna-cmaes"
    n_startup_trials: int | None = Field(None, ge=0)
    restart_strategy: Literal["ipop", "bipop"] | None = None


class OptunaGPOptions(SearcherOptions):
    name: Literal["optuna-gp"] = "optuna-gp"
    n_startup_trials: int | None = Field(None, ge=0)


class HyperOptOptions(SearcherOptions):
    name: Literal["hyperopt-tpe"] = "hyperopt-tpe"
    n_initial_points: int | None = Field(None, ge=1)
    gamma: float | None = Field(None, gt=0, lt=1)


class SMACOptions(SearcherOptions):
    name: Literal["smac"] = "smac"
    n_configs: int | None = Field(None, ge=1, description="initial design size (SMAC: 10 per parameter, "
                                                          "at most a quarter of budget.trials)")
    facade: Literal["hpo", "blackbox"] = Field("hpo", description="hpo: random forest; blackbox: Gaussian process")


class AxOptions(SearcherOptions):
    """Ax's Bayesian optimisation (Sobol, then BoTorch's Gaussian process): seconds per suggestion,
    for trials that cost more than that."""

    name: Literal["ax"] = "ax"
    initialization_budget: int | None = Field(None, ge=1, description="Sobol trials before the model "
                                                                      "(None: Ax's own rule)")


class BOHBOptions(SearcherOptions):
    name: Literal["bohb"] = "bohb"
    min_points_in_model: int | None = Field(None, ge=1)


def chosen(opts: SearcherOptions, *names: str) -> dict[str, Any]:
    """The named options the user set (not None): a library's own defaults apply to the rest."""
    return {n: v for n in names if (v := getattr(opts, n)) is not None}


@dataclass(frozen=True)
class SearchContext:
    """Everything a factory may use, resolved from the spec."""

    params: Mapping[str, Param]
    metric: str | list[str]  # a list for several objectives (Optuna samplers and Ray's generator take one)
    mode: str | list[str]
    seed: int
    points: list[dict[str, Any]] = field(default_factory=list)
    rewards: list[float] | None = None  # scores of `points` (warm start), for searchers that learn from them
    trials: int = 100  # budget.trials, for searchers that plan around the budget (SMAC's initial design)
    constraints: tuple[Constraint, ...] = ()  # the spec's constraints, for a searcher that takes them


@dataclass(frozen=True)
class SearchPlan:
    search_alg: Any  # a ray.tune Searcher / SearchAlgorithm, or None for Ray's default
    param_space: dict[str, Any]


# What a searcher does with the spec's constraints (SearcherEntry.constraints).
TAKES = "takes"  # its library learns from them (Optuna's trial.set_constraint)
IGNORES = "ignores"  # it learns nothing from results at all (random, grid): feasibility only picks the best
CONSTRAINED = ("optuna-tpe", "optuna-nsga2", "optuna-gp", "ax")  # the fix a refusal names (checked by the tests)


@dataclass(frozen=True)
class SearcherEntry:
    options: type[SearcherOptions]
    build: Callable[[Any, SearchContext], SearchPlan]
    rules: tuple[Rule, ...] = ()  # this searcher's own checks, beyond those every searcher gets
    enumerates: tuple[str, ...] = ("grid",)  # parameter kinds whose values are each tried in turn
    constraints: str | None = None  # TAKES, IGNORES, or None: a constrained spec is refused

    def check(self, strategy: Strategy) -> list[Problem]:
        opts = strategy.searcher
        problems = _common_checks(opts, strategy)
        if strategy.constraints and self.constraints is None:
            problems.append(Problem("searcher.name", f"{opts.name} cannot take constraints (on "
                                                     f"{', '.join(strategy.constraints)}); use "
                                                     f"{', '.join(CONSTRAINED[:-1])} or {CONSTRAINED[-1]}, "
                                                     f"or remove constraints"))
        if strategy.constraints and opts.warm_start:
            problems.append(Problem("searcher.warm_start", "an earlier run's trials carry no feasibility for this "
                                                           "spec's constraints; use points_to_evaluate instead"))
        for rule in self.rules:
            problems += rule(opts, strategy)
        return problems

    def grid_size(self, params: Mapping[str, Param]) -> int:
        """Trials one pass over the enumerated values takes (their cartesian product)."""
        return math.prod(len(p.args) for p in params.values() if p.kind in self.enumerates)


def _common_checks(opts: SearcherOptions, strategy: Strategy) -> list[Problem]:
    problems = []
    if opts.warm_start and opts.points_to_evaluate:
        problems.append(Problem("searcher.warm_start", "give either warm_start or points_to_evaluate, not both"))
    for i, point in enumerate(opts.points_to_evaluate):
        if unknown := sorted(set(point) - set(strategy.params)):
            problems.append(Problem(f"searcher.points_to_evaluate[{i}]",
                                    f"{unknown} not in the space; parameters: {', '.join(strategy.params)}"))
    return problems


def picks_values(opts: SearcherOptions, strategy: Strategy) -> list[Problem]:
    """A model-based searcher chooses values itself: enumerated `grid:` entries make no sense."""
    grid = [p.name for p in strategy.params.values() if p.kind == "grid"]
    if not grid:
        return []
    return [Problem(f"space.{grid[0]}", f"grid entries are enumerated, but searcher {opts.name} picks "
                                        f"values itself: use choice, or searcher: {{name: grid}}")]


def numeric_range(opts: SearcherOptions, strategy: Strategy) -> list[Problem]:
    """The searcher cannot search a space of only choices."""
    sampled = [p for p in strategy.params.values() if not p.is_constant]
    if sampled and all(p.is_categorical for p in sampled):
        return [Problem("space", f"searcher {opts.name} needs at least one numeric range; every parameter "
                                 f"here is a choice: use optuna-tpe or random")]
    return []


def with_scheduler(name: str) -> Rule:
    def rule(opts: SearcherOptions, strategy: Strategy) -> list[Problem]:
        if strategy.scheduler.name == name:
            return []
        return [Problem("scheduler.name", f"searcher {opts.name} only works with scheduler {name} (it "
                                          f"allocates the budgets BOHB models); set scheduler: {{name: {name}}}")]

    return rule


# --- Ray's own generator: random and grid ------------------------------------------------------

def _build_random(opts: RandomOptions, ctx: SearchContext) -> SearchPlan:
    if is_conditional(ctx.params):
        # Ray's generator cannot skip inactive parameters; Optuna's seeded random sampler can.
        import optuna

        # Random sampling learns nothing from warm-start scores: those configs are simply tried first.
        return _optuna_plan(optuna.samplers.RandomSampler(seed=ctx.seed), replace(ctx, rewards=None))
    return _ray_generator(ctx, ctx.params)


def _ray_generator(ctx: SearchContext, params: Mapping[str, Param]) -> SearchPlan:
    """Ray's own variant generator over Ray domains, seeded, with the points to try first."""
    from orchestrator.search.resumable import ResumableVariants

    return SearchPlan(ResumableVariants(points_to_evaluate=ctx.points or None, random_state=ctx.seed),
                      to_tune(params))


def _build_grid(opts: GridOptions, ctx: SearchContext) -> SearchPlan:
    """Every `grid:` and `choice:` entry is enumerated (cartesian product); ranges are sampled per point."""
    params = {n: Param(p.name, "grid", p.args, p.when) if p.kind == "choice" else p for n, p in ctx.params.items()}
    return _ray_generator(ctx, params)


# --- Optuna samplers, define-by-run -----------------------------------------------------------

class OptunaDefineByRun:
    """Asks an Optuna trial for each parameter in order, skipping inactive conditional ones.

    A class rather than a closure so that Ray can pickle the searcher into its experiment state.
    Constants are returned (Optuna does not sample them) and merged into the config by Ray.
    """

    def __init__(self, params: Mapping[str, Param]):
        # Unconditional parameters first so that conditions can look at their sampled values.
        self.params = sorted(params.values(), key=lambda p: bool(p.when))

    def __call__(self, trial) -> dict[str, Any] | None:
        values: dict[str, Any] = {}
        constants: dict[str, Any] = {}
        for p in self.params:
            if p.when and not active(p, values):
                continue
            if p.is_constant:
                constants[p.name] = values[p.name] = p.args[0]
            else:
                values[p.name] = optuna_suggest(trial, p)
        return constants or None


def _optuna_plan(sampler, ctx: SearchContext) -> SearchPlan:
    import warnings

    import optuna

    from orchestrator.search.ray_searchers import DefineByRunOptunaSearch

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # one INFO line per study is noise here
    # A trial resumed from a checkpoint reports its steps again; Optuna keeps the first, and says so.
    warnings.filterwarnings("ignore", message=r"The reported value is ignored because this `step=",
                            category=UserWarning)
    storage, study_name, points = None, None, ctx.points or None
    if ctx.rewards is not None:
        # Ray's OptunaSearch refuses evaluated rewards with a define-by-run space, so the earlier
        # results go into the study directly; Ray then loads that study (load_if_exists).
        storage, study_name = optuna.storages.InMemoryStorage(), "hpo-warm-start"
        study = optuna.create_study(storage=storage, study_name=study_name, sampler=sampler,
                                    direction="minimize" if ctx.mode == "min" else "maximize")
        dists = optuna_distributions(ctx.params)
        for point, value in zip(ctx.points, ctx.rewards):
            params = {k: v for k, v in point.items() if k in dists}
            study.add_trial(optuna.trial.create_trial(
                params=params, distributions={k: dists[k] for k in params}, value=value))
        points = None
    alg = DefineByRunOptunaSearch(space=OptunaDefineByRun(ctx.params), metric=ctx.metric, mode=ctx.mode,
                                  sampler=sampler, points_to_evaluate=points, storage=storage, study_name=study_name,
                                  params=ctx.params, constraints=ctx.constraints)
    return SearchPlan(alg, {})


def _build_optuna_tpe(opts: OptunaTPEOptions, ctx: SearchContext) -> SearchPlan:
    import optuna

    settings = chosen(opts, "multivariate", "group", "n_startup_trials", "constant_liar")
    return _optuna_plan(optuna.samplers.TPESampler(seed=ctx.seed, **settings), ctx)


def _build_optuna_nsga2(opts: OptunaNSGA2Options, ctx: SearchContext) -> SearchPlan:
    import optuna

    settings = chosen(opts, "population_size", "mutation_prob", "crossover_prob", "swapping_prob")
    return _optuna_plan(optuna.samplers.NSGAIISampler(seed=ctx.seed, **settings), ctx)


def _build_optuna_cmaes(opts: OptunaCmaEsOptions, ctx: SearchContext) -> SearchPlan:
    import optuna

    sampler = optuna.samplers.CmaEsSampler(seed=ctx.seed, warn_independent_sampling=False,
                                           **chosen(opts, "n_startup_trials", "restart_strategy"))
    return _optuna_plan(sampler, ctx)


def _build_optuna_gp(opts: OptunaGPOptions, ctx: SearchContext) -> SearchPlan:
    import optuna

    return _optuna_plan(optuna.samplers.GPSampler(seed=ctx.seed, **chosen(opts, "n_startup_trials")), ctx)


# --- HyperOpt and BOHB, through Ray's wrappers of Ray domains --------------------------------

def _build_hyperopt(opts: HyperOptOptions, ctx: SearchContext) -> SearchPlan:
    from orchestrator.search.ray_searchers import EvaluatedPointsHyperOptSearch

    alg = EvaluatedPointsHyperOptSearch(metric=ctx.metric, mode=ctx.mode, points_to_evaluate=ctx.points or None,
                         random_state_seed=ctx.seed, **chosen(opts, "n_initial_points", "gamma"))
    return SearchPlan(alg, to_tune(ctx.params))


def _build_bohb(opts: BOHBOptions, ctx: SearchContext) -> SearchPlan:
    from orchestrator.search.ray_searchers import EvaluatedPointsBOHB

    bohb_config = chosen(opts, "min_points_in_model") or None
    alg = EvaluatedPointsBOHB(metric=ctx.metric, mode=ctx.mode, points_to_evaluate=ctx.points or None, seed=ctx.seed,
                   bohb_config=bohb_config)
    return SearchPlan(alg, to_tune(ctx.params))


def _build_smac(opts: SMACOptions, ctx: SearchContext) -> SearchPlan:
    from orchestrator.search.smac import SMACSearch

    return SearchPlan(SMACSearch(ctx.params, ctx.metric, ctx.mode, ctx.seed, ctx.trials, ctx.points or None,
                                 ctx.rewards, n_configs=opts.n_configs, facade=opts.facade), {})


def _build_ax(opts: AxOptions, ctx: SearchContext) -> SearchPlan:
    from orchestrator.search.ax import AxSearch

    return SearchPlan(AxSearch(ctx.params, ctx.metric, ctx.mode, ctx.seed, ctx.points or None, ctx.rewards,
                               ctx.constraints, initialization_budget=opts.initialization_budget), {})


_MODEL_BASED = (picks_values,)
_OPTUNA = requires("optuna")

SEARCHERS: dict[str, SearcherEntry] = {
    "random": SearcherEntry(RandomOptions, _build_random, constraints=IGNORES),
    "grid": SearcherEntry(GridOptions, _build_grid, rules=(flat_space,), enumerates=("grid", "choice"),
                          constraints=IGNORES),
    "optuna-tpe": SearcherEntry(OptunaTPEOptions, _build_optuna_tpe, rules=(_OPTUNA, *_MODEL_BASED), constraints=TAKES),
    # NSGA-II samples a parameter outside the intersection of every trial's space at random, so
    # conditions would be sampled but not learnt: refused, as for the other flat-space searchers.
    "optuna-nsga2": SearcherEntry(OptunaNSGA2Options, _build_optuna_nsga2, rules=(_OPTUNA, *_MODEL_BASED, flat_space),
                                  constraints=TAKES),
    "optuna-cmaes": SearcherEntry(OptunaCmaEsOptions, _build_optuna_cmaes,
                                  rules=(requires("optuna", "cmaes"), *_MODEL_BASED, numeric_range, flat_space,
                                         one_objective)),
    "optuna-gp": SearcherEntry(OptunaGPOptions, _build_optuna_gp,
                               rules=(requires("optuna", "torch"), *_MODEL_BASED, flat_space, one_objective),
                               constraints=TAKES),
    "hyperopt-tpe": SearcherEntry(HyperOptOptions, _build_hyperopt,
                                  rules=(requires("hyperopt"), *_MODEL_BASED, flat_space, one_objective)),
    "smac": SearcherEntry(SMACOptions, _build_smac,
                          rules=(requires("smac", "ConfigSpace"), *_MODEL_BASED, one_objective)),
    # Ax's own search spaces are flat here (its hierarchical spaces are not mapped from `when:`).
    "ax": SearcherEntry(AxOptions, _build_ax, rules=(requires("ax"), *_MODEL_BASED, flat_space, one_objective),
                        constraints=TAKES),
    "bohb": SearcherEntry(BOHBOptions, _build_bohb, rules=(requires("hpbandster", "ConfigSpace"), *_MODEL_BASED,
                                                           flat_space, with_scheduler("bohb-hyperband"),
                                                           one_objective)),
}


def build_search(opts: SearcherOptions, ctx: SearchContext) -> SearchPlan:
    return SEARCHERS[opts.name].build(opts, ctx)

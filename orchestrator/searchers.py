"""Searcher registry: a name in the spec -> a typed options model and a lazy factory.

`SEARCHERS` is the only list of names. Each entry's options model is what the spec validates
`searcher:` against (chosen by `name`), and each factory imports its optional dependency only
when chosen. Factories return a `SearchPlan`: the Ray search algorithm plus the `param_space`
the Tuner gets (define-by-run searchers take the space themselves and leave it empty).

Every entry also states what it can do (learn from results, honour conditions, sample
categoricals), so that the spec refuses a pairing that cannot work before Ray starts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Mapping

from pydantic import ConfigDict, Field

from orchestrator.base import StrictModel
from orchestrator.space import Param, active, is_conditional, to_tune


class WarmStart(StrictModel):
    """Seed the search with the best configs of an earlier run (its folder or its trials.parquet)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    from_: str = Field(alias="from", min_length=1)
    top_k: int = Field(10, ge=1)


class SearcherOptions(StrictModel):
    """Options every searcher accepts."""

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
    multivariate: bool = False
    n_startup_trials: int = Field(10, ge=0)


class OptunaCmaEsOptions(SearcherOptions):
    name: Literal["optuna-cmaes"] = "optuna-cmaes"
    n_startup_trials: int = Field(1, ge=0)
    restart_strategy: Literal["ipop", "bipop"] | None = None


class OptunaGPOptions(SearcherOptions):
    name: Literal["optuna-gp"] = "optuna-gp"
    n_startup_trials: int = Field(10, ge=0)


class HyperOptOptions(SearcherOptions):
    name: Literal["hyperopt-tpe"] = "hyperopt-tpe"
    n_initial_points: int = Field(20, ge=1)
    gamma: float = Field(0.25, gt=0, lt=1)


class BOHBOptions(SearcherOptions):
    name: Literal["bohb"] = "bohb"
    min_points_in_model: int | None = Field(None, ge=1)


@dataclass(frozen=True)
class SearchContext:
    """Everything a factory may use, resolved from the spec."""

    params: Mapping[str, Param]
    metric: str
    mode: str
    seed: int
    points: list[dict[str, Any]] = field(default_factory=list)
    rewards: list[float] | None = None  # scores of `points` (warm start), for searchers that learn from them


@dataclass(frozen=True)
class SearchPlan:
    search_alg: Any  # a ray.tune Searcher / SearchAlgorithm, or None for Ray's default
    param_space: dict[str, Any]


@dataclass(frozen=True)
class SearcherEntry:
    options: type[SearcherOptions]
    build: Callable[[Any, SearchContext], SearchPlan]
    summary: str
    model_based: bool = True  # learns from results: `grid:` entries make no sense with it
    conditional: bool = False  # honours `when:` in the space
    needs_numeric: bool = False  # cannot search a space of only choices
    needs_scheduler: str | None = None  # must run with this scheduler
    uses_rewards: bool = False  # learns from a warm start's scores, not just its configs
    requires: tuple[str, ...] = ()  # modules that must import


# --- Ray's own generator: random and grid ------------------------------------------------------

def _build_random(opts: RandomOptions, ctx: SearchContext) -> SearchPlan:
    if is_conditional(ctx.params):
        # Ray's generator cannot skip inactive parameters; Optuna's seeded random sampler can.
        import optuna

        return _optuna_plan(optuna.samplers.RandomSampler(seed=ctx.seed), ctx)
    return _ray_generator(ctx, ctx.params)


def _ray_generator(ctx: SearchContext, params: Mapping[str, Param]) -> SearchPlan:
    """Ray's own variant generator over Ray domains, seeded, with the points to try first."""
    from ray.tune.search import BasicVariantGenerator

    return SearchPlan(BasicVariantGenerator(points_to_evaluate=ctx.points or None, random_state=ctx.seed),
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
            if p.kind == "constant":
                constants[p.name] = values[p.name] = p.args[0]
            else:
                values[p.name] = suggest(trial, p)
        return constants or None


def suggest(trial, p: Param) -> Any:
    a = p.args
    if p.kind == "uniform":
        return trial.suggest_float(p.name, a[0], a[1])
    if p.kind == "loguniform":
        return trial.suggest_float(p.name, a[0], a[1], log=True)
    if p.kind == "quniform":
        return trial.suggest_float(p.name, a[0], a[1], step=a[2])
    if p.kind == "qloguniform":  # Optuna has no log+step: sample on the log scale, then round to q
        return round(trial.suggest_float(p.name, a[0], a[1], log=True) / a[2]) * a[2]
    if p.kind in ("randint", "lograndint", "qrandint"):
        step = int(a[2]) if p.kind == "qrandint" else 1
        return trial.suggest_int(p.name, int(a[0]), int(a[1]), log=p.kind == "lograndint", step=step)
    if p.kind == "choice":
        return trial.suggest_categorical(p.name, list(a))
    raise ValueError(f"Optuna cannot sample {p.kind!r} parameters ({p.name})")  # refused in the spec


def optuna_distributions(params: Mapping[str, Param]) -> dict[str, Any]:
    """The Optuna distribution of every sampled parameter (to record warm-start trials)."""
    from optuna import distributions as d

    out = {}
    for p in params.values():
        a = p.args
        if p.kind in ("uniform", "loguniform", "qloguniform"):
            out[p.name] = d.FloatDistribution(a[0], a[1], log=p.kind != "uniform")
        elif p.kind == "quniform":
            out[p.name] = d.FloatDistribution(a[0], a[1], step=a[2])
        elif p.kind in ("randint", "lograndint", "qrandint"):
            out[p.name] = d.IntDistribution(int(a[0]), int(a[1]), log=p.kind == "lograndint",
                                            step=int(a[2]) if p.kind == "qrandint" else 1)
        elif p.kind == "choice":
            out[p.name] = d.CategoricalDistribution(list(a))
    return out


def _optuna_plan(sampler, ctx: SearchContext) -> SearchPlan:
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # one INFO line per study is noise here
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
    alg = OptunaSearch(space=OptunaDefineByRun(ctx.params), metric=ctx.metric, mode=ctx.mode, sampler=sampler,
                       points_to_evaluate=points, storage=storage, study_name=study_name)
    return SearchPlan(alg, {})


def _build_optuna_tpe(opts: OptunaTPEOptions, ctx: SearchContext) -> SearchPlan:
    import optuna

    sampler = optuna.samplers.TPESampler(seed=ctx.seed, multivariate=opts.multivariate,
                                         group=opts.multivariate and is_conditional(ctx.params),
                                         n_startup_trials=opts.n_startup_trials)
    return _optuna_plan(sampler, ctx)


def _build_optuna_cmaes(opts: OptunaCmaEsOptions, ctx: SearchContext) -> SearchPlan:
    import optuna

    sampler = optuna.samplers.CmaEsSampler(seed=ctx.seed, n_startup_trials=opts.n_startup_trials,
                                           restart_strategy=opts.restart_strategy,
                                           warn_independent_sampling=False)
    return _optuna_plan(sampler, ctx)


def _build_optuna_gp(opts: OptunaGPOptions, ctx: SearchContext) -> SearchPlan:
    import optuna

    return _optuna_plan(optuna.samplers.GPSampler(seed=ctx.seed, n_startup_trials=opts.n_startup_trials), ctx)


# --- HyperOpt and BOHB, through Ray's wrappers of Ray domains --------------------------------

def _build_hyperopt(opts: HyperOptOptions, ctx: SearchContext) -> SearchPlan:
    from ray.tune.search.hyperopt import HyperOptSearch

    alg = HyperOptSearch(metric=ctx.metric, mode=ctx.mode, points_to_evaluate=ctx.points or None,
                         n_initial_points=opts.n_initial_points, random_state_seed=ctx.seed, gamma=opts.gamma)
    return SearchPlan(alg, to_tune(ctx.params))


def _build_bohb(opts: BOHBOptions, ctx: SearchContext) -> SearchPlan:
    from ray.tune.search.bohb import TuneBOHB

    bohb_config = {"min_points_in_model": opts.min_points_in_model} if opts.min_points_in_model else None
    alg = TuneBOHB(metric=ctx.metric, mode=ctx.mode, points_to_evaluate=ctx.points or None, seed=ctx.seed,
                   bohb_config=bohb_config)
    return SearchPlan(alg, to_tune(ctx.params))


SEARCHERS: dict[str, SearcherEntry] = {
    "random": SearcherEntry(RandomOptions, _build_random, "uniform random sampling", model_based=False,
                            conditional=True),
    "grid": SearcherEntry(GridOptions, _build_grid, "every combination of grid/choice values; "
                          "budget.trials repeats the grid", model_based=False),
    "optuna-tpe": SearcherEntry(OptunaTPEOptions, _build_optuna_tpe, "Optuna's Tree-structured Parzen Estimator",
                                conditional=True, uses_rewards=True, requires=("optuna",)),
    "optuna-cmaes": SearcherEntry(OptunaCmaEsOptions, _build_optuna_cmaes, "Optuna's CMA-ES (numeric spaces)",
                                  needs_numeric=True, uses_rewards=True, requires=("optuna", "cmaes")),
    "optuna-gp": SearcherEntry(OptunaGPOptions, _build_optuna_gp, "Optuna's Gaussian-process Bayesian optimisation",
                               uses_rewards=True, requires=("optuna", "torch")),
    "hyperopt-tpe": SearcherEntry(HyperOptOptions, _build_hyperopt, "HyperOpt's TPE", requires=("hyperopt",)),
    "bohb": SearcherEntry(BOHBOptions, _build_bohb, "BOHB: TPE-like model + HyperBand budgets",
                          needs_scheduler="bohb-hyperband", requires=("hpbandster", "ConfigSpace")),
}


def build_search(opts: SearcherOptions, ctx: SearchContext) -> SearchPlan:
    return SEARCHERS[opts.name].build(opts, ctx)

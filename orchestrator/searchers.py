"""Searcher registry: a name in the spec -> a typed options model and a lazy factory.

`SEARCHERS` is the only list of names. Each entry's options model is what the spec validates
`searcher:` against (chosen by `name`), and each factory imports its optional dependency only
when chosen. Factories return a `SearchPlan`: the Ray search algorithm plus the `param_space`
the Tuner gets (define-by-run searchers take the space themselves and leave it empty).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Mapping

from pydantic import Field

from orchestrator.base import StrictModel
from orchestrator.space import Param, active, to_tune


class SearcherOptions(StrictModel):
    """Options every searcher accepts."""

    seed: int | None = Field(None, description="defaults to the spec's top-level seed")
    points_to_evaluate: list[dict[str, Any]] = Field(default_factory=list)
    max_concurrent: int | None = Field(None, ge=1, description="caps budget.concurrent for this searcher")


class RandomOptions(SearcherOptions):
    name: Literal["random"] = "random"


class OptunaTPEOptions(SearcherOptions):
    name: Literal["optuna-tpe"] = "optuna-tpe"
    multivariate: bool = False
    n_startup_trials: int = Field(10, ge=0)


@dataclass(frozen=True)
class SearchContext:
    """Everything a factory may use, resolved from the spec."""

    params: Mapping[str, Param]
    metric: str
    mode: str
    seed: int
    points: list[dict[str, Any]] = field(default_factory=list)
    rewards: list[float] | None = None  # scores of `points`, for searchers that learn from them


@dataclass(frozen=True)
class SearchPlan:
    search_alg: Any  # a ray.tune Searcher / SearchAlgorithm, or None for Ray's default
    param_space: dict[str, Any]


@dataclass(frozen=True)
class SearcherEntry:
    options: type[SearcherOptions]
    build: Callable[[SearcherOptions, SearchContext], SearchPlan]
    summary: str
    model_based: bool = True  # learns from results: grid entries make no sense
    conditional: bool = True  # honours `when:` in the space


def _build_random(opts: RandomOptions, ctx: SearchContext) -> SearchPlan:
    from ray.tune.search import BasicVariantGenerator

    alg = BasicVariantGenerator(points_to_evaluate=ctx.points or None, random_state=ctx.seed)
    return SearchPlan(alg, to_tune(ctx.params))


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


def _optuna_plan(sampler, ctx: SearchContext) -> SearchPlan:
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # one INFO line per study is noise here

    alg = OptunaSearch(
        space=OptunaDefineByRun(ctx.params),
        metric=ctx.metric,
        mode=ctx.mode,
        sampler=sampler,
        points_to_evaluate=ctx.points or None,
    )
    return SearchPlan(alg, {})


def _build_optuna_tpe(opts: OptunaTPEOptions, ctx: SearchContext) -> SearchPlan:
    import optuna

    sampler = optuna.samplers.TPESampler(
        seed=ctx.seed, multivariate=opts.multivariate, n_startup_trials=opts.n_startup_trials
    )
    return _optuna_plan(sampler, ctx)


SEARCHERS: dict[str, SearcherEntry] = {
    "random": SearcherEntry(RandomOptions, _build_random, "uniform random sampling (Ray's BasicVariantGenerator)",
                            model_based=False),
    "optuna-tpe": SearcherEntry(OptunaTPEOptions, _build_optuna_tpe, "Optuna's Tree-structured Parzen Estimator"),
}


def build_search(opts: SearcherOptions, ctx: SearchContext) -> SearchPlan:
    return SEARCHERS[opts.name].build(opts, ctx)

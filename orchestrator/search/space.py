"""Search-space entries from YAML, and their translation to Ray Tune domains.

A YAML entry is either a constant (`max_bin: 256`) or a one-key mapping naming a distribution
(`learning_rate: {loguniform: [0.001, 0.3]}`), optionally with `when:` to make it conditional on
another parameter's value (`gamma: {loguniform: [1e-4, 10], when: {kernel: rbf}}`).
Integer ranges are inclusive on both ends, as in Optuna and W&B Sweeps (Ray's own `randint`
excludes `high`; the translation adds one).

Parsing is pure Python so that `hpo validate` never imports Ray; `to_tune` imports it lazily.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from orchestrator.errors import Problem

Scalar = int | float | str | bool | None


@dataclass(frozen=True)
class Kind:
    """What a distribution kind is, in the terms every translation below reads: no translation
    switches on a kind's name."""

    arity: tuple[int, ...]  # accepted argument counts
    integer: bool = False
    log: bool = False
    numeric: bool = True
    quantized: bool = False  # the third argument is a step q
    usage: str = ""


KINDS: dict[str, Kind] = {
    "uniform": Kind((2,), usage="[low, high]"),
    "loguniform": Kind((2,), log=True, usage="[low, high] with 0 < low"),
    "quniform": Kind((3,), quantized=True, usage="[low, high, q]"),
    "qloguniform": Kind((3,), log=True, quantized=True, usage="[low, high, q] with 0 < low"),
    "randint": Kind((2,), integer=True, usage="[low, high], both inclusive"),
    "lograndint": Kind((2,), integer=True, log=True, usage="[low, high], both inclusive, 0 < low"),
    "qrandint": Kind((3,), integer=True, quantized=True, usage="[low, high, q], both inclusive"),
    "choice": Kind((), numeric=False, usage="[value, value, ...]"),
    "grid": Kind((), numeric=False, usage="[value, value, ...]"),
}
CONSTANT = "constant"


@dataclass(frozen=True)
class Param:
    """One hyperparameter: a distribution kind with its arguments, or a constant."""

    name: str
    kind: str  # a key of KINDS, or "constant"
    args: tuple[Any, ...]
    when: Mapping[str, tuple[Scalar, ...]] = field(default_factory=dict)

    @property
    def is_numeric_range(self) -> bool:
        return self.kind in KINDS and KINDS[self.kind].numeric

    @property
    def is_constant(self) -> bool:
        return self.kind == CONSTANT

    @property
    def is_categorical(self) -> bool:
        """A choice or a grid: a finite set of values, in no order."""
        return self.kind in KINDS and not KINDS[self.kind].numeric

    @property
    def is_integer(self) -> bool:
        return self.kind in KINDS and KINDS[self.kind].integer

    @property
    def values(self) -> tuple[Any, ...]:
        """The finite set of values for choice/grid/constant entries."""
        return self.args if self.is_categorical else (self.args[0],)

    @property
    def q(self) -> float | None:
        """The step of a quantized range, else None."""
        return self.args[2] if self.kind in KINDS and KINDS[self.kind].quantized else None


def parse_space(raw: Any, path: str = "space") -> tuple[dict[str, Param], list[Problem]]:
    """Parse the `space:` mapping; returns the params and every problem found (not just the first)."""
    if raw is None:
        return {}, []
    if not isinstance(raw, Mapping):
        return {}, [Problem(path, f"must be a mapping of parameter names to entries, got {type(raw).__name__}")]
    params: dict[str, Param] = {}
    problems: list[Problem] = []
    for name, entry in raw.items():
        param, errs = parse_param(str(name), entry, f"{path}.{name}")
        problems += errs
        if param is not None:
            params[param.name] = param
    problems += _check_conditions(params, path)
    return params, problems


def parse_param(name: str, entry: Any, path: str) -> tuple[Param | None, list[Problem]]:
    if isinstance(entry, (int, float, str, bool)) or entry is None:
        return Param(name, CONSTANT, (entry,)), []
    if isinstance(entry, list):
        return None, [Problem(path, f"a bare list is ambiguous: write {{choice: {entry}}} to sample "
                                    f"one value or {{grid: {entry}}} to try each")]
    if not isinstance(entry, Mapping):
        return None, [Problem(path, f"expected a constant or a mapping like {{uniform: [0, 1]}}, "
                                    f"got {type(entry).__name__}")]
    when_raw = entry.get("when")
    dist_keys = [k for k in entry if k != "when"]
    if len(dist_keys) != 1 or dist_keys[0] not in KINDS:
        unknown = [k for k in dist_keys if k not in KINDS]
        what = f"unknown distribution {unknown[0]!r}" if unknown else f"needs exactly one distribution, got {dist_keys}"
        return None, [Problem(path, f"{what}; use one of: {', '.join(KINDS)}")]
    kind_name = dist_keys[0]
    args = entry[kind_name]
    when, when_problems = _parse_when(when_raw, f"{path}.when")
    problems = when_problems + _check_args(kind_name, args, path)
    if problems:
        return None, problems
    return Param(name, kind_name, tuple(args), when), []


def _check_args(kind_name: str, args: Any, path: str) -> list[Problem]:
    kind = KINDS[kind_name]
    if not isinstance(args, list) or not args:
        return [Problem(path, f"{kind_name} needs a list {kind.usage}, got {args!r}")]
    if not kind.numeric:
        if not all(isinstance(v, (int, float, str, bool)) or v is None for v in args):
            return [Problem(path, f"{kind_name} values must be scalars (number, string, bool, null), got {args!r}")]
        if len(set(map(repr, args))) != len(args):
            return [Problem(path, f"{kind_name} values must be distinct, got {args!r}")]
        return []
    if len(args) not in kind.arity:
        return [Problem(path, f"{kind_name} needs {kind.usage}, got {args!r}")]
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in args):
        return [Problem(path, f"{kind_name} needs finite numbers {kind.usage}, got {args!r}")]
    if kind.integer and not all(float(v).is_integer() for v in args):
        return [Problem(path, f"{kind_name} needs integers {kind.usage}, got {args!r}; use uniform for floats")]
    low, high = args[0], args[1]
    if kind.log and not 0 < low < high:
        return [Problem(path, f"{kind_name} needs 0 < low < high, got {args!r}; "
                              f"use uniform/randint if the range includes 0")]
    if not low < high:
        return [Problem(path, f"{kind_name} needs low < high, got {args!r}; "
                              f"swap them, or write a constant for a fixed value")]
    if len(args) == 3 and not args[2] > 0:
        return [Problem(path, f"{kind_name} needs q > 0, got q={args[2]!r}")]
    return []


def _parse_when(raw: Any, path: str) -> tuple[dict[str, tuple[Scalar, ...]], list[Problem]]:
    if raw is None:
        return {}, []
    if not isinstance(raw, Mapping) or not raw:
        return {}, [Problem(path, f"must map a parameter to the value(s) that enable this one, "
                                  f"e.g. {{kernel: rbf}}; got {raw!r}")]
    return {str(k): tuple(v) if isinstance(v, list) else (v,) for k, v in raw.items()}, []


def _check_conditions(params: dict[str, Param], path: str) -> list[Problem]:
    problems = []
    for p in params.values():
        for parent, allowed in p.when.items():
            where = f"{path}.{p.name}.when.{parent}"
            if parent not in params:
                problems.append(Problem(where, f"conditions on unknown parameter {parent!r}; "
                                               f"known: {', '.join(params)}"))
            elif params[parent].is_numeric_range:
                problems.append(Problem(where, f"can only depend on a choice parameter, "
                                               f"{parent!r} is {params[parent].kind}"))
            elif params[parent].when:
                problems.append(Problem(where, f"{parent!r} is itself conditional; only one level "
                                               f"of conditions is supported"))
            elif bad := [v for v in allowed if v not in params[parent].values]:
                problems.append(Problem(where, f"{bad} not among {parent}'s values "
                                               f"{list(params[parent].values)}"))
    return problems


def merge_space(default: Mapping[str, Any], override: Mapping[str, Any] | None) -> dict[str, Any]:
    """A spec's space replaces the family default entry by entry; `null` removes a default entry."""
    merged = dict(default)
    for k, v in (override or {}).items():
        if v is None:
            merged.pop(k, None)
        else:
            merged[k] = v
    return merged


def is_conditional(params: Mapping[str, Param]) -> bool:
    return any(p.when for p in params.values())


def active(param: Param, config: Mapping[str, Any]) -> bool:
    """Whether a conditional parameter applies under an (already sampled) config."""
    return all(config.get(parent) in allowed for parent, allowed in param.when.items())


# --- the kinds in other libraries' terms: every translation is written once, here -------------

def tune_domain(p: Param) -> Any:
    """A parameter as a Ray Tune domain (a constant as itself). Ours include `high` for integer
    ranges; Ray's `randint`/`lograndint` exclude it (its `qrandint` includes it)."""
    from ray import tune

    if p.is_constant:
        return p.args[0]
    if p.is_categorical:
        return tune.grid_search(list(p.args)) if p.kind == "grid" else tune.choice(list(p.args))
    k, (low, high), q = KINDS[p.kind], p.args[:2], p.q
    if k.integer:
        if q is not None:
            return tune.qrandint(int(low), int(high), int(q))
        return (tune.lograndint if k.log else tune.randint)(int(low), int(high) + 1)
    if q is not None:
        return (tune.qloguniform if k.log else tune.quniform)(low, high, q)
    return (tune.loguniform if k.log else tune.uniform)(low, high)


def to_tune(params: Mapping[str, Param]) -> dict[str, Any]:
    """Ray Tune `param_space` for searchers that take Ray's own domains (unconditional spaces)."""
    return {name: tune_domain(p) for name, p in params.items()}


def optuna_distribution(p: Param) -> Any:
    """A sampled parameter as an Optuna distribution (None for a constant). Optuna has no log
    scale with a step: `qloguniform` is a log-scale float, rounded to q when sampled
    (`optuna_suggest`)."""
    from optuna import distributions as d

    if p.is_constant:
        return None
    if p.is_categorical:
        return d.CategoricalDistribution(list(p.args))
    k, (low, high), q = KINDS[p.kind], p.args[:2], p.q
    if k.integer:
        return d.IntDistribution(int(low), int(high), log=k.log, step=int(q) if q is not None else 1)
    return d.FloatDistribution(low, high, log=k.log, step=None if k.log else q)


def optuna_distributions(params: Mapping[str, Param]) -> dict[str, Any]:
    """The Optuna distribution of every sampled parameter."""
    return {name: dist for name, p in params.items() if (dist := optuna_distribution(p)) is not None}


def optuna_suggest(trial: Any, p: Param) -> Any:
    """One value of `p` from an Optuna trial (define-by-run), through its distribution."""
    from optuna import distributions as d

    dist = optuna_distribution(p)
    if isinstance(dist, d.CategoricalDistribution):
        return trial.suggest_categorical(p.name, list(dist.choices))
    if isinstance(dist, d.IntDistribution):
        return trial.suggest_int(p.name, dist.low, dist.high, step=dist.step, log=dist.log)
    value = trial.suggest_float(p.name, dist.low, dist.high, step=dist.step, log=dist.log)
    return on_grid(p, value) if dist.log and p.q is not None else value


def ax_parameter(p: Param) -> Any:
    """A sampled parameter as an Ax 1.x parameter config. A choice is given as unordered indices
    into its values (Ax wants one type per parameter; a YAML list may mix them, `[null, 3]`), which
    the searcher maps back; a quantized range as its plain range, rounded when handed out."""
    from ax.api.configs import ChoiceParameterConfig, RangeParameterConfig

    if p.is_categorical:
        return ChoiceParameterConfig(name=p.name, parameter_type="int", values=list(range(len(p.args))),
                                     is_ordered=False)
    k, (low, high) = KINDS[p.kind], p.args[:2]
    kind, cast = ("int", int) if k.integer else ("float", float)
    return RangeParameterConfig(name=p.name, parameter_type=kind, bounds=(cast(low), cast(high)),
                                scaling="log" if k.log else "linear")


def unquantized(p: Param) -> Param:
    """The plain range a quantized parameter steps through (`quniform` -> `uniform`), for a
    library that models the unrounded value; other parameters as they are."""
    if p.q is None:
        return p
    plain = next(name for name, k in KINDS.items()
                 if not k.quantized and (k.integer, k.log, k.numeric) == (p.is_integer, KINDS[p.kind].log, True))
    return Param(p.name, plain, p.args[:2], p.when)


def on_grid(p: Param, value: float) -> Any:
    """`value` rounded to `p`'s step q, kept inside [low, high]; as an int for integer kinds."""
    low, high, q = p.args
    r = round(value / q) * q
    r = r + q if r < low else r - q if r > high else r
    return int(r) if p.is_integer else float(r)


def contains(p: Param, value: Any) -> bool:
    """Whether `value` is one `p` can take (its choices, or inside its range)."""
    if p.is_categorical or p.is_constant:
        return value in p.values
    return isinstance(value, (int, float)) and not isinstance(value, bool) and p.args[0] <= value <= p.args[1]

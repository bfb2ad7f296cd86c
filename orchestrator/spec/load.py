"""The experiment spec: YAML in, a typed, validated, resolved `Experiment` out.

Two steps, both before Ray starts:
1. `ExperimentSpec` (orchestrator.spec.experiment) checks each section on its own (types, ranges,
   unknown keys), with the searcher and scheduler sections typed per algorithm by their `name`.
2. `resolve` checks the rules that span sections: the family exists and reports the metric,
   the space parses and suits the searcher, the scheduler's `max_t` is reachable.
Every problem found is reported at once, each with its YAML path and a fix.
"""

from __future__ import annotations

import difflib
import re
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from orchestrator.base import BOOLEAN_FOR_NUMBER, SECRET_INPUT, error_path
from orchestrator.errors import Problem, SpecError
from orchestrator.families.contract import Family
from orchestrator.families.metrics import COSTS
from orchestrator.families.registry import FamilyNotFound, FamilyRef, UserTrainable
from orchestrator.families.registry import resolve as resolve_family
from orchestrator.search import warmstart
from orchestrator.search.rules import Strategy
from orchestrator.search.schedulers import SCHEDULERS
from orchestrator.search.searchers import SEARCHERS
from orchestrator.search.space import Param, merge_space, parse_space
from orchestrator.spec.data import DataError, find_file
from orchestrator.spec.evaluation import check as check_evaluation
from orchestrator.spec.experiment import REGRET_BOUND_MIN_TRIALS, Experiment, ExperimentSpec, MetricSpec
from orchestrator.tracking.spec import check as check_trackers


def load_spec(path: str | Path, overrides: list[str] | None = None) -> Experiment:
    """Reads, validates and resolves a spec file; raises SpecError listing every problem."""
    path = Path(path)
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SpecError(f"cannot read spec: {exc.strerror}", source) from None
    except UnicodeDecodeError as exc:
        raise SpecError(f"not a UTF-8 text file (byte {exc.start}); a spec is YAML text", source) from None
    raw = parse_yaml(text, source)
    for item in overrides or []:
        apply_override(raw, item, source)
    return validate(raw, base_dir=path.resolve().parent, source=source)


def parse_yaml(text: str, source: str = "<spec>") -> dict[str, Any]:
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown position"
        raise SpecError(f"malformed YAML at {where}: {exc.problem or exc}", source) from None
    except yaml.YAMLError as exc:
        raise SpecError(f"malformed YAML: {exc}", source) from None
    if not isinstance(raw, dict):
        raise SpecError(f"the spec must be a YAML mapping (name:, family:, ...), got {type(raw).__name__}", source)
    return raw


def apply_override(raw: dict[str, Any], item: str, source: str = "<spec>") -> None:
    """`--set budget.trials=5`: the value is parsed as YAML, intermediate mappings are created."""
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise SpecError(Problem("--set", f"expected key.path=value, got {item!r}"), source)
    *parents, leaf = key.strip().split(".")
    node = raw
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise SpecError(Problem(f"--set {key}", f"{part!r} is not a mapping"), source)
    try:
        node[leaf] = yaml.safe_load(value)
    except yaml.YAMLError as exc:
        raise SpecError(Problem(f"--set {key}", f"value is not valid YAML: {exc}"), source) from None


def validate(raw: dict[str, Any], base_dir: Path | None = None, source: str = "<spec>") -> Experiment:
    try:
        spec = ExperimentSpec.model_validate(raw)
    except ValidationError as exc:
        raise SpecError([_problem(e) for e in exc.errors()], source) from None
    return resolve(spec, base_dir or Path.cwd(), source)


def resolve(spec: ExperimentSpec, base_dir: Path, source: str = "<spec>") -> Experiment:
    problems: list[Problem] = []
    try:
        family = resolve_family(spec.family, base_dir)
    except FamilyNotFound as exc:
        raise SpecError(Problem("family", str(exc)), source) from None

    if isinstance(family, Family):
        space_raw = merge_space(family.default_space, spec.space)
    else:
        space_raw = spec.space
        if not space_raw:
            problems.append(Problem("space", "a user trainable has no default space: list its hyperparameters"))
    params, space_problems = parse_space(space_raw)
    problems += space_problems
    problems += _check_param_names(spec, family)
    if isinstance(family, Family) and family.check_space is not None:
        problems += family.check_space(params)

    if isinstance(family, Family) and family.needs_data and spec.data.source == "file":
        try:
            find_file(spec.data, base_dir)
        except DataError as exc:
            problems.append(Problem(exc.field, str(exc)))
    mode, objectives, metric_problems = _check_metrics(spec, family)
    problems += metric_problems
    problems += _check_constraints(spec, family)
    strategy = Strategy(spec.searcher, spec.scheduler, params, family, tuple(n for n, _ in objectives),
                        tuple(c.metric for c in spec.constraints))
    problems += SEARCHERS[spec.searcher.name].check(strategy)
    problems += SCHEDULERS[spec.scheduler.name].check(strategy)
    problems += _check_budget(spec, params)
    problems += check_evaluation(spec.evaluation, family)
    problems += check_trackers(spec.tracking)  # a tracker that is on must be installed
    warm_points, warm_scores = [], []
    if spec.searcher.warm_start and not problems:
        ws = spec.searcher.warm_start
        warm_points, warm_scores, warm_problems = warmstart.load(ws.from_, ws.top_k, base_dir, spec.metric.name,
                                                                 mode, params)
        problems += warm_problems
    if problems:
        raise SpecError(problems, source)
    return Experiment(spec, family, params, mode, base_dir, source, tuple(warm_points), tuple(warm_scores),
                      tuple(objectives) if len(objectives) > 1 else ())


def _check_metrics(spec: ExperimentSpec, family: FamilyRef) -> tuple[str, list[tuple[str, str]], list[Problem]]:
    """The first metric's mode, every (name, mode), and the problems, for one metric or a list."""
    metrics = spec.metric if isinstance(spec.metric, list) else [spec.metric]
    where = [f"metric[{i}]" for i in range(len(metrics))] if isinstance(spec.metric, list) else ["metric"]
    objectives, problems = [], []
    for i, (metric, path) in enumerate(zip(metrics, where)):
        mode, found = _check_metric(metric, path, spec, family)
        objectives.append((metric.name, mode))
        problems += found
        if metric.name in [m.name for m in metrics[:i]]:
            problems.append(Problem(f"{path}.name", f"{metric.name!r} is listed twice; list each metric once"))
    if metrics[0].name in COSTS:
        problems.append(Problem(f"{where[0]}.name", f"{metrics[0].name} is measured only at a trial's last report, "
                                                    f"so it cannot come first (progress and checks follow the first "
                                                    f"metric at every report); list a score first: metric: "
                                                    f"[{{name: val_error}}, {{name: {metrics[0].name}}}]"))
    if len(metrics) > 1:
        if spec.searcher.warm_start:
            problems.append(Problem("searcher.warm_start", "ranks an earlier run's trials on one metric; with "
                                                           "several metrics use points_to_evaluate instead"))
        if spec.evaluation.protocol == "nested":
            problems.append(Problem("evaluation.protocol", "nested evaluation refits each outer fold's best trial, "
                                                           "and several metrics have no single best; use holdout "
                                                           "or kfold, or one metric"))
    return objectives[0][1], objectives, problems


def _check_metric(metric: MetricSpec, path: str, spec: ExperimentSpec, family: FamilyRef) -> tuple[str, list[Problem]]:
    if isinstance(family, UserTrainable):
        if metric.mode is None:
            return "min", [Problem(f"{path}.mode", f"say whether {metric.name} is minimised or maximised: "
                                                   f"mode: min or mode: max")]
        return metric.mode, []  # what a user trainable reports is checked on its first result
    known = family.reports(spec.data.resolved_task if family.needs_data else None)
    if metric.name not in known:
        close = did_you_mean(metric.name, known)
        hint = f"; did you mean {close!r}?" if close else ""
        return "min", [Problem(f"{path}.name", f"family {family.name} never reports {metric.name!r}{hint} "
                                               f"It reports: {', '.join(known)}")]
    natural = known[metric.name]
    if metric.mode is not None and metric.mode != natural:
        better = 'lower' if natural == 'min' else 'higher'
        return natural, [Problem(f"{path}.mode", f"{metric.name} is better when {better}"
                                                 f": use mode: {natural} (or leave mode out), got {metric.mode}")]
    return natural, []


def _check_constraints(spec: ExperimentSpec, family: FamilyRef) -> list[Problem]:
    """Each constraint bounds a metric the family reports, once. (What a user trainable reports is
    known only from its results: a metric it never reports leaves every trial's `feasible` null.)"""
    known = None if isinstance(family, UserTrainable) else \
        family.reports(spec.data.resolved_task if family.needs_data else None)
    problems, seen = [], set()
    for i, c in enumerate(spec.constraints):
        path = f"constraints[{i}].metric"
        if known is not None and c.metric not in known:
            close = did_you_mean(c.metric, known)
            hint = f"; did you mean {close!r}?" if close else ""
            problems.append(Problem(path, f"family {family.name} never reports {c.metric!r}{hint} "
                                          f"It reports: {', '.join(known)}"))
        if c.metric in seen:
            problems.append(Problem(path, f"{c.metric!r} is bounded twice; give each metric one entry"))
        seen.add(c.metric)
    return problems


def _check_param_names(spec: ExperimentSpec, family: FamilyRef) -> list[Problem]:
    """A misspelt hyperparameter is refused where the family lists what it understands."""
    known = family.known_params() if isinstance(family, Family) else None
    if known is None:
        return [Problem("extra_params", f"family {family.name} passes every name on unchecked; remove extra_params")] \
            if spec.extra_params else []
    problems = []
    for name in spec.space:
        if name not in known and name not in spec.extra_params:
            close = did_you_mean(name, known) if len(name) > 2 else None
            hint = f"did you mean {close!r}? " if close else ""
            problems.append(Problem(f"space.{name}", f"family {family.name} has no parameter {name!r}; {hint}"
                                                     f"its parameters: {', '.join(known)}. To pass a library "
                                                     f"parameter it does not list, add it to extra_params: [{name}]"))
    for i, name in enumerate(spec.extra_params):
        if name not in spec.space:
            problems.append(Problem(f"extra_params[{i}]", f"{name!r} is not in space:; list only names the space sets"))
    return problems


def _check_budget(spec: ExperimentSpec, params: Mapping[str, Param]) -> list[Problem]:
    budget, problems = spec.budget, []
    total = budget.trials * SEARCHERS[spec.searcher.name].grid_size(params)
    if budget.concurrent > total:
        problems.append(Problem("budget.concurrent", f"{budget.concurrent} is above the {total} trials this search "
                                                     f"runs; lower concurrent or raise trials"))
    if budget.gpu_hours is not None and not spec.resources.gpu:
        problems.append(Problem("budget.gpu_hours", f"no trial holds a GPU (resources.gpu is {spec.resources.gpu:g}), "
                                                    f"so {budget.gpu_hours:g} GPU-hours are never spent; set "
                                                    f"resources.gpu, or use budget.cpu_hours"))
    if budget.stop is not None and isinstance(spec.metric, list):
        problems.append(Problem("budget.stop", "its rules follow one best score, and several metrics have none "
                                               "(a Pareto front); use one metric, or budget.trials/time_s/cpu_hours"))
    if budget.stop is not None and budget.stop.regret_bound is not None and total <= REGRET_BOUND_MIN_TRIALS:
        problems.append(Problem("budget.stop.regret_bound", f"needs more than {REGRET_BOUND_MIN_TRIALS} trials with a "
                                                            f"score to end a search, and this one runs {total}; raise "
                                                            f"budget.trials, or use patience"))
    if budget.in_flight == "finish" and budget.stop is None and budget.cpu_hours is None and budget.gpu_hours is None:
        problems.append(Problem("budget.in_flight", "finish applies when budget.stop, cpu_hours or gpu_hours ends the "
                                                    "search, and none is set (budget.time_s always stops the trials "
                                                    "running); set one of them, or remove in_flight"))
    return problems


# --- pydantic errors -> Problems with YAML paths and fixes ------------------------------------

_UNIONS = {"searcher": SEARCHERS, "scheduler": SCHEDULERS}
_SHAPES = ("one", "list")  # the tags of `metric:` (Metrics)


def _problem(err: Mapping[str, Any]) -> Problem:
    loc = error_path(err)
    # Discriminated unions put the chosen tag into the path (searcher.asha.max_t): drop it.
    if len(loc) > 1 and (loc[0] in _UNIONS and loc[1] in _UNIONS[loc[0]] or loc[0] == "metric" and loc[1] in _SHAPES):
        loc.pop(1)
    path = ".".join(f"[{p}]" if isinstance(p, int) else str(p) for p in loc).replace(".[", "[")
    kind, msg = err["type"], err["msg"]
    if kind in (BOOLEAN_FOR_NUMBER, SECRET_INPUT):
        return Problem(path, msg)
    if kind == "extra_forbidden":
        valid = _valid_keys(err["loc"])
        close = did_you_mean(str(loc[-1]), valid)
        hint = f"did you mean {close!r}? " if close else ""
        return Problem(path, f"unknown key; {hint}valid keys here: {', '.join(valid)}")
    if kind == "union_tag_invalid":
        section = loc[0]
        return Problem(f"{path}.name", f"unknown {section} {err['input'].get('name')!r}; "
                                       f"known: {', '.join(_UNIONS[section])}")
    if kind == "union_tag_not_found":
        return Problem(f"{path}.name", f"missing; known: {', '.join(_UNIONS[loc[0]])}")
    if kind == "missing":
        return Problem(path, "required; add it to the spec")
    if kind == "too_short" and path == "metric":
        return Problem(path, "a list names two or more metrics (a multi-objective search); for one, write "
                             "metric: {name: ..., mode: ...}")
    if kind == "literal_error":
        return Problem(path, f"{msg}, got {err['input']!r}")
    if kind == "string_pattern_mismatch" and path == "name":
        return Problem(path, f"use letters, digits, '_', '.', '-' (it names the results folder), got {err['input']!r}")
    msg = re.sub(r"^Value error, ", "", msg)
    return Problem(path, f"{msg}, got {err['input']!r}" if "got" not in msg and kind != "model_type" else msg)


def did_you_mean(word: str, options) -> str | None:
    """The option the user most likely meant: a prefix match first (grace -> grace_period), then spelling."""
    options = list(options)
    prefixed = [o for o in options if o.startswith(word) or word.startswith(o)]
    if prefixed:
        return prefixed[0]
    close = difflib.get_close_matches(word, options, n=1)
    return close[0] if close else None


def _valid_keys(loc: tuple) -> list[str]:
    model: type[BaseModel] | None = ExperimentSpec
    parts = list(loc[:-1])
    while parts and model is not None:
        part = parts.pop(0)
        if part in _UNIONS and parts and parts[0] in _UNIONS[part]:
            model = _UNIONS[part][parts.pop(0)].options
            continue
        if part == "metric":  # either shape holds MetricSpec entries
            parts = [p for p in parts if p not in _SHAPES and not isinstance(p, int)]
            model = MetricSpec
            continue
        field = model.model_fields.get(part)
        ann = field.annotation if field else None
        # X | None: the model inside
        ann = next((a for a in typing.get_args(ann) if isinstance(a, type) and issubclass(a, BaseModel)), ann)
        model = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
    return list(model.model_fields) if model is not None else []


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML keeps the last of two equal keys without a word; a spec with one is a mistake."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}: remove one of them", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)

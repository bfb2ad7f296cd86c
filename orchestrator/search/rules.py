"""What a searcher's or scheduler's rules see, so that each registry entry can own its checks.

A rule is a function `(options, strategy) -> list[Problem]`; `options.section` ("searcher" or
"scheduler") says which part of the spec a problem points at. Entries in orchestrator.search.searchers
and orchestrator.search.schedulers list their rules next to their factory; the spec calls
`entry.check(strategy)` for the searcher and the scheduler it names and never looks at what an
entry can or cannot do. Adding a searcher or scheduler therefore touches one file.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from orchestrator.errors import Problem
from orchestrator.families.contract import Family
from orchestrator.families.registry import FamilyRef
from orchestrator.search.space import Param


@dataclass(frozen=True)
class Strategy:
    """The spec's searcher and scheduler sections with the parsed space and the family."""

    searcher: Any  # orchestrator.search.searchers.SearcherOptions
    scheduler: Any  # orchestrator.search.schedulers.SchedulerOptions
    params: Mapping[str, Param]
    family: FamilyRef
    objectives: tuple[str, ...] = ()  # the spec's metric names: more than one for a multi-objective search
    constraints: tuple[str, ...] = ()  # the metrics the spec's `constraints:` bound

    @property
    def iterations_param(self) -> str | None:
        return self.family.iterations_param if isinstance(self.family, Family) else None

    @property
    def most_iterations(self) -> int | None:
        """The most iterations a trial can report, when the family's iterations parameter bounds it."""
        return most_iterations(self.params, self.family)


Rule = Callable[[Any, Strategy], list[Problem]]


def most_iterations(params: Mapping[str, Param], family: FamilyRef) -> int | None:
    name = family.iterations_param if isinstance(family, Family) else None
    p = params.get(name) if name else None
    if p is None:
        return None
    values = (p.args[1],) if p.is_numeric_range else p.values
    return int(max(values))


PACKAGES = {"ax": "ax-platform"}  # the package to install for a module, where the names differ


def requires(*modules: str) -> Rule:
    """The entry's optional dependencies must import."""

    def rule(opts, strategy: Strategy) -> list[Problem]:
        missing = [m for m in modules if importlib.util.find_spec(m) is None]
        if not missing:
            return []
        return [Problem(f"{opts.section}.name", f"{opts.name} needs {', '.join(missing)}: pip install "
                                                    f"{' '.join(PACKAGES.get(m, m) for m in missing)} "
                                                    f"(pinned in requirements.lock)")]

    return rule


def flat_space(opts, strategy: Strategy) -> list[Problem]:
    """Conditional (`when:`) parameters cannot be honoured."""
    cond = next((p.name for p in strategy.params.values() if p.when), None)
    if cond is None:
        return []
    if opts.section == "scheduler":
        return [Problem("scheduler.name", f"{opts.name} mutates a flat space; drop `when:` conditions")]
    return [Problem(f"space.{cond}.when", f"searcher {opts.name} cannot honour conditional parameters; "
                                           f"use optuna-tpe or random, or drop `when:`")]


def one_objective(opts: Any, strategy: Any) -> list[Problem]:
    """This searcher or scheduler works on one metric only."""
    if len(strategy.objectives) < 2:
        return []
    if opts.section == "scheduler":
        return [Problem("scheduler.name", f"{opts.name} compares trials on one metric, and the spec lists "
                                          f"{len(strategy.objectives)}; use scheduler: {{name: fifo}}, or one metric")]
    return [Problem("searcher.name", f"{opts.name} optimises one metric, and the spec lists "
                                     f"{len(strategy.objectives)}; use optuna-nsga2, optuna-tpe, random or grid, "
                                     f"or one metric")]

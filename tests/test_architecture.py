"""The package's shape: imports point one way, Ray Tune stays behind few modules, Ray's private
APIs are named in one place and still exist, and every `trial` a family can get fulfils the contract."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from orchestrator import ray_api
from orchestrator.families.contract import Trial
from orchestrator.trial.context import TrialContext

PACKAGE = Path(__file__).resolve().parent.parent / "orchestrator"
# Modules that may import ray.tune: the driver and the Tune objects it builds, and the one place
# a trial's Ray calls go through.
# smac_search: SMAC behind Ray's Searcher base class, its space from Ray's ConfigSpace converter.
RAY_TUNE_MODULES = {"runner", "callbacks", "searchers", "schedulers", "ray_schedulers", "space", "ray_api",
                    "smac_search"}


def imports() -> dict[str, set[str]]:
    """module -> every module it imports: top level, inside functions, under TYPE_CHECKING alike."""
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.glob("*.py"):
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                found.add(node.module)
                if node.module == "orchestrator":  # from orchestrator import data, refit
                    found |= {f"orchestrator.{a.name}" for a in node.names}
        graph[path.stem] = found
    return graph


def internal(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    return {m: {i.removeprefix("orchestrator.") for i in deps if i.startswith("orchestrator.")} - {m}
            for m, deps in graph.items()}


def test_the_import_graph_has_no_cycle():
    graph = internal(imports())
    state: dict[str, int] = {}

    def visit(module: str, path: list[str]) -> None:
        if state.get(module) == 1:
            pytest.fail("import cycle: " + " -> ".join(path[path.index(module):] + [module]))
        if state.get(module) == 2:
            return
        state[module] = 1
        for dep in sorted(graph.get(module, ())):
            if dep in graph:
                visit(dep, path + [module])
        state[module] = 2

    for module in graph:
        visit(module, [])


def test_the_lower_layers_never_import_the_driver_or_the_cli():
    graph = internal(imports())
    for module, deps in graph.items():
        if module not in ("cli", "__init__"):
            assert "cli" not in deps, module
        if module not in ("cli", "job_entry", "resume", "runner"):
            assert "runner" not in deps, f"{module} imports the runner"


def test_only_the_named_modules_import_ray_tune():
    users = {m for m, deps in imports().items() if any(d == "ray.tune" or d.startswith("ray.tune.") for d in deps)}
    assert users <= RAY_TUNE_MODULES, f"ray.tune imported outside the named modules: {users - RAY_TUNE_MODULES}"


def test_private_ray_apis_are_imported_in_ray_api_only_and_all_still_exist():
    private = {"ray._raylet", "ray.experimental.internal_kv"}
    for module, deps in imports().items():
        if module != "ray_api":
            assert not {d for d in deps if d in private or "._private" in d}, module
    assert ray_api.missing_private_apis() == [], f"Ray {ray_api.CHECKED_AGAINST}-era private APIs are gone"


def test_every_trial_a_family_can_get_fulfils_the_contract():
    from orchestrator.trial.folds import _FoldContext
    from orchestrator.run.refit import _Collect

    ctx = TrialContext(seed=0, cpus=1, gpus=0.0)
    assert isinstance(ctx, Trial) and ctx.metric is None
    assert isinstance(_Collect(ctx), Trial)
    assert isinstance(_FoldContext(fold=None, trial=ctx), Trial)

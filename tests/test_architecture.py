"""The package's shape: sub-packages in layers that import only downwards, no import cycle, Ray Tune
behind few modules, Ray's private APIs named in one place and still there, analysis apart from the
run side, families that see only their contract, and every `trial` a family can get fulfils it.

Imports are read from the source (top level, inside functions, under TYPE_CHECKING alike), and
`from ray import tune` counts as importing `ray.tune`.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from orchestrator import ray_api
from orchestrator.families.contract import Trial
from orchestrator.trial.context import TrialContext

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "orchestrator"

# Bottom to top: a module may import its own package and the packages of lower layers only.
LAYERS = (
    {"errors", "base", "ray_api"},  # the foundation: error types, the spec base model, Ray's moving APIs
    {"families"},  # the Family/Trial contract, the metric vocabulary, how a family is found
    {"results"},  # the run folder: contract, writer, reader, claims
    {"search"},  # the space, searchers, schedulers and their rules
    {"analysis"},  # run folders -> frames and figures (stricter still: ANALYSIS_MAY_IMPORT)
    {"tracking"},  # MLflow, TensorBoard, W&B behind a registry
    {"spec"},  # YAML -> Experiment
    {"trial"},  # what runs inside a Ray worker
    {"model"},  # the saved model: formats, card, load and predict (never Ray, never the run's lifecycle)
    {"cluster"},  # cluster files, local clusters, the Jobs API, live nodes, auth
    {"run"},  # the driver: a run folder's lifecycle
    {"cli", "job_entry", "__init__"},  # the entry points
)
# Analysis opens a cluster's results on a laptop: it reads the results contract and the space (for
# Optuna's distributions), never the run side or a family's code.
ANALYSIS_MAY_IMPORT = {"errors", "base", "results", "search.space", "analysis"}
# Modules that may import ray.tune: the Tuner and the Tune objects it is built from, and the one
# place a trial's Ray calls go through (smac, ax: SMAC and Ax behind Ray's Searcher base class).
RAY_TUNE_MODULES = {"run.tuner", "run.callbacks", "search.searchers", "search.schedulers", "search.ray_schedulers",
                    "search.ray_searchers", "search.resumable", "search.space", "search.smac", "search.ax", "ray_api"}


def module_name(path: Path) -> str:
    """orchestrator/run/tuner.py -> "run.tuner"; a package's __init__.py -> its package ("run")."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" and len(parts) > 1 else parts)


def imported(tree: ast.AST) -> set[str]:
    """Every dotted name a module imports; `from a import b` adds both `a` and `a.b` (b may be a module)."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return found


def imports() -> dict[str, set[str]]:
    """module -> every dotted name it imports."""
    return {module_name(p): imported(ast.parse(p.read_text())) for p in PACKAGE.rglob("*.py")}


def internal(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """module -> the modules of ours it imports (names that are not modules, like a class, dropped)."""
    ours = set(graph)
    return {m: {i.removeprefix("orchestrator.") for i in deps if i.startswith("orchestrator.")} & ours - {m}
            for m, deps in graph.items()}


def package(module: str) -> str:
    return module.split(".")[0]


def layer(module: str) -> int:
    return next(i for i, names in enumerate(LAYERS) if package(module) in names)


def test_every_module_has_a_layer():
    assert not [m for m in imports() if not any(package(m) in names for names in LAYERS)]


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
            visit(dep, path + [module])
        state[module] = 2

    for module in graph:
        visit(module, [])


def test_packages_import_only_their_own_and_lower_layers():
    upward = [f"{m} imports {d}" for m, deps in internal(imports()).items() for d in deps
              if package(d) != package(m) and layer(d) > layer(m)]
    assert not upward, "imports that point up the layers:\n" + "\n".join(sorted(upward))


def test_analysis_reads_results_and_never_the_run_side_or_a_family():
    graph = imports()
    leaks = [f"{m} imports {d}" for m, deps in internal(graph).items() if package(m) == "analysis" for d in deps
             if not any(d == ok or d.startswith(f"{ok}.") for ok in ANALYSIS_MAY_IMPORT)]
    leaks += [f"{m} imports {d}" for m, deps in graph.items() if package(m) == "analysis" for d in deps
              if d == "experiments" or d.startswith("experiments.")]
    assert not leaks, "\n".join(sorted(leaks))


def test_package_inits_import_nothing_of_ours():
    """Importing one module (a notebook's `orchestrator.analysis.runs`, a worker's trainable) must not
    pull in its siblings through a package's __init__."""
    for init in PACKAGE.glob("*/__init__.py"):
        assert not {i for i in imported(ast.parse(init.read_text())) if i.startswith("orchestrator")}, init


def test_only_the_named_modules_import_ray_tune():
    users = {m for m, deps in imports().items() if any(d == "ray.tune" or d.startswith("ray.tune.") for d in deps)}
    assert users <= RAY_TUNE_MODULES, f"ray.tune imported outside the named modules: {users - RAY_TUNE_MODULES}"


def test_from_ray_import_tune_counts_as_importing_ray_tune():
    """The rule above once missed `from ray import tune` (recorded as `ray`): resume.py escaped it."""
    assert "ray.tune" in imported(ast.parse("def f():\n    from ray import tune\n"))
    assert module_name(PACKAGE / "run" / "tuner.py") == "run.tuner"


def test_families_see_only_their_contract():
    """A family module (experiments/) imports the family contract and metrics, and nothing else of ours."""
    for path in (ROOT / "experiments").glob("*.py"):
        ours = {i for i in imported(ast.parse(path.read_text())) if i.startswith("orchestrator")}
        assert {i for i in ours if not i.startswith(("orchestrator.families.contract", "orchestrator.families.metrics",
                                                     "orchestrator.errors"))} <= {"orchestrator.families",
                                                                                  "orchestrator"}, (path, ours)


def test_private_ray_apis_are_imported_in_ray_api_only_and_all_still_exist():
    private = {"ray._raylet", "ray.experimental.internal_kv"}
    for module, deps in imports().items():
        if module != "ray_api":
            assert not {d for d in deps if d in private or "._private" in d}, module
    assert ray_api.missing_private_apis() == [], f"Ray {ray_api.CHECKED_AGAINST}-era private APIs are gone"


def test_every_trial_a_family_can_get_fulfils_the_contract():
    from orchestrator.run.refit import _Collect
    from orchestrator.trial.folds import _FoldContext

    ctx = TrialContext(seed=0, cpus=1, gpus=0.0)
    assert isinstance(ctx, Trial) and ctx.metric is None
    assert isinstance(_Collect(ctx), Trial)
    assert isinstance(_FoldContext(fold=None, trial=ctx), Trial)


def test_tunes_callback_usage_tag_is_counted_the_same_without_importing_the_integrations():
    """Tune's telemetry imports MLflow, W&B, Comet and Aim's integrations at every fit to count a
    run's callbacks by class (~1.4 s before the first trial); ours counts by name, to the same tag."""
    import json
    import subprocess
    import sys

    script = """
import json, sys
from ray.air._internal import usage
from ray.tune import Callback
from ray.tune.logger import CSVLoggerCallback, LoggerCallback
class Mine(LoggerCallback): pass
class MLflowLoggerCallback(Callback): pass  # a user's class with an integration's name counts as it
callbacks = [Callback(), CSVLoggerCallback(), Mine(), MLflowLoggerCallback(), 3]
if sys.argv[1] == "ours":
    from orchestrator import ray_api
    ray_api.count_callbacks_without_imports()
print(json.dumps([dict(usage._count_callbacks(callbacks)), "mlflow" in sys.modules, "wandb" in sys.modules]))
"""
    out = {side: json.loads(subprocess.run([sys.executable, "-c", script, side], capture_output=True, text=True,
                                           check=True).stdout.splitlines()[-1]) for side in ("ray", "ours")}
    assert out["ours"][0] == out["ray"][0] == {"CustomCallback": 1, "CSVLoggerCallback": 1, "CustomLoggerCallback": 1,
                                               "MLflowLoggerCallback": 1}
    assert out["ray"][1:] == [True, True] and out["ours"][1:] == [False, False]

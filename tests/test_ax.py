"""The `ax` searcher (orchestrator.search.ax): Ax 1.x's Client behind Ray Tune's Searcher.

Driven directly (suggest / on_trial_complete, no Ray trials) with a small initial design, so
that most proposals are Ax's Sobol points and the file stays fast; one test reaches the model.
Real runs under FIFO, ASHA, HyperBand and the median rule are in test_strategies' matrix.
"""

from __future__ import annotations

import json
import pickle

import pandas as pd
import pytest

from orchestrator.errors import SpecError
from orchestrator.results.constraints import Constraint
from orchestrator.run.driver import run
from orchestrator.run.tuner import build_tune_config
from orchestrator.search.resumable import base_searcher
from orchestrator.spec.load import load_spec, validate
from tests.conftest import EXPERIMENTS

SPACE = {"x": {"uniform": [-5, 5]}, "lr": {"loguniform": [1e-4, 1.0]}, "depth": {"randint": [2, 9]},
         "step": {"quniform": [0, 1, 0.25]}, "kind": {"choice": [None, 3, "b"]}, "only": {"choice": ["one"]},
         "iterations": 2}


def spec(**searcher) -> dict:
    return {"name": "ax", "family": "synthetic", "metric": {"name": "loss"}, "space": SPACE,
            "searcher": {"name": "ax", "seed": 0, "initialization_budget": 3, **searcher},
            "budget": {"trials": 6, "concurrent": 2}}


def searcher_of(raw: dict):
    return base_searcher(build_tune_config(validate(raw))[0].search_alg)


def in_space(config: dict) -> None:
    assert -5 <= config["x"] <= 5 and isinstance(config["x"], float)
    assert 1e-4 <= config["lr"] <= 1.0
    assert 2 <= config["depth"] <= 9 and isinstance(config["depth"], int)
    assert config["step"] in (0.0, 0.25, 0.5, 0.75, 1.0)
    assert config["kind"] in (None, 3, "b") and config["only"] == "one" and config["iterations"] == 2


def test_proposals_are_in_the_space_with_the_yamls_own_values():
    alg = searcher_of(spec())
    seen = set()
    for i in range(5):
        config = alg.suggest(f"t{i}")
        in_space(config)
        seen.add(config["kind"])
        alg.on_trial_complete(f"t{i}", {"loss": config["x"] ** 2, "training_iteration": 2})
    assert len(seen) >= 2  # choices map back from Ax's indices to more than one YAML value
    trials = alg._ax._experiment.trials
    assert len(trials) == 5 and all(t.status.is_completed for t in trials.values())


def test_points_to_evaluate_come_first_and_missing_values_are_drawn():
    alg = searcher_of(spec(points_to_evaluate=[{"x": 1.5, "kind": 3}]))
    first = alg.suggest("t0")
    in_space(first)
    assert first["x"] == 1.5 and first["kind"] == 3


def test_constraints_reach_ax_as_outcome_constraints_with_each_trials_values():
    raw = spec()
    raw["constraints"] = [{"metric": "regret", "max": 0.5}]
    alg = searcher_of(raw)
    assert alg._constraints == (Constraint("regret", max=0.5),)
    alg.suggest("t0"), alg.suggest("t1")
    alg.on_trial_complete("t0", {"loss": 2.0, "regret": 0.7})
    alg.on_trial_complete("t1", {"loss": 1.0})  # stopped before reporting regret: the score alone
    opt = alg._ax._experiment.optimization_config
    assert [str(c) for c in opt.outcome_constraints] == ["OutcomeConstraint(c0 <= 0.5)"]
    assert opt.objective.minimize
    data = alg._ax._experiment.lookup_data().df
    got = {(int(r.trial_index), r.metric_name): r["mean"] for _, r in data.iterrows()}
    assert got == {(0, "m0"): 2.0, (0, "c0"): 0.7, (1, "m0"): 1.0}


def test_a_failed_trial_and_one_without_a_score_are_failed_in_ax():
    alg = searcher_of(spec())
    for t in ("a", "b", "c"):
        alg.suggest(t)
    alg.on_trial_complete("a", error=True)
    alg.on_trial_complete("b", {"loss": float("nan")})
    alg.on_trial_result("c", {"loss": 0.3, "training_iteration": 1})
    alg.on_trial_complete("c")  # HyperBand stopped it while paused: its last report counts
    statuses = [t.status.name for t in alg._ax._experiment.trials.values()]
    assert statuses == ["FAILED", "FAILED", "COMPLETED"]
    assert alg.told[2][1] == {"m0": 0.3}


def test_the_state_restores_by_replaying_into_a_new_client(tmp_path):
    """`hpo resume`: Tune restores the searcher from its snapshot; Ax's client is rebuilt, with the
    finished trials told and the running one counted as running."""
    alg = searcher_of(spec(initialization_budget=6))  # every proposal here from the initial design
    for i in range(4):
        assert alg.suggest(f"t{i}") is not None
    for i in range(3):
        alg.on_trial_complete(f"t{i}", {"loss": float(i)})
    path = tmp_path / "searcher.pkl"
    alg.save(str(path))
    assert b"ax.api" not in path.read_bytes()  # plain data: nothing of Ax's is pickled
    again = pickle.loads(pickle.dumps(alg))  # what Tune's experiment snapshot does
    again.restore(str(path))
    nxt = again.suggest("t4")
    in_space(nxt)
    trials = again._ax._experiment.trials
    assert [t.status.name for t in trials.values()] == ["COMPLETED"] * 3 + ["RUNNING", "RUNNING"]
    again.on_trial_complete("t3", {"loss": 9.0})  # attached fourth: told ones first, then the pending
    assert trials[3].status.name == "COMPLETED"


def test_a_resumed_run_tells_trials_that_finished_after_the_snapshot():
    raw = spec()
    raw["constraints"] = [{"metric": "regret", "max": 0.5}]
    alg = searcher_of(raw)
    alg.add_evaluated_point({"x": 0.5, "lr": 0.01, "depth": 3, "step": 0.5, "kind": "b", "only": "one",
                             "iterations": 2}, 0.25, result={"loss": 0.25, "regret": 0.1})
    (values, outcomes), = alg.told
    assert outcomes == {"m0": 0.25, "c0": 0.1}
    assert {k: values[k] for k in ("x", "lr", "depth", "step", "kind")} == {"x": 0.5, "lr": 0.01, "depth": 3,
                                                                            "step": 0.5, "kind": "b"}
    assert set(values) == set(alg._sampled())  # the family's own x1, x2 drawn: Ax takes whole configs only
    assert alg._ax._experiment.trials[0].status.name == "COMPLETED"


def test_a_warm_start_is_told_to_ax_before_its_first_proposal(tmp_path):
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    rows = [{"trial_id": f"t{i}", "score": s, "config.x": x, "config.kind": "b"} for i, (x, s) in
            enumerate([(1.0, 0.5), (2.0, 1.5), (99.0, 0.1)])]  # x = 99 is outside the space: dropped
    pd.DataFrame(rows).to_parquet(earlier / "trials.parquet")
    (earlier / "experiment.json").write_text('{"metric": {"name": "loss", "mode": "min"}}')
    alg = searcher_of(spec(warm_start={"from": str(earlier)}))
    in_space(alg.suggest("t0"))
    assert [(v["x"], v["kind"], o) for v, o in alg.told] == [(1.0, "b", {"m0": 0.5}), (2.0, "b", {"m0": 1.5})]
    assert [t.status.name for t in alg._ax._experiment.trials.values()] == ["COMPLETED", "COMPLETED", "RUNNING"]


def test_the_model_takes_over_after_the_initial_design():
    alg = searcher_of(spec())
    for i in range(4):
        config = alg.suggest(f"t{i}")
        alg.on_trial_complete(f"t{i}", {"loss": (config["x"] - 1) ** 2 + config["depth"]})
    nodes = [t.generator_runs[0]._generation_node_name for t in alg._ax._experiment.trials.values()]
    assert nodes == ["CenterOfSearchSpace", "Sobol", "Sobol", "MBM"], nodes  # MBM: Ax's BoTorch model


@pytest.mark.parametrize("change, line", [
    ({"space": {**SPACE, "y": {"uniform": [0, 1], "when": {"kind": ["b"]}}}},
     "space.y.when: searcher ax cannot honour conditional parameters"),
    ({"metric": [{"name": "loss"}, {"name": "regret"}]}, "searcher.name: ax optimises one metric"),
    ({"space": {**SPACE, "g": {"grid": [1, 2]}}}, "space.g: grid entries are enumerated, but searcher ax"),
])
def test_what_ax_cannot_do_is_refused_naming_the_field(change, line):
    with pytest.raises(SpecError) as info:
        validate({**spec(), **change})
    assert any(str(p).startswith(line) for p in info.value.problems), info.value.problems


def test_the_example_spec_runs_at_smoke_size(ray_local, tmp_path):
    """experiments/xgboost_ax_constrained.yaml, 4 trials (Ax's initial design): a real constrained
    XGBoost run through Ax, every trial judged, the best feasible."""
    exp = load_spec(EXPERIMENTS / "xgboost_ax_constrained.yaml", ["budget.trials=4"])
    summary = run(exp, tmp_path / "run", quiet=True)
    meta = json.loads((summary.run_dir / "experiment.json").read_text())
    trials = pd.read_parquet(summary.run_dir / "trials.parquet")
    assert meta["status"] == "finished" and len(trials) == 4 and (trials["status"] == "completed").all()
    assert (trials["feasible"] == (trials["metric.model_size"] <= 2500)).all()
    assert meta["best"]["feasible"] is True and meta["best"]["metric.model_size"] <= 2500

"""Constraints (`constraints: [{metric, max|min}]`): the spec's bad input refused before Ray starts,
feasibility judged by hand-made records against a rule written out here, Optuna told each
trial's constraint values (a real OptunaSearch and study, no Ray run), the export, and real runs:
a constrained XGBoost search whose unconstrained best breaks the bound, and one with no feasible
trial."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from orchestrator.errors import SpecError
from orchestrator.results.constraints import Constraint, judge
from orchestrator.results.contract import EXPERIMENT, TRIALS
from orchestrator.results.writer import Recorder
from orchestrator.search.searchers import SEARCHERS
from orchestrator.spec.load import validate

XGB = {"name": "xc", "family": "xgboost", "metric": {"name": "val_error"},
       "data": {"source": "sklearn", "name": "digits", "test_size": 0.2, "valid_size": 0.2, "seed": 0},
       "space": {"n_estimators": {"randint": [3, 20]}, "max_depth": {"randint": [2, 7]},
                 "learning_rate": {"loguniform": [0.05, 0.5]}},
       "searcher": {"name": "optuna-tpe", "seed": 0}, "scheduler": {"name": "fifo"},
       "budget": {"trials": 8, "concurrent": 2}}
# Written out here, not read from the registry: which searchers take constraints.
TAKE = {"optuna-tpe", "optuna-nsga2", "optuna-gp", "ax", "random", "grid"}


def xgb(*constraints, **extra) -> dict:
    return {**XGB, "constraints": list(constraints), **extra}


def problems(raw) -> list[str]:
    with pytest.raises(SpecError) as info:
        validate(raw)
    return [str(p) for p in info.value.problems]


def feasible_by_hand(value: float | None, c: dict) -> bool | None:
    """The rule, independently of orchestrator.results.constraints."""
    if value is None or math.isnan(value):
        return None
    return value <= c["max"] if "max" in c else value >= c["min"]


# --- bad input: one line each, naming the field ------------------------------------------------

def test_a_metric_the_family_never_reports_is_refused_with_a_did_you_mean():
    assert problems(xgb({"metric": "model_sise", "max": 100})) == [
        "constraints[0].metric: family xgboost never reports 'model_sise'; did you mean 'model_size'? It reports: "
        "val_accuracy, val_error, val_log_loss, val_auc, val_f1, predict_ms, model_size"]


def test_a_bound_that_is_not_a_finite_number_is_refused():
    assert problems(xgb({"metric": "model_size", "max": math.nan})) == [
        "constraints[0].max: Input should be a finite number, got nan"]


def test_analysis_ranks_feasible_trials_first_as_the_run_judged_its_best(tmp_path):
    from orchestrator.analysis.runs import best_trials_of

    rec = _recorder(tmp_path, (Constraint("size", max=10.0),))
    from orchestrator.results.parquet import frame

    ranked = best_trials_of(frame(rec.rows()), "min", 4)
    assert list(ranked["trial_id"]) == ["b", "d", "a", "c"]  # a (loss 1.0) broke the bound, c is unknown


def test_max_and_min_both_or_neither_are_refused():
    assert problems(xgb({"metric": "model_size", "max": 100, "min": 10})) == [
        "constraints[0]: needs exactly one of max or min, got both (max 100, min 10); keep the one the search "
        "would cross (one bound per metric)"]
    assert problems(xgb({"metric": "val_accuracy", "max": 1}, {"metric": "model_size"})) == [
        "constraints[1]: needs a bound, got neither max nor min; add max: X (feasible when model_size <= X) or "
        "min: X (when >= X)"]
    assert problems(xgb({"metric": "model_size", "max": 1}, {"metric": "model_size", "max": 2})) == [
        "constraints[1].metric: 'model_size' is bounded twice; give each metric one entry"]


@pytest.mark.parametrize("name", sorted(SEARCHERS))
def test_only_searchers_that_can_take_constraints_accept_them(name):
    searcher = {"name": name, "seed": 0}
    extra = {"scheduler": {"name": "bohb-hyperband", "max_t": 20}} if name == "bohb" else {}
    raw = xgb({"metric": "model_size", "max": 100}, searcher=searcher, **extra)
    if name in TAKE:
        assert validate(raw).constraints == (Constraint("model_size", max=100.0),)
        return
    found = [p for p in problems(raw) if p.startswith("searcher.name: ")]
    assert found == [f"searcher.name: {name} cannot take constraints (on model_size); use optuna-tpe, "
                     f"optuna-nsga2, optuna-gp or ax, or remove constraints"]


def test_a_warm_start_is_refused_with_constraints():
    raw = xgb({"metric": "model_size", "max": 100}, searcher={"name": "optuna-tpe", "warm_start": {"from": "x"}})
    assert problems(raw) == ["searcher.warm_start: an earlier run's trials carry no feasibility for this spec's "
                             "constraints; use points_to_evaluate instead"]


def test_hpo_validate_exits_2_with_the_line(write_spec, capsys):
    from orchestrator.cli import main

    path = write_spec("name: s\nfamily: synthetic\nmetric: {name: loss}\nsearcher: {name: hyperopt-tpe}\n"
                      "constraints: [{metric: regret, max: 1}]\n")
    assert main(["validate", str(path)]) == 2
    assert "searcher.name: hyperopt-tpe cannot take constraints (on regret)" in capsys.readouterr().err


# --- feasibility, the best and the front on hand-made records ------------------------------------

def test_judge_against_the_rule_by_hand():
    bounds = [{"metric": "size", "max": 10.0}, {"metric": "acc", "min": 0.5}]
    constraints = [Constraint(b["metric"], b.get("max"), b.get("min")) for b in bounds]
    for size in (None, 5.0, 10.0, 11.0, math.nan):
        for acc in (None, 0.4, 0.5, 0.9):
            values, feasible = judge(constraints, {k: v for k, v in (("size", size), ("acc", acc)) if v is not None})
            by_hand = [feasible_by_hand(size, bounds[0]), feasible_by_hand(acc, bounds[1])]
            expected = False if False in by_hand else None if None in by_hand else True
            assert feasible is expected, (size, acc)
            if by_hand[0] is not None:
                assert values["size"] == size - 10.0
            if by_hand[1] is not None:
                assert values["acc"] == 0.5 - acc


def _recorder(tmp_path, constraints=(), objectives=()) -> Recorder:
    rec = Recorder(tmp_path, "loss", "min", flush_every_s=1e9, constraints=constraints, objectives=objectives)
    for tid, loss, size in (("a", 1.0, 50.0), ("b", 2.0, 5.0), ("c", 3.0, None), ("d", 4.0, 1.0)):
        rec.start(tid, {"x": loss})
        rec.result(tid, {"x": loss}, {"loss": loss, "training_iteration": 1,
                                      **({"size": size} if size is not None else {})})
        rec.complete(tid)
    return rec


def test_infeasible_and_unknown_trials_are_never_the_best(tmp_path):
    assert _recorder(tmp_path).best.trial_id == "a"
    rec = _recorder(tmp_path, (Constraint("size", max=10.0),))
    assert rec.best.trial_id == "b"  # a breaks it; c never reported size
    rows = {r["trial_id"]: r for r in rec.rows()}
    assert [rows[t]["feasible"] for t in "abcd"] == [False, True, None, True]
    assert rows["a"]["constraint.size"] == 40.0 and rows["c"]["constraint.size"] is None
    assert all(r["feasible"] is None and "constraint.size" not in r for r in _recorder(tmp_path).rows())
    rec = _recorder(tmp_path, (Constraint("size", max=0.5),))
    assert rec.best is None
    from orchestrator.run.outcome import no_feasible

    assert no_feasible(rec) == ("no feasible trial: 4 trials ended normally and none met every constraint (size <= "
                                "0.5: the closest trial had 1); loosen the constraints or widen the space "
                                "(trials.parquet: feasible, constraint.*)")


def test_infeasible_trials_are_never_on_the_pareto_front(tmp_path):
    objectives = (("loss", "min"), ("size", "min"))
    free = {r["trial_id"] for r in _recorder(tmp_path, objectives=objectives).rows() if r["pareto"]}
    assert free == {"a", "b", "d"}
    bound = _recorder(tmp_path, (Constraint("size", max=10.0),), objectives)
    assert {r["trial_id"] for r in bound.rows() if r["pareto"]} == {"b", "d"}
    assert [e["trial_id"] for e in bound.pareto()] == ["b", "d"]


# --- Optuna is told the constraint values (a real OptunaSearch and study, no Ray run) -----------

def test_the_optuna_searcher_sets_each_trials_constraints_before_ray_tells_the_study():
    from orchestrator.run.tuner import build_tune_config
    from orchestrator.search.resumable import base_searcher

    exp = validate(xgb({"metric": "model_size", "max": 100}))
    searcher = base_searcher(build_tune_config(exp)[0].search_alg)
    for tid in ("t1", "t2", "t3"):
        assert searcher.suggest(tid) is not None
    searcher.on_trial_complete("t1", {"val_error": 0.1, "model_size": 150.0})
    searcher.on_trial_complete("t2", {"val_error": 0.2, "model_size": 40.0})
    searcher.on_trial_complete("t3", {"val_error": 0.05})  # stopped before its last report
    study = searcher._ot_study
    assert [(t.state.name, t.constraints) for t in study.trials] == [
        ("COMPLETE", {"model_size": 50.0}), ("COMPLETE", {"model_size": -60.0}), ("PRUNED", {})]
    assert study.best_trial.number == 1  # Optuna's own best is the feasible one
    # a resumed run's trials that finished after Tune's snapshot carry them too
    searcher.add_evaluated_point({"n_estimators": 5, "max_depth": 3, "learning_rate": 0.1}, 0.3,
                                 result={"val_error": 0.3, "model_size": 20.0})
    assert study.trials[-1].constraints == {"model_size": -80.0}


# --- real runs -----------------------------------------------------------------------------------

def _check_feasible_column(trials: pd.DataFrame, bound: dict) -> None:
    """`feasible` and `constraint.<metric>` equal the rule recomputed from the recorded metrics."""
    name = bound["metric"]
    for _, t in trials.iterrows():
        value = t.get(f"metric.{name}")
        expected = feasible_by_hand(None if pd.isna(value) else float(value), bound)
        got = None if pd.isna(t["feasible"]) else bool(t["feasible"])
        assert got is expected, t.to_dict()
        if expected is not None:
            assert t[f"constraint.{name}"] == pytest.approx(value - bound["max"])


def test_a_constrained_xgboost_search_returns_a_feasible_best_where_the_unconstrained_best_is_not(
        ray_local, tmp_path):
    """First with a bound no model reaches (every trial feasible: the unconstrained search, with
    model_size recorded), then with the bound just below that run's best model: TPE's first trials
    are its seeded random start-up, so both runs try the same configs, and the second must pick
    another, feasible trial, the best among those that meet the bound."""
    from orchestrator.run.driver import run

    loose = {"metric": "model_size", "max": 1e12}
    first = run(validate(xgb(loose)), tmp_path / "first", quiet=True)
    trials = pd.read_parquet(first.run_dir / TRIALS)
    _check_feasible_column(trials, loose)
    best = trials.set_index("trial_id").loc[first.best["trial_id"]]
    assert trials["feasible"].all() and best["score"] == trials["score"].min()
    bound = {"metric": "model_size", "max": float(best["metric.model_size"]) - 1}
    assert (trials["metric.model_size"] <= bound["max"]).any(), trials[["score", "metric.model_size"]]

    second = run(validate(xgb(bound)), tmp_path / "second", quiet=True)
    meta = json.loads((second.run_dir / EXPERIMENT).read_text())
    trials = pd.read_parquet(second.run_dir / TRIALS)
    _check_feasible_column(trials, bound)
    assert meta["status"] == "finished" and meta["best"]["feasible"] is True
    assert meta["best"]["metric.model_size"] <= bound["max"]
    same = trials[trials["config.n_estimators"].eq(best["config.n_estimators"])
                  & trials["config.max_depth"].eq(best["config.max_depth"])
                  & trials["config.learning_rate"].eq(best["config.learning_rate"])]
    assert len(same) == 1 and not same["feasible"].iloc[0]  # the unconstrained best is there, infeasible
    ok = trials[trials["feasible"].eq(True) & trials["status"].isin(["completed", "stopped"])]
    assert meta["best"]["score"] == ok["score"].min() and meta["best"]["trial_id"] in set(ok["trial_id"])
    assert meta["model"].get("path")  # refitted and saved as usual
    from orchestrator.analysis.runs import describe, load_runs
    from orchestrator.run.summary import lines

    yes, no = int(trials["feasible"].eq(True).sum()), int(trials["feasible"].eq(False).sum())
    counted = f"constraints model_size <= {bound['max']:g}: {yes} feasible, {no} infeasible, " \
              f"{len(trials) - yes - no} unknown"
    assert yes and no and counted in lines(second)  # the end of `hpo run`
    assert f"  {counted}" in describe(load_runs(second.run_dir))  # `hpo results`


def test_a_run_with_no_feasible_trial_fails_saying_so(ray_local, tmp_path):
    from orchestrator.errors import RunError
    from orchestrator.run.driver import run

    exp = validate({"name": "nf", "family": "synthetic", "metric": {"name": "loss"}, "space": {"iterations": 2},
                    "searcher": {"name": "random", "seed": 0}, "budget": {"trials": 3, "concurrent": 2},
                    "constraints": [{"metric": "regret", "max": -1.0}]})
    with pytest.raises(RunError, match=r"^no feasible trial: 3 trials ended normally and none met every constraint "
                                       r"\(regret <= -1: the closest trial had "):
        run(exp, tmp_path / "run", quiet=True)
    meta = json.loads((tmp_path / "run" / EXPERIMENT).read_text())
    assert meta["status"] == "failed" and meta["error"].startswith("no feasible trial") and meta["best"] is None
    assert not pd.read_parquet(tmp_path / "run" / TRIALS)["feasible"].any()


def test_hpo_export_optuna_writes_the_constraints(tmp_path):
    """Hand-written run folder: the exported trials carry Optuna's constraint values."""
    import optuna

    from orchestrator.analysis.optuna_study import to_study
    from orchestrator.results.parquet import frame, write
    from orchestrator.results.rundir import write_json

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    rec = _recorder(run_dir, (Constraint("size", max=10.0),))
    rec.close()
    spec = {"space": {"x": {"uniform": [0.0, 10.0]}}, "constraints": [{"metric": "size", "max": 10.0, "min": None}],
            "searcher": {"name": "optuna-tpe"}, "scheduler": {"name": "fifo"}, "family": "synthetic"}
    write_json(run_dir / EXPERIMENT, {"schema_version": 2, "run_id": "r", "name": "n", "spec": spec,
                                      "metric": {"name": "loss", "mode": "min"}, "status": "finished"})
    write(frame(rec.rows()), run_dir / TRIALS)
    study = to_study(run_dir)
    got = {t.user_attrs["hpo_trial_id"]: t.constraints for t in study.trials}
    # c never reported size: infeasible for Optuna too (without constraints Optuna counts it feasible)
    assert got == {"a": {"size": 40.0}, "b": {"size": -5.0}, "c": {"size": math.inf}, "d": {"size": -9.0}}
    assert study.best_trial.user_attrs["hpo_trial_id"] == "b"
    assert isinstance(study.trials[0], optuna.trial.FrozenTrial)


def test_an_unconstrained_spec_resolves_without_the_key_and_keeps_its_hash():
    plain = validate(dict(XGB))
    assert "constraints" not in plain.resolved()
    assert validate(xgb()).spec_hash == plain.spec_hash
    bound = validate(xgb({"metric": "model_size", "max": 10}))
    assert bound.resolved()["constraints"] == [{"metric": "model_size", "max": 10.0, "min": None}]
    assert validate(bound.resolved()).constraints == bound.constraints


def test_the_example_spec_runs_at_smoke_size(ray_local, tmp_path):
    from orchestrator.run.driver import run
    from orchestrator.spec.load import load_spec
    from tests.conftest import EXPERIMENTS

    exp = load_spec(EXPERIMENTS / "xgboost_constrained.yaml", ["budget.trials=4"])
    summary = run(exp, tmp_path / "run", quiet=True)
    trials = pd.read_parquet(summary.run_dir / TRIALS)
    _check_feasible_column(trials, {"metric": "model_size", "max": 2500.0})
    assert summary.best["feasible"] is True and summary.best["metric.model_size"] <= 2500

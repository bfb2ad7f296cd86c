"""The evaluation protocol: spec rules, splits, lock-step k-fold trials, the refit on train+valid
with its test score, and nested evaluation, the last end to end on real Ray."""

from __future__ import annotations

import json
import threading

import numpy as np
import pandas as pd
import pytest

from orchestrator.errors import SpecError
from orchestrator.families.contract import Family
from orchestrator.run import refit, summary
from orchestrator.run.driver import run
from orchestrator.run.refit import Best
from orchestrator.spec import evaluation as protocol
from orchestrator.spec.data import DataSpec, load
from orchestrator.spec.evaluation import EvaluationSpec
from orchestrator.spec.load import load_spec, validate
from orchestrator.trial import folds


@pytest.fixture(scope="module")
def digits():
    return load(DataSpec(name="digits"))


@pytest.fixture(scope="module")
def diabetes():
    return load(DataSpec(name="diabetes"))


def spec(**extra) -> dict:
    return {"name": "x", "family": "random_forest", "metric": {"name": "val_accuracy"},
            "space": {"n_estimators": 3}, "budget": {"trials": 2, "concurrent": 2}, **extra}


# --- the spec ---------------------------------------------------------------------------------

def test_holdout_is_the_default_and_is_resolved_into_the_spec():
    exp = validate(spec())
    assert exp.spec.evaluation.protocol == "holdout"
    assert exp.resolved()["evaluation"]["protocol"] == "holdout"


@pytest.mark.parametrize("evaluation, message", [
    ({"protocol": "kfold", "outer_folds": 3}, "evaluation: outer_folds only apply to protocol nested"),
    ({"protocol": "holdout", "folds": 3}, "evaluation: folds only applies when trials use k-fold"),
    ({"protocol": "nested", "folds": 3}, "folds only applies .* nested with inner holdout"),
    ({"protocol": "kfold", "folds": 1}, "evaluation.folds: Input should be greater than or equal to 2"),
    ({"protocol": "cv"}, "evaluation.protocol: Input should be 'holdout', 'kfold' or 'nested'"),
    ({"protocol": "kfold", "fold": 3}, "evaluation.fold: unknown key; did you mean 'folds'"),
])
def test_evaluation_mistakes_name_the_field_and_the_fix(evaluation, message):
    with pytest.raises(SpecError, match=message):
        validate(spec(evaluation=evaluation))


def test_splitting_needs_a_family_that_trains_on_the_data(tmp_path):
    (tmp_path / "t.py").write_text("def train(config):\n    pass\n")
    with pytest.raises(SpecError, match="evaluation.protocol: kfold splits the data: section, but a user trainable"):
        validate({"name": "x", "family": "t.py:train", "metric": {"name": "loss", "mode": "min"},
                  "space": {"a": 1}, "evaluation": {"protocol": "kfold"}}, base_dir=tmp_path)
    with pytest.raises(SpecError, match="family synthetic trains on no data"):
        validate({"name": "x", "family": "synthetic", "metric": {"name": "loss"}, "evaluation": {"protocol": "nested"}})


def test_nested_with_kfold_inside_takes_folds():
    exp = validate(spec(evaluation={"protocol": "nested", "inner": "kfold", "folds": 3, "outer_folds": 2}))
    assert exp.spec.evaluation.per_trial == "kfold"


# --- splits -----------------------------------------------------------------------------------

def rows(X) -> set[bytes]:
    return {r.tobytes() for r in X}


def test_kfold_partitions_train_plus_valid_and_never_touches_test(digits):
    folds = protocol.kfold(digits, 4, seed=0)
    dev = rows(np.concatenate([digits.X_train, digits.X_valid]))
    assert len(folds) == 4
    valid_sets = [rows(f.X_valid) for f in folds]
    assert set().union(*valid_sets) == dev and sum(map(len, valid_sets)) == len(dev)  # a partition
    for f in folds:
        assert rows(f.X_train) | rows(f.X_valid) == dev and not rows(f.X_train) & rows(f.X_valid)
        assert f.X_test is digits.X_test
        # stratified: every class in every fold's validation part
        assert set(np.unique(f.y_valid)) == set(range(10))


def test_outer_folds_hold_out_each_part_of_train_plus_valid_once(diabetes):
    outer = protocol.outer_folds(diabetes, 3, seed=0)
    dev = rows(np.concatenate([diabetes.X_train, diabetes.X_valid]))
    held = [rows(o.X_test) for o in outer]
    assert set().union(*held) == dev and sum(map(len, held)) == len(dev)
    assert not set().union(*held) & rows(diabetes.X_test)  # the real test set is never used
    for o in outer:
        parts = [rows(o.X_train), rows(o.X_valid), rows(o.X_test)]
        assert sum(map(len, parts)) == len(dev) and set().union(*parts) == dev
        share = len(o.y_valid) / (len(o.y_train) + len(o.y_valid))
        assert share == pytest.approx(len(diabetes.y_valid) / len(dev), abs=0.01)


def test_refit_data_trains_on_train_plus_valid_and_scores_on_test(digits):
    r = protocol.refit_data(digits)
    assert len(r.y_train) == len(digits.y_train) + len(digits.y_valid)
    assert r.X_valid is digits.X_test and r.y_valid is digits.y_test


# --- lock-step k-fold trials ------------------------------------------------------------------

class Trial:
    """A trial context outside Ray that records reports; `stop_at` raises what Ray raises on a stop."""

    def __init__(self, restored=None, stop_at=None, checkpointing=True):
        self.seed, self.cpus, self.gpus, self.device, self.metric = 0, 1, 0.0, "cpu", None
        self.checkpointing, self._restored, self.stop_at = checkpointing, restored, stop_at
        self.reports, self.states = [], []

    def report(self, metrics, state=None):
        self.reports.append(metrics)
        self.states.append(state)
        if self.stop_at and len(self.reports) >= self.stop_at:
            raise SystemExit(0)  # what Ray's session does when the scheduler stops a trial

    def restore(self):
        return self._restored

    def keep(self, model):
        self.kept = model


def toy_family(log: list, fail_at: tuple[int, int] | None = None) -> Family:
    """Fold f at iteration t reports val_error = f + t/10. Each iteration notes how many folds are
    computing at once; restores continue from the saved iteration."""
    running = [0]
    lock = threading.Lock()

    def train(config, data, trial):
        # Folds start in order (lock-step), so the first-seen order of their validation rows is the index.
        fold = order.setdefault(data.X_valid[0].tobytes(), len(order))
        state = trial.restore()
        for t in range(state["t"] if state else 0, config["iterations"]):
            with lock:
                running[0] += 1
                log.append(running[0])
            if fail_at == (fold, t):
                raise ZeroDivisionError(f"fold {fold} failed at {t}")
            with lock:
                running[0] -= 1
            trial.report({"val_error": fold + t / 10}, state={"t": t + 1, "fold": fold})

    order: dict[int, int] = {}
    return Family("toy", train, {})


def no_fold_threads() -> bool:
    return not [t for t in threading.enumerate() if t.name.startswith("hpo-fold")]


def test_kfold_trial_reports_the_mean_and_spread_per_iteration_one_fold_at_a_time(digits):
    log: list[int] = []
    trial = Trial()
    folds.run_trial(toy_family(log), {"iterations": 3}, digits, trial, EvaluationSpec(protocol="kfold", folds=3))
    assert [r["val_error"] for r in trial.reports] == pytest.approx([1.0, 1.1, 1.2])  # mean of folds 0, 1, 2
    assert [r["val_error_std"] for r in trial.reports] == pytest.approx([np.std([0, 1, 2])] * 3)
    assert max(log) == 1 and len(log) == 9  # never two folds computing at once
    assert [s["folds"][1]["t"] for s in trial.states] == [1, 2, 3]
    assert no_fold_threads()


def test_kfold_trial_resumes_every_fold_from_its_own_state(digits):
    first = Trial()
    folds.run_trial(toy_family([]), {"iterations": 4}, digits, first, EvaluationSpec(protocol="kfold", folds=3))
    resumed = Trial(restored=first.states[1])
    folds.run_trial(toy_family([]), {"iterations": 4}, digits, resumed, EvaluationSpec(protocol="kfold", folds=3))
    assert resumed.reports == first.reports[2:]


def test_a_failing_fold_fails_the_trial_with_its_own_error_and_leaves_no_threads(digits):
    trial = Trial()
    with pytest.raises(ZeroDivisionError, match="fold 1 failed at 2"):
        folds.run_trial(toy_family([], fail_at=(1, 2)), {"iterations": 4}, digits, trial,
                     EvaluationSpec(protocol="kfold", folds=3))
    assert len(trial.reports) == 2 and no_fold_threads()


def test_a_stopped_kfold_trial_unwinds_every_fold(digits):
    trial = Trial(stop_at=2)
    with pytest.raises(SystemExit):
        folds.run_trial(toy_family([]), {"iterations": 10}, digits, trial, EvaluationSpec(protocol="kfold", folds=4))
    assert len(trial.reports) == 2 and no_fold_threads()


def test_mean_and_std_skip_undefined_values():
    out = folds.mean_and_std([{"val_auc": 0.8}, {"val_auc": float("nan")}, {"val_auc": 0.6}])
    assert out["val_auc"] == pytest.approx(0.7) and out["val_auc_std"] == pytest.approx(0.1)


def test_kfold_with_a_real_family_matches_training_each_fold_alone(digits):
    from experiments.lgbm import FAMILY

    config = {"n_estimators": 4, "learning_rate": 0.2, "num_leaves": 8, "feature_fraction": 0.8}
    together = Trial(checkpointing=False)
    folds.run_trial(FAMILY, dict(config), digits, together, EvaluationSpec(protocol="kfold", folds=3))
    alone = []
    for fold in protocol.kfold(digits, 3, seed=0):
        t = Trial(checkpointing=False)
        FAMILY.train(dict(config), fold, t)
        alone.append(t.reports)
    for i, report in enumerate(together.reports):
        assert report == folds.mean_and_std([a[i] for a in alone])


# --- after the search -------------------------------------------------------------------------

def test_refit_scores_the_best_config_on_test(digits):
    exp = validate(spec())
    out = refit.conclude(exp, digits, Best({"n_estimators": 8, "max_depth": 6}, 0.95, "t1"), search=None, run_dir=".").evaluation
    # The same model trained by hand: the test score is the family's score on the test set.
    from sklearn.ensemble import RandomForestClassifier

    model = RandomForestClassifier(n_estimators=8, max_depth=6, random_state=0, n_jobs=1)
    X, y = protocol.development(digits)
    expected = float((model.fit(X, y).predict(digits.X_test) == digits.y_test).mean())
    assert out["test"]["test_accuracy"] == pytest.approx(expected)
    assert out["test_score"] == out["test"]["test_accuracy"] and out["gap"] == pytest.approx(expected - 0.95)
    assert out["protocol"] == "holdout" and out["trial_id"] == "t1" and "error" not in out
    assert summary.evaluation_lines(out)[0].startswith("test test_accuracy=")


PBT_XGB = {"name": "x", "family": "xgboost", "metric": {"name": "val_error"},
           "space": {"n_estimators": 8, "learning_rate": {"loguniform": [0.01, 0.5]}, "max_depth": 3,
                     "subsample": 1.0, "colsample_bytree": 1.0, "min_child_weight": 1.0, "reg_alpha": 1e-8,
                     "reg_lambda": 1.0},
           "scheduler": {"name": "pbt", "perturbation_interval": 2, "hyperparam_mutations": ["learning_rate"],
                         "quantile_fraction": 0.5},
           "budget": {"trials": 4, "concurrent": 2}}


def _xgb_by_hand(data, schedule, rounds: int = 8) -> float:
    """The oracle: XGBoost itself, each learning rate for its rounds, continuing the same booster."""
    import xgboost as xgb
    from sklearn.metrics import log_loss

    X, y = protocol.development(data)
    dtrain, booster = xgb.DMatrix(X, label=y), None
    ends = [seg["from_iteration"] for seg in schedule[1:]] + [rounds]
    for seg, end in zip(schedule, ends):
        params = {k: v for k, v in seg["config"].items() if k != "n_estimators"}
        params.update(objective="multi:softprob", num_class=10, nthread=1, device="cpu", seed=0, tree_method="hist",
                      verbosity=0)
        start = seg["from_iteration"]
        booster = xgb.train(params, dtrain, end - start,
                            xgb_model=xgb.Booster(model_file=bytearray(booster.save_raw())) if booster else None)
    return log_loss(data.y_test, booster.predict(xgb.DMatrix(data.X_test)), labels=list(range(10)))


def test_after_pbt_the_refit_replays_the_best_trials_schedule(digits):
    """The best trial cloned another at iteration 3 and went on with its own learning rate: the refit
    trains 0.3 for rounds 1-3 and 0.02 for rounds 4-8, as PBT did, not 0.02 from the start."""
    exp = validate(PBT_XGB)
    base = {k: v for k, v in exp.resolved()["space"].items() if not isinstance(v, dict)}
    schedule = [{"from_iteration": 0, "config": {**base, "learning_rate": 0.3}},
                {"from_iteration": 3, "config": {**base, "learning_rate": 0.02}}]
    out = refit.conclude(exp, digits, Best(schedule[-1]["config"], 0.1, "t1", schedule), search=None, run_dir=".").evaluation
    assert out["refit"] == {"method": "replay-schedule", "schedule": schedule, "trained": [[1, 3], [4, 8]]}
    assert out["test"]["test_log_loss"] == pytest.approx(_xgb_by_hand(digits, schedule), rel=1e-6)
    assert out["test"]["test_log_loss"] != pytest.approx(_xgb_by_hand(digits, schedule[1:]), rel=1e-3)
    line = next(ln for ln in summary.evaluation_lines(out) if "refit replayed" in ln)
    assert "from iteration 1: learning_rate=0.3; from iteration 4: learning_rate=0.02" in line


def test_other_schedulers_refit_the_last_config(digits):
    out = refit.conclude(validate(spec()), digits, Best({"n_estimators": 3}, 0.9, "t1"), search=None, run_dir=".").evaluation
    assert out["refit"] == {"method": "last-config"}


@pytest.mark.slow
def test_a_pbt_run_records_and_replays_its_best_trials_schedule(ray_local, tmp_path):
    """A real PBT run: each trial carries the configs its state trained with; experiment.json says the
    refit replayed the best one's, and the refit trained each config over its own iterations."""
    # The slow rates start after the fast one: they find it in the top half and clone it.
    rates = [0.4, 0.011, 0.012, 0.013]
    raw = {**PBT_XGB, "searcher": {"name": "random", "points_to_evaluate": [{"learning_rate": r} for r in rates]}}
    result = run(validate(raw), tmp_path / "run", quiet=True)
    meta = json.loads((result.run_dir / "experiment.json").read_text())
    plan = meta["evaluation"]["refit"]
    assert plan["method"] == "replay-schedule"
    schedule = plan["schedule"]
    trials = pd.read_parquet(result.run_dir / "trials.parquet").set_index("trial_id")
    best = meta["evaluation"]["trial_id"]
    # Starts at 0 with a config of the search, ends with the best trial's final config.
    assert schedule[0]["from_iteration"] == 0 and schedule[0]["config"]["learning_rate"] in rates
    assert schedule[-1]["config"]["learning_rate"] == trials.loc[best, "config.learning_rate"]
    # Config changes land on checkpoints (every 2 iterations), and the refit switched exactly there.
    starts = [seg["from_iteration"] for seg in schedule]
    assert starts == sorted(starts) and all(s % 2 == 0 for s in starts)
    ends = starts[1:] + [8]
    assert plan["trained"] == [[a + 1, b] for a, b in zip(starts, ends) if b > a]
    history = pd.read_parquet(result.run_dir / "history.parquet")
    assert history["config.learning_rate"].nunique() > 2, "PBT never exploited"
    assert any("refit replayed" in ln for ln in summary.lines(result))
    # The saved model is that replayed schedule's, and predicts the test split to the recorded score.
    from orchestrator import load_model
    from orchestrator.model.load import load_test_split

    card = json.loads((result.run_dir / "model" / "model.json").read_text())
    assert card["training"] == plan and card["trial_id"] == best and meta["model"]["reproduced"]
    X, y = load_test_split(result.run_dir)
    assert load_model(result.run_dir).score(X, y)["test_error"] == meta["evaluation"]["test_score"]
    # `hpo refit --trial` reads the schedule back from trials.parquet and replays it the same way.
    from orchestrator.run.take_home import refit_trial

    folder, again = refit_trial(result.run_dir, best)
    assert again["training"] == plan and again["test"] == meta["evaluation"]["test"]


def test_nothing_to_refit_without_data_or_a_best_trial(digits):
    exp = validate(spec())
    assert refit.conclude(exp, None, Best({}, 1.0), search=None, run_dir=".") is None
    assert refit.conclude(exp, digits, None, search=None, run_dir=".") is None


def test_a_failed_refit_is_recorded_not_raised(digits):
    exp = validate(spec())
    out = refit.conclude(exp, digits, Best({"n_estimators": 3, "max_depth": "deep"}, 0.9), search=None, run_dir=".").evaluation
    assert out["error"].startswith("refit failed") and "test" not in out
    assert any(line.startswith("evaluation: refit failed") for line in summary.evaluation_lines(out))


def test_nested_runs_one_search_per_outer_fold_and_scores_each_on_its_held_out_fold(digits, tmp_path):
    exp = validate(spec(evaluation={"protocol": "nested", "outer_folds": 3}))
    seen = []

    def search(data, out_dir):  # stands in for runner._search_on; the real one runs below
        seen.append((data, out_dir))
        return Best({"n_estimators": 5, "max_depth": 2 + len(seen)}, 0.9)

    out = refit.conclude(exp, digits, Best({"n_estimators": 5}, 0.9), search, tmp_path).evaluation
    nested = out["nested"]
    assert [d.X_test.shape[0] for d, _ in seen] == [f.X_test.shape[0] for f in protocol.outer_folds(digits, 3, 0)]
    assert [p.name for _, p in seen] == ["outer-0", "outer-1", "outer-2"]
    assert [f["config"]["max_depth"] for f in nested["folds"]] == [3, 4, 5]
    scores = [f["test"] for f in nested["folds"]]
    assert nested["mean"] == pytest.approx(np.mean(scores)) and nested["std"] == pytest.approx(np.std(scores))
    assert 0.5 < nested["mean"] <= 1 and out["test_score"] is not None


@pytest.mark.slow
def test_kfold_run_end_to_end(ray_local, write_spec, tmp_path):
    path = write_spec("""
name: rf-kfold
family: random_forest
data: {source: sklearn, name: wine}
metric: {name: val_accuracy}
space: {n_estimators: 5, max_depth: {randint: [2, 6]}}
evaluation: {protocol: kfold, folds: 3}
searcher: {name: random, seed: 0}
budget: {trials: 2, concurrent: 2}
""")
    summary = run(load_spec(path), tmp_path / "run", quiet=True)
    history = pd.read_parquet(summary.run_dir / "history.parquet")
    assert {"metric.val_accuracy", "metric.val_accuracy_std"} <= set(history.columns)
    assert history.groupby("trial_id").size().eq(5).all()
    assert (history["metric.val_accuracy_std"] > 0).any()
    meta = json.loads((summary.run_dir / "experiment.json").read_text())
    assert meta["evaluation"]["protocol"] == "kfold" and meta["evaluation"]["folds"] == 3
    assert summary.evaluation["test_score"] == meta["evaluation"]["test_score"]


@pytest.mark.slow
def test_nested_run_end_to_end(ray_local, write_spec, tmp_path):
    path = write_spec("""
name: rf-nested
family: random_forest
data: {source: sklearn, name: breast_cancer}
metric: {name: val_error}
space: {n_estimators: 3, max_depth: {randint: [2, 6]}}
evaluation: {protocol: nested, outer_folds: 2}
searcher: {name: random, seed: 0}
budget: {trials: 2, concurrent: 2}
""")
    summary = run(load_spec(path), tmp_path / "run", quiet=True)
    nested = summary.evaluation["nested"]
    assert nested["outer_folds"] == 2 and len(nested["folds"]) == 2
    for i, fold in enumerate(nested["folds"]):
        inner = pd.read_parquet(summary.run_dir / "nested" / f"outer-{i}" / "trials.parquet")
        assert len(inner) == 2 and fold["valid"] == inner["score"].min()  # that search's best
        assert 0 <= fold["test"] <= 0.3
    meta = json.loads((summary.run_dir / "experiment.json").read_text())
    assert meta["evaluation"]["nested"]["mean"] == pytest.approx(np.mean([f["test"] for f in nested["folds"]]))
    assert meta["evaluation"]["test_metric"] == "test_error"
    # The final model is the refit of the config the search over all rows chose; the outer scores beside it.
    card = json.loads((summary.run_dir / "model" / "model.json").read_text())
    assert card["config"] == meta["evaluation"]["config"] and card["test_score"] == meta["evaluation"]["test_score"]
    assert card["nested"]["mean"] == meta["evaluation"]["nested"]["mean"]
    assert [f["test"] for f in card["nested"]["folds"]] == [f["test"] for f in nested["folds"]]


def test_a_local_cpu_runs_refit_trains_in_the_driver_and_only_its_own_ray_is_released(ray_local):
    """After a local CPU-only run the refit needs no fresh Ray worker (it would import the family's
    library again); with a GPU, or for nested evaluation's searches, Ray is still needed. Releasing
    Ray early (its shutdown overlapping the refit) applies only to a Ray `connected()` started: this
    test session's Ray, started elsewhere, stays up."""
    from orchestrator.run import ray_local as rl

    cpu = load_spec("experiments/xgboost_digits.yaml")
    assert refit.in_this_process(cpu) and not refit.needs_ray(cpu)
    assert refit.needs_ray(load_spec("experiments/xgboost_digits.yaml", ["resources.gpu=1"]))
    assert refit.needs_ray(load_spec("experiments/xgboost_digits.yaml", ["evaluation.protocol=nested"]))
    with rl.connected():
        rl.release_early()
        assert ray_local.is_initialized() and not rl._closing
    assert ray_local.is_initialized()

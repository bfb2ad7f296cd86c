"""Several metrics at once: the spec's list form, the pairings it refuses, the Pareto front in
trials.parquet (checked against a brute-force oracle written here), the cost metrics families
measure only when asked, and real NSGA-II and TPE runs."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pandas as pd
import pytest

from orchestrator.analysis.runs import describe, load_runs
from orchestrator.errors import SpecError
from orchestrator.families.metrics import latency
from orchestrator.families.registry import resolve
from orchestrator.results.pareto import pareto_mask
from orchestrator.results.writer import Recorder
from orchestrator.run.driver import run
from orchestrator.run.outcome import no_front
from orchestrator.run.summary import lines
from orchestrator.run.tuner import build_tune_config
from orchestrator.search.resumable import base_searcher
from orchestrator.search.schedulers import SCHEDULERS
from orchestrator.search.searchers import SEARCHERS
from orchestrator.spec.data import Dataset
from orchestrator.spec.load import validate

TWO = [{"name": "loss"}, {"name": "regret"}]
# Written out here, not read from the registries: which searchers and schedulers take several metrics.
MULTI_SEARCHERS = {"random", "grid", "optuna-tpe", "optuna-nsga2"}
MULTI_SCHEDULERS = {"fifo"}


def synthetic(searcher="optuna-nsga2", scheduler="fifo", metric=None, **extra) -> dict:
    return {"name": "mo", "family": "synthetic", "metric": TWO if metric is None else metric,
            "space": {"iterations": 3}, "searcher": {"name": searcher, "seed": 0}, "scheduler": {"name": scheduler},
            "budget": {"trials": 4, "concurrent": 2}, **extra}


def problems(raw) -> list[str]:
    with pytest.raises(SpecError) as info:
        validate(raw)
    return [str(p) for p in info.value.problems]


def oracle_front(values: list[list[float]], modes: list[str], eligible: list[bool]) -> list[bool]:
    """Pairwise, by the definition: eligible, finite, and no other such row at least as good on
    every objective and better on one."""
    def better_or_equal(a, b, m):
        return a <= b if m == "min" else a >= b

    ok = [e and all(math.isfinite(v) for v in row) for row, e in zip(values, eligible)]
    out = []
    for i, row in enumerate(values):
        dominated = any(
            ok[j] and j != i
            and all(better_or_equal(values[j][k], row[k], m) for k, m in enumerate(modes))
            and any(values[j][k] != row[k] for k in range(len(modes)))
            for j in range(len(values)))
        out.append(ok[i] and not dominated)
    return out


# --- the spec -----------------------------------------------------------------------------------

def test_a_metric_list_resolves_every_objective_and_round_trips():
    exp = validate(synthetic(metric=[{"name": "loss"}, {"name": "regret", "mode": "min"}]))
    assert exp.objectives == (("loss", "min"), ("regret", "min")) and exp.multi_objective
    assert exp.metric == "loss" and exp.mode == "min"
    assert exp.resolved()["metric"] == [{"name": "loss", "mode": "min"}, {"name": "regret", "mode": "min"}]
    assert validate(exp.resolved()).resolved() == exp.resolved()
    single = validate(synthetic(metric={"name": "loss"}))
    assert single.objectives == () and not single.multi_objective
    assert single.resolved()["metric"] == {"name": "loss", "mode": "min"}


PAIRS = list(itertools.product(SEARCHERS, SCHEDULERS))


@pytest.mark.parametrize("searcher, scheduler", PAIRS, ids=lambda v: v)
def test_pairings_that_need_one_metric_are_refused_with_the_fix(searcher, scheduler):
    """Every pair: valid with one metric as before, and with two exactly when both parts take several."""
    opts = {"asha": {"max_t": 3}, "hyperband": {"max_t": 3}, "bohb-hyperband": {"max_t": 3},
            "pbt": {"perturbation_interval": 1, "hyperparam_mutations": ["x1"]},
            "pb2": {"perturbation_interval": 1, "hyperparam_mutations": ["x1"]}}.get(scheduler, {})
    raw = synthetic(searcher, scheduler)
    raw["scheduler"].update(opts)
    try:
        validate({**raw, "metric": {"name": "loss"}})
    except SpecError:
        return  # a pairing refused with one metric already (test_strategies covers those)
    if searcher in MULTI_SEARCHERS and scheduler in MULTI_SCHEDULERS:
        assert validate(raw).multi_objective
        return
    found = problems(raw)
    expected = []
    if scheduler not in MULTI_SCHEDULERS:
        expected.append(f"scheduler.name: {scheduler} compares trials on one metric, and the spec lists 2; "
                        f"use scheduler: {{name: fifo}}, or one metric")
    if searcher not in MULTI_SEARCHERS:
        expected.append(f"searcher.name: {searcher} optimises one metric, and the spec lists 2; use optuna-nsga2, "
                        f"optuna-tpe, random or grid, or one metric")
    assert sorted(found) == sorted(expected)


def test_metric_list_problems_each_name_their_entry():
    found = problems(synthetic(metric=[{"name": "regret", "mode": "max"}, {"name": "los"}, {"name": "regret"}],
                               searcher="optuna-tpe", evaluation={"protocol": "nested", "outer_folds": 2}))
    assert found == [
        "metric[0].mode: regret is better when lower: use mode: min (or leave mode out), got max",
        "metric[1].name: family synthetic never reports 'los'; did you mean 'loss'? It reports: loss, regret",
        "metric[2].name: 'regret' is listed twice; list each metric once",
        "evaluation.protocol: nested evaluation refits each outer fold's best trial, and several metrics have no "
        "single best; use holdout or kfold, or one metric",
        "evaluation.protocol: nested splits the data: section, but family synthetic trains on no data; "
        "use protocol: holdout (the default)",
    ]
    assert problems(synthetic(metric=[{"name": "loss"}])) == [
        "metric: a list names two or more metrics (a multi-objective search); for one, write "
        "metric: {name: ..., mode: ...}"]
    assert problems(synthetic(metric=[{"name": "loss"}, {"nme": "regret"}])) == [
        "metric[1].name: required; add it to the spec",
        "metric[1].nme: unknown key; did you mean 'name'? valid keys here: name, mode"]


def test_a_cost_metric_cannot_come_first_and_warm_start_needs_one_metric(tmp_path):
    svm = {"name": "c", "family": "svm", "data": {"source": "sklearn", "name": "breast_cancer"},
           "space": {"kernel": "rbf", "gamma": {"loguniform": [1e-3, 1]}, "degree": None}}
    found = problems({**svm, "metric": [{"name": "predict_ms"}, {"name": "val_error"}]})
    assert found == ["metric[0].name: predict_ms is measured only at a trial's last report, so it cannot come first "
                     "(progress and checks follow the first metric at every report); list a score first: "
                     "metric: [{name: val_error}, {name: predict_ms}]"]
    assert problems({**svm, "metric": {"name": "predict_ms"}})[0].startswith("metric.name: predict_ms is measured")
    found = problems({**svm, "metric": [{"name": "val_error"}, {"name": "predict_ms"}],
                      "searcher": {"name": "optuna-tpe", "warm_start": {"from": str(tmp_path)}}})
    assert found == ["searcher.warm_start: ranks an earlier run's trials on one metric; with several metrics use "
                     "points_to_evaluate instead"]
    # a family that measures no cost says what it reports instead
    assert "never reports 'predict_ms'" in problems(synthetic(metric=[{"name": "loss"}, {"name": "predict_ms"}]))[0]


@pytest.mark.parametrize("searcher, sampler", [("optuna-nsga2", "NSGAIISampler"), ("optuna-tpe", "TPESampler")])
def test_optuna_gets_a_study_with_one_direction_per_metric(searcher, sampler):
    import optuna

    exp = validate({"name": "d", "family": "xgboost", "metric": [{"name": "val_error"}, {"name": "val_accuracy"}],
                    "searcher": {"name": searcher, "seed": 0, **({"population_size": 4} if "nsga" in searcher else {})}})
    cfg, _ = build_tune_config(exp)
    alg = base_searcher(cfg.search_alg)
    assert type(alg._sampler).__name__ == sampler and alg.metric == ["val_error", "val_accuracy"]
    assert alg._ot_study.directions == [optuna.study.StudyDirection.MINIMIZE, optuna.study.StudyDirection.MAXIMIZE]
    if "nsga" in searcher:
        assert alg._sampler._population_size == 4
    assert cfg.metric == "val_error" and cfg.mode == "min"  # Tune's own: the first metric
    # what Ray's wrapper tells Optuna when a trial ends: both values of its last result
    alg.suggest("t0")
    alg.on_trial_complete("t0", {"val_error": 0.25, "val_accuracy": 0.75, "training_iteration": 3})
    (told,) = alg._ot_study.trials
    assert told.state == optuna.trial.TrialState.COMPLETE and told.values == [0.25, 0.75]


# --- the front ------------------------------------------------------------------------------------

def test_pareto_mask_matches_the_definition_on_random_tables():
    rng = np.random.default_rng(0)
    for case in range(200):
        n, k = int(rng.integers(1, 12)), int(rng.integers(2, 4))
        values = rng.integers(0, 4, size=(n, k)).astype(float)  # small integers: many ties
        values[rng.random((n, k)) < 0.05] = rng.choice([np.nan, np.inf, -np.inf])
        modes = list(rng.choice(["min", "max"], size=k))
        eligible = list(rng.random(n) < 0.8)
        got = pareto_mask(values, modes, eligible)
        assert list(got) == oracle_front(values.tolist(), modes, eligible), (case, values, modes, eligible)


def test_recorder_marks_the_front_among_completed_trials_only(tmp_path):
    rec = Recorder(tmp_path, "loss", "min", objectives=(("loss", "min"), ("acc", "max")))
    for tid, loss, acc in [("a", 1.0, 0.5), ("b", 2.0, 0.9), ("c", 1.5, 0.6), ("d", 3.0, 0.4), ("e", 0.5, 0.99),
                           ("f", 1.0, math.nan)]:
        rec.start(tid, {"x": loss})
        rec.result(tid, {"x": loss}, {"loss": loss, "acc": acc, "training_iteration": 1})
        if tid == "e":
            rec.error(tid, "boom")  # better on both, but it errored: never on the front
        else:
            rec.complete(tid)
    rec.close()
    trials = pd.read_parquet(tmp_path / "trials.parquet").set_index("trial_id")
    assert trials["pareto"].dtype == bool
    assert sorted(trials.index[trials["pareto"]]) == ["a", "b", "c"]
    assert [e["trial_id"] for e in rec.pareto()] == ["a", "c", "b"]  # best first on the first metric
    assert no_front((("loss", "min"), ("los", "max")), rec.rows()) == (
        "no completed trial reported los: they reported acc, loss; list metrics the trials report (metric: [...]), "
        "or report them at each trial's end")
    single = Recorder(tmp_path / "one", "loss", "min")
    single.start("a", {})
    single.result("a", {}, {"loss": 1.0, "training_iteration": 1})
    single.complete("a")
    single.close()
    assert "pareto" not in pd.read_parquet(tmp_path / "one" / "trials.parquet")


# --- cost metrics ---------------------------------------------------------------------------------

class FakeTrial:
    """The Trial contract outside Ray (no Ray needed to see what a family reports)."""

    seed, cpus, gpus, device, checkpointing = 0, 1, 0.0, "cpu", False

    def __init__(self, metric="val_error", objectives=()):
        self.metric, self.objectives, self.reports = metric, objectives, []

    def report(self, metrics, state=None):
        self.reports.append(dict(metrics))

    def restore(self):
        return None

    def keep(self, model):
        pass


def _data(n=120):
    from sklearn.datasets import load_breast_cancer

    X, y = load_breast_cancer(return_X_y=True)
    X, y = X[:2 * n].astype(np.float32), y[:2 * n]
    return Dataset("classification", X[:n], y[:n], X[n:], y[n:], X[:1], y[:1], ())


def test_cost_metrics_are_measured_only_when_the_spec_lists_them():
    data = _data()
    forest = resolve("random_forest")
    plain = FakeTrial()
    forest.train({"n_estimators": 3, "max_depth": 3}, data, plain)
    assert all("predict_ms" not in r and "model_size" not in r for r in plain.reports)
    asked = FakeTrial(objectives=("val_error", "predict_ms", "model_size"))
    forest.train({"n_estimators": 3, "max_depth": 3}, data, asked)
    *early, last = asked.reports
    assert all("predict_ms" not in r and "model_size" not in r for r in early)  # the finished model only
    assert last["predict_ms"] > 0
    # 3 trees of depth <= 3: at most 15 nodes each, and at least a root each
    assert 3 <= last["model_size"] <= 45 and last["model_size"] == int(last["model_size"])
    # a search on one metric never makes the extra prediction that timing needs
    calls = []
    assert latency(lambda X: calls.append(len(X)), data.X_valid, plain) == {} and calls == []
    assert set(latency(lambda X: calls.append(len(X)), data.X_valid, asked)) == {"predict_ms"} and calls == [120]
    svm = FakeTrial(objectives=("val_error", "predict_ms"))
    resolve("svm").train({"C": 1.0, "kernel": "rbf"}, data, svm)
    assert len(svm.reports) == 1 and svm.reports[0]["predict_ms"] > 0 and "model_size" not in svm.reports[0]


# --- real runs ------------------------------------------------------------------------------------

@pytest.mark.slow
def test_nsga2_run_marks_the_pareto_front_and_skips_the_refit(ray_local, tmp_path):
    """A real two-objective search (SVM on breast cancer: error against prediction latency)."""
    exp = validate({"name": "svm-pareto", "family": "svm", "data": {"source": "sklearn", "name": "breast_cancer"},
                    "metric": [{"name": "val_error"}, {"name": "predict_ms"}],
                    "space": {"kernel": "rbf", "C": {"loguniform": [0.01, 100]},
                              "gamma": {"loguniform": [1e-4, 1]}, "degree": None},
                    "searcher": {"name": "optuna-nsga2", "seed": 0, "population_size": 4},
                    "budget": {"trials": 8, "concurrent": 2}})
    summary = run(exp, tmp_path / "run", quiet=True)
    trials = pd.read_parquet(summary.run_dir / "trials.parquet")
    meta = json.loads((summary.run_dir / "experiment.json").read_text())
    assert meta["status"] == "finished" and (trials["status"] == "completed").all() and len(trials) == 8
    values = trials[["metric.val_error", "metric.predict_ms"]].to_numpy().tolist()
    expected = oracle_front(values, ["min", "min"], list(trials["status"] == "completed"))
    assert trials["pareto"].tolist() == expected and any(expected)
    front_ids = set(trials.loc[trials["pareto"], "trial_id"])
    assert {e["trial_id"] for e in meta["pareto"]} == front_ids == {e["trial_id"] for e in summary.pareto}
    assert meta["objectives"] == [{"name": "val_error", "mode": "min"}, {"name": "predict_ms", "mode": "min"}]
    assert meta["best"] is None and summary.best is None
    assert meta["evaluation"]["refit"] is None and "no single best config" in meta["evaluation"]["skipped"]
    text = "\n".join(lines(summary))
    assert f"Pareto front (val_error vs predict_ms): {len(front_ids)} trials; nothing refitted" in text
    assert all(tid in text for tid in front_ids)
    # the analysis side reads the run and names the front
    assert any(f"Pareto front of val_error, predict_ms: {len(front_ids)} trials" in line
               for line in describe(load_runs(summary.run_dir)))
    # Nothing saved after the search; a point of the front is taken home with `hpo refit --trial`.
    from orchestrator import cli, load_model
    from orchestrator.errors import ModelError
    from orchestrator.model.load import load_test_split

    assert "hpo refit RUN_DIR --trial ID" in meta["model"]["skipped"] and not (summary.run_dir / "model").exists()
    with pytest.raises(ModelError, match="holds no saved model"):
        load_model(summary.run_dir)
    chosen = meta["pareto"][-1]["trial_id"]
    assert cli.main(["refit", str(summary.run_dir), "--trial", chosen]) == 0
    folder = summary.run_dir / "models" / chosen
    card = json.loads((folder / "model.json").read_text())
    assert card["trial_id"] == chosen and card["reproduced"] and card["config"]["C"] == pytest.approx(
        trials.set_index("trial_id").loc[chosen, "config.C"])
    assert [o["name"] for o in card["metric"]["objectives"]] == ["val_error", "predict_ms"]
    X, y = load_test_split(folder)
    assert load_model(folder).score(X, y)["test_error"] == card["test_score"]


@pytest.mark.slow
def test_tpe_and_random_take_two_metrics_for_real(ray_local, tmp_path):
    for searcher in ("optuna-tpe", "random"):
        summary = run(validate(synthetic(searcher, metric=[{"name": "loss"}, {"name": "regret"}])),
                      tmp_path / searcher, quiet=True)
        trials = pd.read_parquet(summary.run_dir / "trials.parquet")
        values = trials[["metric.loss", "metric.regret"]].to_numpy().tolist()
        assert trials["pareto"].tolist() == oracle_front(values, ["min", "min"], [True] * len(trials))
        assert summary.status == "finished" and summary.pareto


@pytest.mark.slow
def test_the_example_spec_runs_at_smoke_size(ray_local, tmp_path):
    from orchestrator.spec.load import load_spec
    from tests.conftest import EXPERIMENTS

    exp = load_spec(EXPERIMENTS / "xgboost_pareto_digits.yaml", ["budget.trials=3", "budget.concurrent=2"])
    summary = run(exp, tmp_path / "run", quiet=True)
    trials = pd.read_parquet(summary.run_dir / "trials.parquet")
    assert summary.status == "finished" and trials["pareto"].any()
    assert (trials["metric.predict_ms"] > 0).all() and "metric.model_size" not in trials  # not asked for

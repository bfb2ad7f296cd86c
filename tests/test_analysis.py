"""The analysis side over the results contract: on real small runs (tests/analysis_runs.py) and on
hand-built run folders for what a real run does not show on demand (GPUs, crashes)."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from orchestrator.analysis import anytime, importance, optuna_study, usage
from orchestrator.analysis import runs as analysis
from orchestrator.cli import main
from orchestrator.errors import ResultsError
from orchestrator.results.contract import SCHEMA_VERSION
from orchestrator.results.writer import Recorder
from tests.analysis_runs import (
    BENCH_CONCURRENT,
    BENCH_ITERATIONS,
    BENCH_SEEDS,
    BENCH_SETUPS,
    BENCH_TRIALS,
    at,
    write_run,
)
from tests.conftest import ROOT

KNOWN_OPTIMUM = 0.397887  # Branin's, written here independently of experiments/synthetic.py


@pytest.fixture(scope="module")
def bench(analysis_results):
    return analysis.load_runs(analysis_results / "bench")


@pytest.fixture(scope="module")
def svm(analysis_results):
    return analysis.load_runs(analysis_results / "svm" / "run")


def asha_run(bench) -> analysis.Runs:
    return bench.select(bench.runs.loc[bench.runs["scheduler"] == "asha", "run"].iloc[0])


# --- loading ----------------------------------------------------------------------------------

def test_a_folder_of_runs_loads_every_run_tagged_with_its_setup(bench):
    r = bench.runs.set_index("run")
    assert len(r) == len(BENCH_SETUPS) * len(BENCH_SEEDS)
    assert set(r["setup"]) == set(BENCH_SETUPS) and set(r["seed"]) == set(BENCH_SEEDS)
    assert (r["status"] == "finished").all() and not r["partial"].any()
    assert (r["trials"] == BENCH_TRIALS).all()
    assert (r[["completed", "stopped", "errored"]].sum(axis=1) == r["trials"]).all()
    assert r.loc[r["scheduler"] == "asha", "stopped"].gt(0).all()  # ASHA really stopped some
    for frame in (bench.trials, bench.history):
        assert frame[list(analysis.RUN_COLUMNS)].notna().all().all()
    # The best score per run is the best of its trials, and its spec hash names the folder's spec.
    best = bench.trials.groupby("run")["score"].min()
    assert np.allclose(r.loc[best.index, "best_score"], best)
    assert all(bench.meta[run]["spec_hash"] == r.loc[run, "spec_hash"] for run in r.index)


def test_elapsed_time_follows_each_trials_own_clock(bench):
    h = bench.history.sort_values(["run", "trial_id", "iteration"])
    assert (h["elapsed_s"] >= 0).all()
    assert (h.groupby(["run", "trial_id"])["elapsed_s"].diff().dropna() >= 0).all()
    # Below Ray's whole-second stamps: results of one trial get distinct times.
    assert h.groupby(["run", "trial_id"])["elapsed_s"].nunique().gt(1).any()


def test_run_folders_env_and_newest(analysis_results, monkeypatch, tmp_path):
    bench_dir, svm_dir = analysis_results / "bench", analysis_results / "svm" / "run"
    monkeypatch.setenv("HPO_RESULTS", f"{svm_dir}:{bench_dir}")
    assert analysis.runs_from_env() == [svm_dir, *sorted(bench_dir.iterdir())]
    monkeypatch.delenv("HPO_RESULTS")
    assert analysis.runs_from_env(analysis_results) == [svm_dir]  # the SVM run was made last
    assert analysis.runs_from_env(bench_dir) == [bench_dir / "optuna-tpe-asha-seed1"]  # made last
    assert analysis.runs_from_env(bench_dir, siblings=True) == sorted(bench_dir.iterdir())
    assert analysis.run_folders(svm_dir / "trials.parquet") == [svm_dir]
    with pytest.raises(ResultsError, match="no run under"):
        analysis.runs_from_env(tmp_path)
    with pytest.raises(ResultsError, match="not a run folder"):
        analysis.run_folders(tmp_path)


def test_nested_searches_inside_a_run_are_not_runs_of_their_own(tmp_path):
    outer = write_run(tmp_path / "run", [{"trial_id": "a", "status": "completed", "score": 1.0}])
    write_run(outer / "nested" / "outer-0", [{"trial_id": "b", "status": "completed", "score": 2.0}])
    assert analysis.run_folders(tmp_path) == [outer]


def test_runs_that_tuned_different_metrics_do_not_compare(bench, svm):
    both = analysis.load_runs([bench.runs["path"].iloc[0], svm.runs["path"].iloc[0]])
    with pytest.raises(ResultsError, match="do not share one metric"):
        anytime.compare(both)


def test_a_newer_results_schema_is_refused(tmp_path):
    write_run(tmp_path / "run", [], schema_version=SCHEMA_VERSION + 1)
    with pytest.raises(ResultsError, match=f"schema_version {SCHEMA_VERSION + 1}.*upgrade"):
        analysis.load_runs(tmp_path / "run")


# --- one run ------------------------------------------------------------------------------------

def test_best_trials_in_max_mode_with_the_test_gap(svm):
    top = analysis.best_trials(svm, k=3)
    meta = svm.meta[svm.runs["run"].iloc[0]]
    assert list(top["rank"]) == [1, 2, 3] and top["score"].is_monotonic_decreasing  # val_auc: max
    assert top["trial_id"].iloc[0] == meta["best"]["trial_id"]
    assert top["test_score"].iloc[0] == pytest.approx(meta["evaluation"]["test_score"])
    assert top["test_score"].iloc[1:].isna().all()
    assert {"config.C", "config.kernel"} <= set(top.columns)
    lines = analysis.describe(svm)
    assert any(line.strip().startswith("test test_auc=") and "gap" in line for line in lines)


def test_learning_curves_mark_where_stopped_trials_ended(bench):
    one = asha_run(bench)
    curves = analysis.learning_curves(one)
    assert len(curves) == len(one.history)
    ends = curves[curves["last"]].set_index("trial_id")
    trials = one.trials.set_index("trial_id")
    assert (ends["iteration"] == trials.loc[ends.index, "iterations"]).all()
    assert (ends["status"] == trials.loc[ends.index, "status"]).all()
    assert (ends.loc[ends["status"] == "stopped", "iteration"] < BENCH_ITERATIONS).all()
    with pytest.raises(ResultsError, match="reported: loss, regret"):
        analysis.learning_curves(one, "val_loss")


# --- anytime curves, aggregation, ranks ---------------------------------------------------------

def test_anytime_curves_on_real_runs(bench):
    curves = anytime.anytime(bench, KNOWN_OPTIMUM)
    assert "gpu_s" not in curves  # no trial held a GPU
    for run, c in curves.groupby("run"):
        assert c["best"].is_monotonic_decreasing and c["cpu_s"].is_monotonic_increasing
        assert list(c["trial_iterations"]) == list(range(1, len(c) + 1))
        assert c["best"].iloc[-1] == pytest.approx(bench.runs.set_index("run").loc[run, "best_score"])
    assert np.allclose(curves["regret"], curves["best"] - KNOWN_OPTIMUM)
    assert anytime.known_optimum(bench) == pytest.approx(KNOWN_OPTIMUM)


def test_reserved_compute_by_hand():
    trials = pd.DataFrame({"trial_id": ["a", "b", "c"], "started_at": [at(0), at(5), at(8)],
                           "ended_at": [at(10), at(7), pd.NaT], "cpus": [2.0, 1.0, np.nan]})
    history = pd.DataFrame({"trial_id": ["c"], "elapsed_s": [9.0]})  # c crashed after its report at 9 s
    got = anytime.reserved(trials, history, np.array([0.0, 6.0, 20.0]), "cpus", requested=4.0)
    # at 6 s: a 2 cpus x 6 s + b 1 x 1; at 20 s: a 2 x 10 + b 1 x 2 + c 4 (the spec's) x 1.
    assert list(got) == [0.0, 13.0, 26.0]


def curves_by_hand() -> pd.DataFrame:
    """Two setups x two seeds (plus a third seed for A); values are best-so-far at the x given."""
    rows = [("A", 0, [(1, 10.0), (3, 4.0)]), ("A", 1, [(1, 8.0), (2, 6.0)]), ("A", 2, [(2, 2.0)]),
            ("B", 0, [(1, 5.0)]), ("B", 1, [(1, 9.0), (3, 7.0)])]
    return pd.DataFrame([{"run": f"{s}{seed}", "setup": s, "seed": seed, "elapsed_s": float(x), "best": y}
                         for s, seed, points in rows for x, y in points])


def test_median_and_interquartile_range_over_seeds_by_hand():
    agg = anytime.aggregate(curves_by_hand(), points=3).set_index(["setup", "elapsed_s"])
    # At x=1, A has 10 and 8 (seed 2 not started): median 9, quartiles 8.5 and 9.5.
    assert agg.loc[("A", 1.0), ["median", "q25", "q75", "runs"]].tolist() == [9.0, 8.5, 9.5, 2]
    # At x=3, A has 4, 6, 2 -> median 4, quartiles 3 and 5; B has 5 and 7.
    assert agg.loc[("A", 3.0), ["median", "q25", "q75", "runs"]].tolist() == [4.0, 3.0, 5.0, 3]
    assert agg.loc[("B", 3.0), "median"] == 6.0


def test_mean_rank_over_time_by_hand():
    r = anytime.ranks(curves_by_hand(), "min", points=3).set_index(["setup", "elapsed_s"])
    # Seed 2 only ran A: it is left out, or A would rank first there for free.
    assert (r["seeds"] == 2).all()
    # x=1: seed 0 B(5) beats A(10), seed 1 A(8) beats B(9). x=2: A(10), A(6) vs B(5), B(9).
    assert r.loc[("A", 1.0), "mean_rank"] == 1.5 and r.loc[("B", 1.0), "mean_rank"] == 1.5
    # x=3: seed 0 A(4) < B(5); seed 1 A(6) < B(7).
    assert r.loc[("A", 3.0), "mean_rank"] == 1.0 and r.loc[("B", 3.0), "mean_rank"] == 2.0
    with pytest.raises(ResultsError, match="no seed was run by every setup"):
        anytime.ranks(curves_by_hand().query("seed != 0 or setup == 'A'").query("seed != 1 or setup == 'B'"), "min")


def test_compare_one_row_per_setup(bench):
    table = anytime.compare(bench, KNOWN_OPTIMUM).set_index("setup")
    assert set(table.index) == set(BENCH_SETUPS)
    assert (table["runs"] == len(BENCH_SEEDS)).all() and (table["seeds"] == "0,1").all()
    assert table.loc["optuna-tpe/asha", ["searcher", "scheduler"]].tolist() == ["optuna-tpe", "asha"]
    per_setup = bench.runs.groupby("setup")["best_score"].median()
    assert np.allclose(table.loc[per_setup.index, "best_median"], per_setup)
    assert np.allclose(table["regret_median"], table["best_median"] - KNOWN_OPTIMUM)
    assert table["final_rank"].sum() == pytest.approx(3.0)  # two setups: ranks 1 and 2 per seed
    assert (table["trial_iterations_to_best"] >= 1).all()
    assert anytime.budget_notes(bench) == []


def test_budget_notes_name_what_is_unequal(bench):
    runs = bench.runs.copy()
    runs.loc[runs["setup"] == "random/fifo", "budget_trials"] = 99
    runs.loc[runs.index[0], "status"] = "failed"
    notes = anytime.budget_notes(replace(bench, runs=runs))
    assert any("budget.trials differs" in n and "99" in n for n in notes)
    assert any(n.startswith("not finished") and runs["run"].iloc[0] in n for n in notes)


# --- usage ---------------------------------------------------------------------------------------

def test_usage_of_real_cpu_runs(bench):
    u = usage.usage(bench).set_index("run")
    wall = bench.trials.groupby("run")["wall_s"].sum()
    assert np.allclose(u.loc[wall.index, "cpu_s"], wall)  # 1 CPU per trial
    assert (u["gpu_hours"] == 0).all() and u["gpu_allocation"].isna().all()
    assert u["peak_concurrent"].between(1, BENCH_CONCURRENT).all()
    tl = usage.timeline(bench)
    for _, lane in tl.groupby(["run", "node_ip", "lane"]):
        lane = lane.sort_values("start_s")
        assert (lane["start_s"].iloc[1:].to_numpy() >= lane["end_s"].iloc[:-1].to_numpy()).all()


def test_gpu_hours_and_allocation_per_run_and_node_by_hand(tmp_path):
    def trial(tid, node, gpus, ids, start, end):
        return {"trial_id": tid, "status": "completed", "score": 1.0, "node_ip": node, "cpus": 1.0, "gpus": gpus,
                "gpu_ids": ids, "started_at": at(start), "ended_at": at(end), "wall_s": float(end - start)}

    write_run(tmp_path / "gpu", [trial("a", "10.0.0.1", 1.0, "0", 0, 10), trial("b", "10.0.0.1", 1.0, "1", 0, 5),
                                 trial("c", "10.0.0.2", 0.5, "0", 0, 10), trial("d", "10.0.0.2", 0.5, "0", 2, 4)])
    runs = analysis.load_runs(tmp_path / "gpu")
    per_node = usage.usage(runs, by="node").set_index("node_ip")
    assert per_node.loc["10.0.0.1", ["gpu_s", "gpus_seen", "gpu_allocation"]].tolist() == [15.0, 2, 0.75]
    assert per_node.loc["10.0.0.2", ["gpu_s", "gpus_seen", "gpu_allocation", "peak_concurrent"]].tolist() == [6.0, 1, 0.6, 2]
    per_run = usage.usage(runs).iloc[0]
    assert per_run["gpu_hours"] == pytest.approx(21 / 3600) and per_run["gpus_seen"] == 3
    assert per_run["gpu_allocation"] == pytest.approx(21 / 30)
    assert sorted(usage.timeline(runs).query("node_ip == '10.0.0.2'")["lane"]) == [0, 1]


# --- crashed and empty runs ----------------------------------------------------------------------

def test_a_crashed_run_with_only_history_parts(tmp_path):
    folder = write_run(tmp_path / "crashed", [], history=None, status="running", ended_at=None)
    rec = Recorder(folder, "loss", "min")
    for tid, values in (("a", [3.0, 2.0, 1.5]), ("b", [4.0])):
        rec.start(tid, {"x1": 1.0, "x2": 2.0})
        for i, v in enumerate(values, start=1):
            rec.result(tid, {"x1": 1.0, "x2": 2.0}, {"training_iteration": i, "loss": v, "time_total_s": i * 0.1})
    rec.complete("a")
    rec.flush()  # ... and the driver died: no close(), no history.parquet
    assert not (folder / "history.parquet").exists()

    runs = analysis.load_runs(folder)
    row = runs.runs.iloc[0]
    assert row["partial"] and row["status"] == "running" and (row["completed"], row["running"]) == (1, 1)
    curves = analysis.learning_curves(runs)
    assert curves.groupby("trial_id")["status"].first().to_dict() == {"a": "completed", "b": "running"}
    assert anytime.anytime(runs)["best"].iloc[-1] == 1.5
    study = optuna_study.to_study(runs)
    states = {t.user_attrs["hpo_trial_id"]: t.state.name for t in study.trials}
    assert states == {"a": "COMPLETE", "b": "RUNNING"}  # unfinished: hpo resume may still finish it


def test_history_keeps_every_report_and_curves_follow_each_trials_final_lineage(tmp_path):
    """PBT's exploit, a retry and a resume make a trial report iterations again: history.parquet
    keeps every report (attempt, restored_from), and a learning curve is what the final state went
    through. Expected curves written by hand from the story below."""
    import time as clock

    folder = write_run(tmp_path / "pbt", [], history=None, status="running", ended_at=None)
    rec = Recorder(folder, "loss", "min")
    cfg = {"x1": 1.0, "x2": 2.0}

    def report(trial, iteration, loss, restored=None):
        result = {"training_iteration": iteration, "loss": loss, "time_total_s": iteration * 0.1}
        rec.result(trial, cfg, {**result, "hpo_restored": restored} if restored else result)
        clock.sleep(0.002)  # distinct timestamps: the lineage reads what a source had reported by then

    rec.start("a", cfg)
    for i, v in enumerate([5.0, 4.0, 3.0, 2.0], start=1):
        report("a", i, v)
    rec.start("b", cfg)
    for i, v in enumerate([9.0, 8.0, 7.0], start=1):
        report("b", i, v)
    rec.start("b", cfg)  # PBT: b clones a's checkpoint at iteration 2 and goes on from there
    report("b", 3, 2.5, restored="a@2")
    report("b", 4, 1.5, restored="a@2")
    rec.start("a", cfg)  # a retried from its own checkpoint at 3 (its iteration 4 is lost with the worker)
    report("a", 4, 1.8, restored="a@3")
    rec.start("c", cfg)
    report("c", 1, 6.0)
    rec.start("c", cfg)  # c restarted from scratch (no checkpoint): attempt 2 stands alone
    report("c", 1, 6.5)
    report("c", 2, 5.5)
    for t in "abc":
        rec.complete(t)
    rec.close()

    runs = analysis.load_runs(folder)
    h = runs.history
    assert len(h) == 13 and h.groupby("trial_id")["attempt"].max().to_dict() == {"a": 2, "b": 2, "c": 2}
    assert set(h.loc[h.trial_id == "b", "restored_from"].dropna()) == {"a@2"}
    curves = analysis.learning_curves(runs)
    got = {t: list(zip(c["iteration"], c["value"])) for t, c in curves.groupby("trial_id")}
    assert got == {"a": [(1, 5.0), (2, 4.0), (3, 3.0), (4, 1.8)],
                   "b": [(1, 5.0), (2, 4.0), (3, 2.5), (4, 1.5)],
                   "c": [(1, 6.5), (2, 5.5)]}
    trials = runs.trials.set_index("trial_id")
    assert trials["attempts"].to_dict() == {"a": 2, "b": 2, "c": 2}
    study = optuna_study.to_study(runs)
    steps = {t.user_attrs["hpo_trial_id"]: t.intermediate_values for t in study.trials}
    assert steps["b"] == {1: 5.0, 2: 4.0, 3: 2.5, 4: 1.5}


def test_a_clone_of_a_checkpoint_its_source_went_on_from_draws_the_sources_rows_up_to_it(tmp_path):
    """PBT pauses d at 2 and d goes on from its own checkpoint d@2 (attempt 2 reports 3 and 4); e then
    clones d@2. e's curve is d's attempt 1 up to 2, not d's latest attempt (which reported only 3 and 4)."""
    import time as clock

    folder = write_run(tmp_path / "pbt", [], history=None, status="running", ended_at=None)
    rec = Recorder(folder, "loss", "min")
    cfg = {"x1": 1.0}

    def report(trial, iteration, loss, restored=None):
        result = {"training_iteration": iteration, "loss": loss}
        rec.result(trial, cfg, {**result, "hpo_restored": restored} if restored else result)
        clock.sleep(0.002)

    rec.start("d", cfg)
    report("d", 1, 5.0)
    report("d", 2, 4.0)
    rec.start("d", cfg)
    report("d", 3, 3.0, restored="d@2")
    report("d", 4, 2.0, restored="d@2")
    rec.start("e", cfg)
    report("e", 3, 3.5, restored="d@2")
    for t in "de":
        rec.complete(t)
    rec.close()

    curves = analysis.learning_curves(analysis.load_runs(folder))
    got = {t: list(zip(c["iteration"], c["value"])) for t, c in curves.groupby("trial_id")}
    assert got == {"d": [(1, 5.0), (2, 4.0), (3, 3.0), (4, 2.0)], "e": [(1, 5.0), (2, 4.0), (3, 3.5)]}


def test_a_run_whose_driver_died_before_any_trial(tmp_path):
    folder = tmp_path / "early"
    folder.mkdir()
    (folder / "experiment.json").write_text(json.dumps({"schema_version": 1, "run_id": "early", "status": "running",
                                                        "metric": {"name": "loss", "mode": "min"}, "spec": {}}))
    runs = analysis.load_runs(folder)
    assert runs.runs["trials"].tolist() == [0] and runs.runs["best_trial"].tolist() == [None]
    assert analysis.describe(runs)[0].startswith("run early")
    assert usage.usage(runs).empty and usage.timeline(runs).empty
    with pytest.raises(ResultsError, match="nothing to draw"):
        anytime.anytime(runs)


# --- Optuna: the study, the journal, importance --------------------------------------------------

def test_study_states_values_and_intermediate_values(bench):
    from optuna.distributions import FloatDistribution

    one = asha_run(bench)
    study = optuna_study.to_study(one)
    assert study.direction.name == "MINIMIZE" and study.metric_names == ["loss"]
    assert study.trials[0].distributions == {"x1": FloatDistribution(-5.0, 10.0), "x2": FloatDistribution(0.0, 15.0)}
    trials = one.trials.set_index("trial_id")
    history = one.history.groupby("trial_id")
    for t in study.trials:
        row = trials.loc[t.user_attrs["hpo_trial_id"]]
        reported = history.get_group(row.name).set_index("iteration")["metric.loss"].to_dict()
        assert t.intermediate_values == pytest.approx(reported)
        assert t.params == {"x1": row["config.x1"], "x2": row["config.x2"]}
        if row["status"] == "completed":
            assert t.state.name == "COMPLETE" and t.value == row["score"]
        else:
            assert t.state.name == "PRUNED" and t.value == reported[max(reported)]
    starts = [t.datetime_start for t in study.trials]
    assert starts == sorted(starts) and all(t.datetime_complete >= t.datetime_start for t in study.trials)


def test_study_of_a_conditional_space_and_errored_trials(svm, tmp_path):
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    study = optuna_study.to_study(svm)
    assert study.direction.name == "MAXIMIZE"
    for t in study.trials:
        assert ("gamma" in t.params) == (t.params["kernel"] == "rbf")
        assert ("degree" in t.params) == (t.params["kernel"] == "poly")
        assert t.distributions["C"] == FloatDistribution(1e-3, 1e3, log=True)
        assert t.distributions["kernel"] == CategoricalDistribution(["linear", "rbf", "poly"])
    write_run(tmp_path / "err", [{"trial_id": "ok", "status": "completed", "score": 1.0, "config.x1": 0.0, "config.x2": 1.0},
                                 {"trial_id": "bad", "status": "errored", "score": None, "config.x1": 1.0,
                                  "config.x2": 1.0, "error": "ValueError: boom"},
                                 {"trial_id": "out", "status": "completed", "score": 2.0, "config.x1": 99.0,
                                  "config.x2": 1.0}])
    study = optuna_study.to_study(tmp_path / "err")
    assert [(t.user_attrs["hpo_trial_id"], t.state.name) for t in study.trials] == [("ok", "COMPLETE"), ("bad", "FAIL")]
    assert study.trials[1].user_attrs["error"] == "ValueError: boom"
    assert study.user_attrs["hpo_skipped_trials"] == ["out"]  # x1=99 lies outside [-5, 10]


def test_exported_journal_loads_back_in_optuna_and_the_dashboard(bench, tmp_path):
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    one = asha_run(bench)
    path = tmp_path / "optuna.log"
    written = optuna_study.export_journal(one.runs["path"].iloc[0], path)
    back = optuna.load_study(study_name=written.study_name, storage=JournalStorage(JournalFileBackend(str(path))))
    assert back.study_name == f"branin/{one.runs['run'].iloc[0]}"
    assert [(t.state, t.params, t.value, t.intermediate_values) for t in back.trials] == \
           [(t.state, t.params, t.value, t.intermediate_values) for t in written.trials]
    assert len(back.trials) == len(one.trials) and back.user_attrs["hpo_scheduler"] == "asha"
    with pytest.raises(ResultsError, match="already in that storage"):
        optuna_study.export_journal(one.runs["path"].iloc[0], path)

    dashboard = pytest.importorskip("optuna_dashboard")
    from wsgiref.util import setup_testing_defaults

    environ = {"PATH_INFO": "/api/studies", "REQUEST_METHOD": "GET"}
    setup_testing_defaults(environ)
    body = b"".join(dashboard.wsgi(str(path))(environ, lambda status, headers, exc_info=None: None))
    assert [s["study_name"] for s in json.loads(body)["study_summaries"]] == [written.study_name]


def test_optunas_own_plots_take_the_converted_study(bench):
    pytest.importorskip("plotly")
    import optuna

    one = asha_run(bench)
    study = optuna_study.to_study(one)
    fig = optuna.visualization.plot_intermediate_values(study)  # stopped trials' curves included
    iterations = one.trials.set_index("trial_id")["iterations"]
    assert [len(trace.x) for trace in fig.data] == [iterations[t.user_attrs["hpo_trial_id"]] for t in study.trials]


def test_importance_finds_the_parameter_that_matters(tmp_path):
    """An oracle: the score depends on x1 only, so both evaluators must rank x1 far above x2."""
    rng = np.random.default_rng(0)
    x1, x2 = rng.uniform(-5, 10, 100), rng.uniform(0, 15, 100)  # PED-ANOVA reads the top 10%: 10 trials
    write_run(tmp_path / "run", [{"trial_id": f"t{i}", "status": "completed", "score": (a - 2) ** 2,
                                  "config.x1": a, "config.x2": b} for i, (a, b) in enumerate(zip(x1, x2))])
    for evaluator in importance.EVALUATORS:
        result = importance.importance(tmp_path / "run", evaluator)
        shares = result.table.set_index("param")["importance"]
        assert shares.index[0] == "x1" and shares["x1"] > 0.9 and shares.sum() == pytest.approx(1.0)
        assert result.trials == 100
    assert "seed 3" in importance.importance(tmp_path / "run", "fanova", seed=3).evaluator


def test_importance_on_a_real_run_is_repeatable_and_says_what_it_left_out(svm, bench):
    first = importance.importance(svm, "fanova", seed=0)
    assert first.table.equals(importance.importance(svm, "fanova", seed=0).table)
    assert set(first.table["param"]) == {"C", "kernel"} and first.params_left_out == ("degree", "gamma")
    ped = importance.importance(svm, "ped-anova")
    assert "PED-ANOVA" in ped.evaluator and set(ped.table["param"]) == {"C", "kernel"}
    one = asha_run(bench)
    stopped = int(one.runs["stopped"].iloc[0])
    assert importance.importance(one).left_out == {"stopped": stopped}
    with pytest.raises(ResultsError, match="unknown importance evaluator 'shap'; use one of: fanova, ped-anova"):
        importance.importance(svm, "shap")


def test_importance_needs_two_completed_trials(tmp_path):
    write_run(tmp_path / "run", [{"trial_id": "a", "status": "completed", "score": 1.0, "config.x1": 0.0,
                                  "config.x2": 1.0}, {"trial_id": "b", "status": "errored", "config.x1": 1.0,
                                                      "config.x2": 1.0}])
    with pytest.raises(ResultsError, match="at least 2 completed trials"):
        importance.importance(tmp_path / "run")


# --- the CLI -------------------------------------------------------------------------------------

def test_cli_results_compare_importance_export(bench, svm, analysis_results, tmp_path, capsys):
    svm_dir = str(analysis_results / "svm" / "run")
    assert main(["results", svm_dir, "--top", "2"]) == 0
    out = capsys.readouterr().out
    assert svm.runs["best_trial"].iloc[0] in out and "test test_auc=" in out and "kernel" in out

    assert main(["compare", str(analysis_results / "bench")]) == 0
    out = capsys.readouterr().out
    assert "regret against the optimum 0.397887" in out and all(s in out for s in BENCH_SETUPS)

    assert main(["importance", svm_dir, "--evaluator", "ped-anova"]) == 0
    assert capsys.readouterr().out.startswith("PED-ANOVA")

    assert main(["export", "optuna", svm_dir, "--storage", str(tmp_path / "j.log"), "--study-name", "s"]) == 0
    assert "study 's': 8 trials" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["results", "/nonexistent/run"], "no such run folder"),
    (["importance", "BENCH"], "one run at a time, got 4 runs"),
    (["compare", "SVM", "BENCH"], "do not share one metric"),
    (["importance", "SVM", "--evaluator", "shap"], "use one of: fanova, ped-anova"),
    (["compare", "BENCH", "--x", "gpu_s"], "no gpu_s in the curves"),
])
def test_cli_user_errors_are_one_line_and_exit_2(argv, message, analysis_results, capsys):
    paths = {"BENCH": str(analysis_results / "bench"), "SVM": str(analysis_results / "svm" / "run")}
    assert main([paths.get(a, a) for a in argv]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_the_analysis_modules_never_import_ray():
    """A notebook on a laptop opens a cluster's results without Ray being importable."""
    import subprocess
    import sys

    modules = "runs, anytime, importance, optuna_study, plots, usage"
    code = f"import sys; from orchestrator.analysis import {modules}; print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "False"


# --- the contract --------------------------------------------------------------------------------

def test_parquet_files_read_alike_with_pandas_pyarrow_duckdb_and_polars(analysis_results):
    import duckdb
    import polars as pl
    import pyarrow.parquet as pq

    for run in (analysis_results / "svm" / "run", next((analysis_results / "bench").iterdir())):
        meta = json.loads((run / "experiment.json").read_text())
        assert meta["schema_version"] == SCHEMA_VERSION
        for name in ("trials.parquet", "history.parquet"):
            path = run / name
            frame = pd.read_parquet(path)
            table = pq.read_table(path)
            assert table.schema.metadata[b"schema_version"] == str(SCHEMA_VERSION).encode()
            polars = pl.read_parquet(path)
            con = duckdb.connect()
            ddb = con.execute(f"select * from read_parquet('{path}')").df()
            kv = dict(con.execute(f"select key::varchar, value::varchar from parquet_kv_metadata('{path}')").fetchall())
            assert kv["schema_version"] == str(SCHEMA_VERSION)
            assert list(frame.columns) == table.column_names == polars.columns == list(ddb.columns)
            assert len(frame) == table.num_rows == polars.height == len(ddb)
            assert polars["trial_id"].to_list() == frame["trial_id"].tolist() == ddb["trial_id"].tolist()
            assert polars.schema["trial_id"] == pl.String
            if name == "trials.parquet":
                assert polars.schema["started_at"] == pl.Datetime("ns", "UTC")
                assert polars["score"].to_list() == pytest.approx(frame["score"].tolist(), nan_ok=True)


def test_docs_list_every_column_and_experiment_key(analysis_results):
    doc = (ROOT / "docs" / "results.md").read_text()
    for run in (analysis_results / "svm" / "run", next((analysis_results / "bench").iterdir())):
        meta = json.loads((run / "experiment.json").read_text())
        names = set(meta) | {f"evaluation.{k}" for k in meta.get("evaluation") or {}}
        for name in ("trials.parquet", "history.parquet"):
            for column in pd.read_parquet(run / name).columns:
                prefix = column.split(".")[0]
                names.add(f"{prefix}.<" if prefix in ("config", "metric") else column)
        missing = sorted(n for n in names if f"`{n}" not in doc)
        assert not missing, f"docs/results.md does not describe: {missing}"

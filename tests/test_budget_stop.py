"""Ending a search early: `budget.stop` (patience) and the cost budgets `budget.cpu_hours` and
`budget.gpu_hours` (orchestrator.run.stopping). The rules on hand-made records, the spec's bad
input refused before Ray starts, what a resume carries on from the Parquet, and two real runs."""

from __future__ import annotations

import io
import json
import pickle
import time

import pandas as pd
import pytest

from orchestrator.errors import SpecError
from orchestrator.results.contract import EXPERIMENT, TRIALS
from orchestrator.results.reader import load
from orchestrator.results.writer import Recorder, TrialRecord
from orchestrator.run.callbacks import RunStopper
from orchestrator.run.progress import Progress
from orchestrator.run.stopping import CostMeter, Hours, Patience, SearchStop, hours_recorded
from orchestrator.spec.load import validate

SYNTHETIC = {"name": "stop", "family": "synthetic", "metric": {"name": "loss"}, "searcher": {"name": "random"},
             "budget": {"trials": 30, "concurrent": 2}}


def synthetic(**budget) -> dict:
    return {**SYNTHETIC, "budget": {**SYNTHETIC["budget"], **budget}}


def problems(raw) -> list[str]:
    with pytest.raises(SpecError) as info:
        validate(raw)
    return [str(p) for p in info.value.problems]


def record(trial_id: str, score: float | None, status: str = "completed", start: float = 0.0, end: float | None = None,
           cpus: float | None = None, gpus: float | None = None) -> TrialRecord:
    rec = TrialRecord(trial_id, {}, status=status, score=score, started_at=start, ended_at=end)
    rec.cpus, rec.gpus = cpus, gpus
    return rec


# --- patience ------------------------------------------------------------------------------------

def test_patience_counts_finished_trials_since_the_last_improvement():
    rule = Patience(3, 0.0, "min")
    for i, score in enumerate([5.0, 4.0, 4.5, 4.0, 6.0], start=1):  # 4.0 again is no improvement
        rule.observe(f"t{i}", score)
    assert rule.reason() == "patience: no improvement > 0 in 3 completed trials (best 4 at trial #2, t2)"
    rule = Patience(3, 0.0, "min")
    for i, score in enumerate([5.0, 4.0, 4.5, 3.9], start=1):
        rule.observe(f"t{i}", score)
    assert rule.reason() is None  # 3.9 improved: the count starts again


def test_patience_min_delta_and_max_mode():
    rule = Patience(2, 0.5, "max")
    for i, score in enumerate([0.80, 1.20, 1.25], start=1):  # +0.40 and +0.05: neither beats 0.80 by 0.5
        rule.observe(f"t{i}", score)
    assert rule.reason().startswith("patience: no improvement > 0.5 in 2 completed trials (best 0.8 at trial #1")
    rule = Patience(2, 0.5, "max")
    for i, score in enumerate([0.80, 1.31, 1.35], start=1):  # +0.51 improves
        rule.observe(f"t{i}", score)
    assert rule.reason() is None and rule.best == 1.31


def test_patience_waits_for_a_first_finite_score_and_counts_errored_trials():
    rule = Patience(2, 0.0, "min")
    for i in range(5):  # errored, or NaN: nothing to improve on yet
        rule.observe(f"e{i}", None if i % 2 else float("nan"))
    assert rule.reason() is None
    rule.observe("ok", 1.0)
    rule.observe("err", None)  # an errored trial finished without improving
    assert rule.reason() is None
    rule.observe("worse", 2.0)
    assert "in 2 completed trials (best 1 at trial #6, ok)" in rule.reason()


# --- cost ----------------------------------------------------------------------------------------

def test_cost_is_the_grant_times_wall_time_running_trials_to_now():
    meter = CostMeter(cpu=2, gpu=0.5)
    done = record("a", 1.0, start=1000.0, end=1000.0 + 1800, cpus=4, gpus=1)  # the worker's record wins
    running = record("b", None, status="running", start=1000.0)  # the spec's grant until it is read
    meter.started(done)
    meter.started(running)
    meter.ended(done)
    spent = meter.spent(now=1000.0 + 3600)
    assert spent.cpu == pytest.approx(4 * 0.5 + 2 * 1.0)
    assert spent.gpu == pytest.approx(1 * 0.5 + 0.5 * 1.0)
    # after a resume: what was spent before, plus only what trials held since the resume started
    resumed = CostMeter(cpu=1, gpu=0, base=Hours(3.0, 0.0), since=1000.0 + 3000)
    resumed.started(record("b", None, status="running", start=1000.0))
    assert resumed.spent(now=1000.0 + 3600).cpu == pytest.approx(3.0 + 600 / 3600)


def test_a_cost_budget_gives_its_reason_once_spent(tmp_path):
    exp = validate(synthetic(cpu_hours=0.5))
    stop = SearchStop.for_run(exp, {})
    rec = Recorder(tmp_path, "loss", "min")
    rec.listeners.append(stop)
    rec.start("a", {"x1": 1.0})
    assert stop.reason() is None
    rec.trials["a"].started_at = time.time() - 3600  # one CPU for an hour: twice the budget
    stop._looked = 0.0
    assert stop.reason() == "cpu_hours: 1.0000 spent of 0.5000"
    assert "CPU-h 1 spent, 0 left" in stop.progress()


def test_gpu_hours_stop_on_gpus_only():
    exp = validate({**synthetic(gpu_hours=1.0), "resources": {"cpu": 4, "gpu": 0.5}})
    stop = SearchStop.for_run(exp, {})
    stop.trial_started(record("a", None, status="running", start=time.time() - 3600 * 1.5))  # 6 CPU-h, 0.75 GPU-h
    assert stop.reason() is None
    stop.trial_started(record("b", None, status="running", start=time.time() - 3600 * 0.6))
    stop._looked = 0.0
    assert stop.reason().startswith("gpu_hours: 1.05")


def test_no_rule_no_search_stop():
    assert SearchStop.for_run(validate(synthetic(time_s=5)), {}) is None


# --- a run's stopper, its record and its progress ------------------------------------------------

def test_the_stopper_ends_the_run_on_the_rules_reason_and_pickles_without_it(tmp_path):
    exp = validate(synthetic(stop={"patience": 1}))
    stop = SearchStop.for_run(exp, {})
    stopper = RunStopper("loss", stop)
    assert stopper.stop_all() is False
    stop.trial_ended(record("a", 2.0, end=1.0))
    stop.trial_ended(record("b", 3.0, end=2.0))
    assert stopper.stop_all() is True and stop.stop_reason.startswith("patience: no improvement > 0 in 1")
    copy = pickle.loads(pickle.dumps(stopper))  # what Tune writes into each experiment snapshot
    assert copy.search_stop is None and copy.metric == "loss"


def test_with_in_flight_finish_the_stopper_ends_the_search_only(tmp_path):
    """Tune is not told to stop every trial (`stop_all`); it is told the search is over
    (`ends_search_only`, asked first by ray_api.finish_in_flight_when_asked), and which trials
    started, so that only those waiting to start are dropped."""
    stop = SearchStop.for_run(validate(synthetic(stop={"patience": 1}, in_flight="finish")),
                              {"old": record("old", None, status="interrupted")})  # started before a resume
    stopper = RunStopper("loss", stop)
    stop.trial_started(record("a", None, status="running"))
    stop.trial_started(record("b", None, status="running"))
    assert not stopper.ends_search_only() and not stop.finishing
    stop.trial_ended(record("a", 2.0, end=1.0))
    stop.trial_ended(record("b", 3.0, end=2.0))
    assert stop.stop_reason.startswith("patience: ") and stop.finishing
    assert stopper.stop_all() is False and stopper.ends_search_only() is True
    assert stopper.has_started("a") and stopper.has_started("old") and not stopper.has_started("waiting")
    assert stop.cut_off_at is None  # what is still running at the end was stopped by something else, then
    copy = pickle.loads(pickle.dumps(stopper))
    assert copy.search_stop is None and copy.ends_search_only() is False


def test_in_flight_defaults_to_stop_and_keeps_the_spec_hash():
    plain, stop = validate(synthetic(stop={"patience": 3})), validate(synthetic(stop={"patience": 3}, in_flight="stop"))
    assert plain.spec.budget.in_flight == "stop" and "in_flight" not in plain.resolved()["budget"]
    assert plain.spec_hash == stop.spec_hash
    finish = validate(synthetic(stop={"patience": 3}, in_flight="finish"))
    assert finish.resolved()["budget"]["in_flight"] == "finish" and finish.spec_hash != plain.spec_hash
    assert validate(finish.resolved()).spec.budget.in_flight == "finish"  # what `hpo resume` reads back
    search_stop = SearchStop.for_run(plain, {})
    search_stop.trial_ended(record("a", 2.0, end=1.0))
    search_stop._stop("patience: made up")
    assert not search_stop.finishing and search_stop.cut_off_at == search_stop.stopped_at


def test_trials_cut_off_by_a_rule_end_when_it_fired(tmp_path):
    rec = Recorder(tmp_path, "loss", "min")
    rec.start("a", {"x": 1})
    rec.result("a", {"x": 1}, {"training_iteration": 1, "loss": 1.0})
    at = time.time()
    rec.close(cut_off="stopped", at=at)
    trials, _ = load(tmp_path)
    assert trials.loc[0, "status"] == "stopped" and trials.loc[0, "ended_at"].timestamp() == pytest.approx(at, abs=1e-3)


def test_the_progress_line_shows_hours_spent_and_left(tmp_path):
    exp = validate(synthetic(cpu_hours=2.0))
    stop = SearchStop.for_run(exp, {})
    rec = Recorder(tmp_path, "loss", "min")
    stop.trial_started(record("a", None, status="running", start=time.time() - 1800))
    line = Progress(rec, total=30, stream=io.StringIO(), search_stop=stop).line()
    assert line.endswith("| CPU-h 0.5 spent, 1.5 left")
    assert "CPU-h" not in Progress(rec, total=30, stream=io.StringIO()).line()


def test_the_progress_line_says_the_search_stopped_while_running_trials_finish(tmp_path):
    rec = Recorder(tmp_path, "loss", "min")
    stop = SearchStop.for_run(validate(synthetic(cpu_hours=2.0, in_flight="finish")), {})
    progress = Progress(rec, total=30, stream=io.StringIO(), search_stop=stop)
    stop.trial_started(record("a", None, status="running", start=time.time() - 1800))
    assert "search stopped" not in progress.line()
    stop._stop("cpu_hours: 2.0000 spent of 2.0000")
    assert progress.line().endswith("| search stopped by cpu_hours, running trials finish; CPU-h 0.5 spent, 1.5 left")


# --- resume: counting on from the Parquet --------------------------------------------------------

def test_a_resume_tells_patience_the_trials_finished_before_in_the_order_they_finished(tmp_path):
    first = Recorder(tmp_path, "loss", "min")
    for trial_id, loss in (("a", 2.0), ("b", 1.0), ("c", 3.0), ("d", 5.0)):
        first.start(trial_id, {"x": 1})
        first.result(trial_id, {"x": 1}, {"training_iteration": 1, "loss": loss})
    ends = {"b": 10.0, "a": 20.0, "c": 30.0, "d": 40.0}  # b finished first: a, c and d never beat it
    for trial_id in "abcd":
        first.complete(trial_id)
        first.trials[trial_id].ended_at = ends[trial_id] + first.trials[trial_id].started_at
    first.start("e", {"x": 1})  # cut off by a signal: not finished, not counted
    first.close(cut_off="interrupted")
    again = Recorder.reopen(tmp_path, "loss", "min")
    stop = SearchStop.for_run(validate(synthetic(stop={"patience": 3})), again.trials)
    assert stop.patience.finished == 4
    assert stop.stop_reason == "patience: no improvement > 0 in 3 completed trials (best 1 at trial #1, b)"
    stop = SearchStop.for_run(validate(synthetic(stop={"patience": 4})), again.trials)
    assert stop.stop_reason is None


def test_hours_spent_before_a_resume_come_from_the_parquet(tmp_path):
    rec = Recorder(tmp_path, "loss", "min")
    for trial_id in ("a", "b"):
        rec.start(trial_id, {"x": 1})
        rec.result(trial_id, {"x": 1}, {"training_iteration": 1, "loss": 1.0})
    t0 = time.time() - 7200
    rec.trials["a"].started_at, rec.trials["a"].ended_at = t0, t0 + 3600  # 2 CPUs (recorded) for an hour
    rec.trials["a"].cpus = 2.0
    rec.trials["a"].status = "completed"
    rec.trials["b"].started_at = t0 + 1800  # running when the driver was killed: up to the newest record
    rec.flush()
    trials, history = load(tmp_path)
    last = max(history["timestamp"]).timestamp()
    meta = {"started_at": pd.Timestamp(t0, unit="s", tz="UTC").isoformat()}
    hours = hours_recorded(meta, trials, history, cpu=1.0, gpu=0.0)
    assert hours.cpu == pytest.approx(2.0 + (last - (t0 + 1800)) / 3600, rel=1e-6) and hours.gpu == 0
    # an earlier resume at t0 + 3000 had counted 5 CPU-hours: only what came after it is added
    meta["resumes"] = [{"at": pd.Timestamp(t0 + 3000, unit="s", tz="UTC").isoformat(), "spent_cpu_h": 5.0}]
    hours = hours_recorded(meta, trials, history, cpu=1.0, gpu=0.0)
    assert hours.cpu == pytest.approx(5.0 + 2 * 600 / 3600 + (last - (t0 + 3000)) / 3600, rel=1e-6)
    stop = SearchStop.for_run(validate(synthetic(cpu_hours=10.0)), {}, {"resumes": [
        {"at": pd.Timestamp(time.time(), unit="s", tz="UTC").isoformat(), "spent_cpu_h": hours.cpu}]})
    assert stop.meter.spent().cpu == pytest.approx(hours.cpu)


def test_a_run_a_rule_ended_is_not_extended(tmp_path):
    """Tune's snapshot holds its search as finished: a resume would propose nothing more."""
    from orchestrator.run.resume import resume

    exp = validate(synthetic(stop={"patience": 3}))
    meta = {"status": "finished", "stop_reason": "patience: no improvement > 0 in 3 completed trials (best 1 ...)",
            "spec": exp.resolved(), "base_dir": str(tmp_path)}
    (tmp_path / EXPERIMENT).write_text(json.dumps(meta))
    with pytest.raises(SpecError, match=r"--set: the run's search ended early \(patience: no improvement"):
        resume(tmp_path, overrides=["budget.stop.patience=10"])


# --- bad input: one line naming the field, before Ray starts -------------------------------------

@pytest.mark.parametrize("budget, field", [
    ({"stop": {"patience": 0}}, "budget.stop.patience"),
    ({"stop": {"patience": -3}}, "budget.stop.patience"),
    ({"stop": {"patience": 5, "min_delta": -0.1}}, "budget.stop.min_delta"),
    ({"stop": {}}, "budget.stop"),
    ({"stop": {"regret_bound": {"seed": "x"}}}, "budget.stop.regret_bound.seed"),
    ({"stop": {"regret_bound": {}}, "trials": 30}, "budget.stop.regret_bound"),
    ({"stop": {"patience": 5, "delta": 1}}, "budget.stop.delta"),
    ({"cpu_hours": 0}, "budget.cpu_hours"),
    ({"cpu_hours": -1.5}, "budget.cpu_hours"),
    ({"gpu_hours": 0}, "budget.gpu_hours"),
    ({"gpu_hours": -2}, "budget.gpu_hours"),
    ({"stop": {"patience": 5}, "in_flight": "wait"}, "budget.in_flight"),
    ({"cpu_hours": 1.0, "in_flight": True}, "budget.in_flight"),
    ({"stop": {"patience": 5, "in_flight": "finish"}}, "budget.stop.in_flight"),
])
def test_bad_stop_and_cost_budgets_name_the_field(budget, field):
    raw = {**synthetic(**budget), "resources": {"cpu": 1, "gpu": 1}}
    (msg,) = problems(raw)
    assert msg.startswith(f"{field}:") and "\n" not in msg


def test_gpu_hours_without_gpus_is_refused():
    (msg,) = problems(synthetic(gpu_hours=2.0))
    assert msg.startswith("budget.gpu_hours: no trial holds a GPU (resources.gpu is 0)")


def test_in_flight_finish_without_a_rule_to_follow_is_refused():
    (msg,) = problems(synthetic(in_flight="finish", time_s=60))
    assert msg.startswith("budget.in_flight: finish applies when budget.stop, cpu_hours or gpu_hours ends the search")
    assert "budget.time_s always stops" in msg and "\n" not in msg


def test_patience_with_several_metrics_is_refused():
    raw = {**synthetic(stop={"patience": 3}), "metric": [{"name": "loss"}, {"name": "regret"}]}
    (msg,) = problems(raw)
    assert msg.startswith("budget.stop: its rules follow one best score")


def test_the_cli_refuses_bad_stop_input_with_exit_2(write_spec, capsys):
    from orchestrator.cli import main

    path = write_spec("name: s\nfamily: synthetic\nmetric: {name: loss}\nbudget: {trials: 5, stop: {patience: 0}}\n")
    assert main(["validate", str(path)]) == 2
    assert "budget.stop.patience: Input should be greater than or equal to 1" in capsys.readouterr().err


# --- real runs -----------------------------------------------------------------------------------

def test_a_search_that_plateaus_stops_early_and_is_refitted(ray_local, tmp_path, capsys):
    """Every trial scores the same (a constant point, no noise): after the first, none improves, so
    patience ends the search long before its 30 trials, `finished`, with its best saved."""
    from orchestrator.cli import main
    from orchestrator.run.driver import run

    exp = validate({**synthetic(stop={"patience": 3}),
                    "space": {"x1": 3.0, "x2": 2.0, "noise": 0.0, "iterations": 3}})
    summary = run(exp, tmp_path / "run", quiet=True)
    meta = json.loads((summary.run_dir / EXPERIMENT).read_text())
    trials = pd.read_parquet(summary.run_dir / TRIALS)
    assert meta["status"] == "finished"
    assert meta["stop_reason"].startswith("patience: no improvement > 0 in 3 completed trials (best ")
    assert "at trial #1," in meta["stop_reason"]
    assert len(trials) < 30 and meta["counts"]["not_started"] > 0
    finished = trials[trials["status"].isin(["completed", "stopped", "errored"])]
    assert len(finished) >= 4 and (trials["status"] != "running").all()
    assert meta["best"]["trial_id"] in set(trials["trial_id"]) and meta["model"]
    assert summary.stop_reason == meta["stop_reason"]
    assert main(["results", str(summary.run_dir)]) == 0
    out = capsys.readouterr().out
    assert f"search ended early, {meta['stop_reason']}" in out and "CPU-hours" in out


def test_a_cpu_hours_budget_stops_within_one_trials_cost(ray_local, tmp_path):
    from orchestrator.run.driver import run

    limit = 0.0015  # 5.4 CPU-seconds; each trial holds one CPU for ~1 s
    exp = validate({**synthetic(cpu_hours=limit), "space": {"iterations": 10, "sleep_s": 0.1}})
    summary = run(exp, tmp_path / "run", quiet=True)
    meta = json.loads((summary.run_dir / EXPERIMENT).read_text())
    trials = pd.read_parquet(summary.run_dir / TRIALS)
    assert meta["status"] == "finished" and meta["stop_reason"].startswith("cpu_hours: ")
    assert meta["stop_reason"].endswith(f" spent of {limit:.4f}")
    cost = trials["cpus"].fillna(1.0) * trials["wall_s"] / 3600  # as trials.parquet records them
    assert len(trials) < 30
    assert limit <= cost.sum() <= limit + cost.max(), (cost.sum(), cost.max())


def test_in_flight_finish_lets_running_trials_end(ray_local, tmp_path):
    """Patience fires while trials run (`concurrent: 4` on 2 CPUs: two run, two wait for a CPU). With
    `in_flight: finish` the running ones end as they would have (completed, none stopped), the
    waiting ones never start, no trial starts after the reason, and the run ends `finished` with
    the reason, refitted. Every trial scores the same (a constant point, no noise): after the
    first to finish, none improves; their lengths differ so that trials overlap."""
    from orchestrator.run.driver import run

    patience = 2
    exp = validate({**synthetic(stop={"patience": patience}, in_flight="finish", concurrent=4),
                    "space": {"x1": 3.0, "x2": 2.0, "noise": 0.0, "iterations": 4,
                              "sleep_s": {"choice": [0.05, 0.2]}}})
    summary = run(exp, tmp_path / "run", quiet=True)
    meta = json.loads((summary.run_dir / EXPERIMENT).read_text())
    trials = pd.read_parquet(summary.run_dir / TRIALS).sort_values("ended_at")
    assert meta["status"] == "finished" and meta["stop_reason"].startswith(
        f"patience: no improvement > 0 in {patience} completed trials (best ")
    assert (trials["status"] == "completed").all(), trials[["trial_id", "status"]]
    assert meta["counts"]["stopped"] == 0 and meta["counts"]["not_started"] > 0 and len(trials) < 30
    place = int(meta["stop_reason"].split("at trial #")[1].split(",")[0])
    fired = trials["ended_at"].iloc[place + patience - 1]  # the trial whose end gave the reason
    assert (trials["started_at"] <= fired).all(), "a trial started after the search had ended"
    assert (trials["ended_at"] > fired).any(), "no trial was in flight when the search ended"
    assert meta["best"]["trial_id"] in set(trials["trial_id"]) and meta["model"]
    assert summary.stop_reason == meta["stop_reason"]

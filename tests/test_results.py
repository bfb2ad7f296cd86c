"""The recorder turns trial events into Parquet without Ray: statuses, best scores, crash safety."""

from __future__ import annotations

import errno
import json

import pandas as pd
import pytest

from orchestrator.results.contract import HISTORY, PARTS, SCHEDULE, TRIALS
from orchestrator.results.reader import load
from orchestrator.results.reports import metric_problem
from orchestrator.results.writer import Recorder


def feed(rec: Recorder, trial_id: str, config: dict, values: list[float], stopped_at: int | None = None):
    rec.start(trial_id, config)
    for i, v in enumerate(values, start=1):
        done = stopped_at == i
        rec.result(trial_id, config, {"training_iteration": i, "loss": v, "acc": 1 - v, "time_total_s": i * 0.1,
                                      "done": done, "node_ip": "127.0.0.1", "pid": 1})
        if done:
            break
    rec.complete(trial_id)


def test_statuses_scores_and_files(tmp_path):
    rec = Recorder(tmp_path, "loss", "min", max_t=3)
    feed(rec, "a", {"lr": 0.1, "opt": "adam"}, [0.5, 0.3, 0.2])
    feed(rec, "b", {"lr": 0.2, "opt": "sgd"}, [0.9, 0.8, 0.7], stopped_at=1)  # early-stopped by the scheduler
    feed(rec, "c", {"lr": 0.3, "opt": "sgd"}, [0.6, 0.1, 0.4], stopped_at=3)  # stopped at max_t: it finished
    rec.start("d", {"lr": 0.4, "opt": "sgd"})
    rec.error("d", "ValueError: boom")
    rec.close()

    trials, history = load(tmp_path)
    by_id = trials.set_index("trial_id")
    assert dict(by_id["status"]) == {"a": "completed", "b": "stopped", "c": "completed", "d": "errored"}
    assert by_id.loc["c", "score"] == 0.1 and by_id.loc["c", "score_iteration"] == 2
    assert by_id.loc["a", "metric.loss"] == 0.2  # the last value, beside the best
    assert by_id.loc["d", "error"] == "ValueError: boom"
    assert rec.best.trial_id == "c"
    assert history.groupby("trial_id").size().to_dict() == {"a": 3, "b": 1, "c": 3}
    assert str(trials["config.lr"].dtype) == "float64"
    assert set(history.columns) >= {"trial_id", "iteration", "metric.loss", "metric.acc", "config.opt"}
    assert not (tmp_path / PARTS).exists()


def test_max_mode_keeps_the_highest(tmp_path):
    rec = Recorder(tmp_path, "acc", "max")
    feed(rec, "a", {"x": 1}, [0.5, 0.1, 0.3])
    assert rec.trials["a"].score == 0.9 and rec.trials["a"].score_iteration == 2


def test_mixed_type_choice_column_is_stored_as_text(tmp_path):
    rec = Recorder(tmp_path, "loss", "min")
    feed(rec, "a", {"max_features": 0.5}, [0.1])
    feed(rec, "b", {"max_features": "sqrt"}, [0.2])
    rec.close()
    trials, _ = load(tmp_path)
    assert sorted(trials["config.max_features"]) == ["0.5", "sqrt"]


def test_flushed_parts_survive_a_crash(tmp_path):
    """No close(): the driver died. What was flushed is still readable by load()."""
    rec = Recorder(tmp_path, "loss", "min")
    feed(rec, "a", {"x": 1}, [0.5, 0.4])
    rec.flush()
    feed(rec, "b", {"x": 2}, [0.3])
    rec.flush()
    assert not (tmp_path / HISTORY).exists()
    trials, history = load(tmp_path)
    assert len(trials) == 2 and len(history) == 3


def test_flush_counters_grow_with_each_flush_and_the_merge(tmp_path):
    """`flushes` and `flush_s` (what benchmarks/bookkeeping.py reports) count every flush, close()'s too."""
    rec = Recorder(tmp_path, "loss", "min")
    assert (rec.flushes, rec.flush_s) == (0, 0.0)
    feed(rec, "a", {"x": 1}, [0.5, 0.4])
    rec.flush()
    first = rec.flush_s
    assert rec.flushes == 1 and first > 0
    feed(rec, "b", {"x": 2}, [0.3])
    rec.flush()
    assert rec.flushes == 2 and rec.flush_s > first
    second = rec.flush_s
    rec.close()
    assert rec.flushes == 3 and rec.flush_s > second


def test_an_ended_trials_row_is_kept_until_the_record_changes(tmp_path, monkeypatch):
    """trials.parquet is rewritten at every flush: an ended trial's row is built once, and any
    change to its record (hpo resume rewrites statuses and scores) is in the next row."""
    import orchestrator.results.writer as writer

    rec = Recorder(tmp_path, "loss", "min")
    feed(rec, "a", {"x": 1}, [0.5, 0.4])
    rec.start("b", {"x": 2})
    first = rec.trials["a"].row()
    first["status"] = "scribbled"  # the caller's own copy
    stamps = []
    monkeypatch.setattr(writer, "_ts", lambda t: stamps.append(t) or t)
    assert rec.trials["a"].row()["status"] == "completed" and stamps == []
    for _ in range(2):
        rec.trials["b"].row()
    assert len(stamps) == 4  # a running trial's row is built each time: its wall_s grows
    rec.trials["a"].status, rec.trials["a"].score = "errored", 0.1
    row = rec.trials["a"].row()
    assert (row["status"], row["score"]) == ("errored", 0.1) and len(stamps) == 6
    rec.close()
    assert load(tmp_path)[0].set_index("trial_id").loc["a", "status"] == "errored"


def test_close_marks_unfinished_trials_stopped_at_the_end_of_the_time_budget(tmp_path):
    rec = Recorder(tmp_path, "loss", "min")
    rec.start("a", {"x": 1})
    rec.result("a", {"x": 1}, {"training_iteration": 1, "loss": 0.2})
    rec.close()
    assert pd.read_parquet(tmp_path / TRIALS)["status"].tolist() == ["stopped"]


def test_a_result_without_the_metric_names_what_was_reported():
    problem = metric_problem("a", "loss", {"training_iteration": 1, "los": 0.2, "acc": 0.9, "config": {"x": 1},
                                           "time_total_s": 1.0})
    assert "never reports the spec's metric 'loss'" in problem
    assert "reported acc, los" in problem and "did you mean metric.name: los?" in problem
    assert metric_problem("a", "loss", {"training_iteration": 1, "loss": 0.2}) is None


def test_a_trainable_that_returned_without_reporting_is_named():
    """Ray's record of such a trial holds only `done` (and its id): Ray's own check lets it pass."""
    problem = metric_problem("t1", "loss", {"done": True, "trial_id": "t1", "__duplicate__": True})
    assert problem.startswith("trial t1 ended without reporting anything")


def test_best_is_a_finite_score_of_a_trial_that_ended_normally(tmp_path):
    """Errored after a great report, -inf, NaN: none of them is the best."""
    rec = Recorder(tmp_path, "loss", "min", max_t=3)
    feed(rec, "ok", {"x": 1}, [0.5, 0.4, 0.3])
    feed(rec, "early", {"x": 2}, [0.35], stopped_at=1)
    rec.start("crashed", {"x": 3})
    rec.result("crashed", {"x": 3}, {"training_iteration": 1, "loss": 0.001})
    assert rec.best is None or rec.best.trial_id != "crashed"
    rec.error("crashed", "RuntimeError: diverged")
    feed(rec, "neg_inf", {"x": 4}, [float("-inf"), float("nan")])
    rec.start("cut", {"x": 5})
    rec.result("cut", {"x": 5}, {"training_iteration": 1, "loss": 0.01})
    rec.close(cut_off="interrupted")
    assert rec.best.trial_id == "ok" and rec.best.score == 0.3
    assert rec.trials["neg_inf"].score is None and rec.trials["crashed"].score == 0.001
    assert rec.trials["cut"].status == "interrupted"
    assert rec.counts()["interrupted"] == 1 and rec.counts()["errored"] == 1


def test_a_trial_that_ended_itself_completed_though_it_said_done_early(tmp_path):
    rec = Recorder(tmp_path, "loss", "min", max_t=10)
    feed(rec, "self", {"x": 1}, [0.5, 0.4], stopped_at=2)
    rec.trials["self"].status = "running"
    rec.complete("self", ended_itself=True)
    feed(rec, "asha", {"x": 2}, [0.9, 0.8], stopped_at=2)
    assert rec.trials["self"].status == "completed" and rec.trials["asha"].status == "stopped"


def test_a_full_disk_keeps_what_earlier_flushes_wrote(tmp_path, monkeypatch):
    """ENOSPC at close: no temporary file left, parts kept, and load() still reads the run."""
    rec = Recorder(tmp_path, "loss", "min")
    feed(rec, "a", {"x": 1}, [0.5, 0.4])
    rec.flush()
    before = (tmp_path / TRIALS).read_bytes()
    feed(rec, "b", {"x": 2}, [0.3])

    def full(table, path, **kw):
        with open(path, "wb") as f:
            f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    import pyarrow.parquet as pq

    monkeypatch.setattr(pq, "write_table", full)
    with pytest.raises(OSError):
        rec.close()
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.rglob(".*.tmp")) == []
    assert (tmp_path / TRIALS).read_bytes() == before and not (tmp_path / HISTORY).exists()
    trials, history = load(tmp_path)
    assert list(trials.trial_id) == ["a"] and len(history) == 2


def test_load_rebuilds_trials_from_history_parts_when_trials_parquet_is_missing(tmp_path):
    rec = Recorder(tmp_path, "loss", "min")
    feed(rec, "a", {"x": 1}, [0.5, 0.2, 0.4])
    feed(rec, "b", {"x": 2}, [0.3])
    rec.flush()
    (tmp_path / TRIALS).unlink()
    (tmp_path / "experiment.json").write_text('{"metric": {"name": "loss", "mode": "min"}}')
    trials, history = load(tmp_path)
    by_id = trials.set_index("trial_id")
    assert len(history) == 4 and set(by_id.status) == {"unknown"}
    assert by_id.loc["a", "score"] == 0.2 and by_id.loc["a", "score_iteration"] == 2
    assert by_id.loc["a", "iterations"] == 3 and by_id.loc["a", "metric.loss"] == 0.4
    assert by_id.loc["b", "config.x"] == 2


def test_a_choice_of_floats_and_strings_split_across_parts_still_merges(tmp_path):
    """One flush sees only 0.5, the next only 'sqrt': the parts disagree on the column's type."""
    rec = Recorder(tmp_path, "loss", "min")
    feed(rec, "a", {"max_features": 0.5}, [0.1])
    rec.flush()
    feed(rec, "b", {"max_features": "sqrt"}, [0.2])
    rec.close()
    _, history = load(tmp_path)
    assert sorted(history["config.max_features"]) == ["0.5", "sqrt"]


def test_progress_line_in_a_log_prints_only_changes_and_the_best(tmp_path):
    import io

    from orchestrator.run.progress import Progress

    rec = Recorder(tmp_path, "loss", "min")
    out = io.StringIO()
    progress = Progress(rec, total=2, stream=out)
    progress.tick(force=True)
    progress.tick(force=True)  # nothing changed: no new line in a log
    feed(rec, "a", {"x": 1}, [0.5, 0.25])
    progress.finish()
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    assert "trials 1/2 finished: 1 completed" in lines[1] and "best loss=0.25 (a)" in lines[1]


def test_a_trial_stopped_while_paused_is_stopped_unless_it_had_reached_max_t(tmp_path):
    """HyperBand stops the losers of a rung while they wait paused: no result of theirs says done."""
    rec = Recorder(tmp_path, "loss", "min", max_t=9)
    for trial_id, iterations in (("loser", 3), ("finished", 9)):
        rec.start(trial_id, {"x": iterations})
        for i in range(1, iterations + 1):
            rec.result(trial_id, {"x": iterations}, {"training_iteration": i, "loss": 1 / i})
        rec.complete(trial_id, stopped_waiting=True)  # "finished" waited at max_t until its bracket ended
    assert {t: r.status for t, r in rec.trials.items()} == {"loser": "stopped", "finished": "completed"}


def test_a_trial_stopped_while_its_pause_is_saving_is_stopped(tmp_path):
    """HyperBand pauses a rung's trial; Tune keeps it RUNNING until the pause's save ends. Stopped in
    that window (another trial's result processes the rung), it waited, as a paused one does."""
    from ray.tune.experiment import Trial

    from orchestrator.run.callbacks import RecorderCallback

    rec = Recorder(tmp_path, "loss", "min", max_t=9)
    callback = RecorderCallback(rec)
    for trial_id, saving in (("pausing", True), ("running", False)):
        trial = Trial("trainable", config={"x": 1}, trial_id=trial_id, stub=True)
        trial.set_status(Trial.RUNNING)
        callback.on_trial_start(0, [trial], trial)
        for i in range(1, 4):
            callback.on_trial_result(0, [trial], trial, {"training_iteration": i, "loss": 1 / i})
        trial.temporary_state.saving_to = object() if saving else None  # Tune's save future, in flight
        callback.on_trial_complete(0, [trial], trial)
    assert {t: r.status for t, r in rec.trials.items()} == {"pausing": "stopped", "running": "completed"}


def test_a_pbt_schedule_is_written_to_trials_parquet_and_read_back_on_resume(tmp_path):
    """The refit after PBT replays the best trial's schedule: it must survive a crash (`hpo resume`
    rebuilds the Recorder from trials.parquet), not live only in the driver's memory."""
    schedule = [{"from_iteration": 0, "config": {"lr": 0.3}}, {"from_iteration": 4, "config": {"lr": 0.02}}]
    rec = Recorder(tmp_path, "loss", "min")
    rec.start("a", {"lr": 0.02})
    rec.result("a", {"lr": 0.02}, {"training_iteration": 5, "loss": 0.1, "done": True, SCHEDULE: schedule})
    rec.complete("a")
    feed(rec, "b", {"lr": 0.5}, [0.4])  # never exploited: no schedule
    rec.close()

    trials, _ = load(tmp_path)
    by_id = trials.set_index("trial_id")
    assert json.loads(by_id.loc["a", "schedule"]) == schedule and pd.isna(by_id.loc["b", "schedule"])
    again = Recorder.reopen(tmp_path, "loss", "min")
    assert again.trials["a"].schedule == schedule and again.trials["b"].schedule is None


def test_pending_trials_are_looked_for_at_most_once_a_second(tmp_path, monkeypatch):
    """The look walks every trial Tune has, at a step of its loop: once a second, not at each step,
    and the note why trials wait still comes."""
    from types import SimpleNamespace

    from orchestrator.run import callbacks

    looks, notes, clock = [], [], [100.0]

    class Watch:
        def update(self, pending):
            looks.append(list(pending))
            return "1 trial pending for 61 s: every live node that fits a trial (cpu=1, gpu=0) is busy"

    callback = callbacks.RecorderCallback(Recorder(tmp_path, "loss", "min"), on_note=notes.append, pending=Watch())
    trials = [SimpleNamespace(trial_id="a", status="PENDING"), SimpleNamespace(trial_id="b", status="RUNNING")]
    monkeypatch.setattr(callbacks.time, "monotonic", lambda: clock[0])
    for _ in range(50):
        callback.on_step_end(0, trials)
    assert looks == [["a"]] and len(notes) == 1
    clock[0] += callbacks.RecorderCallback.PENDING_EVERY_S
    callback.on_step_end(0, trials)
    assert looks == [["a"], ["a"]] and len(notes) == 2

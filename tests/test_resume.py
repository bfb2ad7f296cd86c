"""`hpo resume`: a killed run finishes in its own folder, keeping what it had."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from orchestrator.errors import InputError
from orchestrator.results import rundir
from orchestrator.results.contract import EXPERIMENT, HISTORY, PARTS, TRIALS
from orchestrator.results.reader import load
from orchestrator.results.writer import Recorder
from orchestrator.run.resume import resume, spent_s
from orchestrator.spec.load import validate
from tests.conftest import ROOT


def feed(rec: Recorder, trial_id: str, values: list[float], complete: bool = True, config: dict | None = None) -> None:
    config = config or {"x": len(values)}
    rec.start(trial_id, config)
    for i, v in enumerate(values, start=1):
        rec.result(trial_id, config, {"training_iteration": i, "loss": v, "time_total_s": i})
    if complete:
        rec.complete(trial_id)


def test_a_reopened_recorder_keeps_trials_and_history_and_numbers_new_parts_after_them(tmp_path):
    first = Recorder(tmp_path, "loss", "min")
    feed(first, "a", [3.0, 2.0])
    feed(first, "b", [5.0], complete=False)  # running when the driver died
    first.flush()  # what a crash leaves: parts and trials.parquet, no history.parquet

    again = Recorder.reopen(tmp_path, "loss", "min")
    assert again.trials["a"].status == "completed" and again.trials["a"].score == 2.0
    assert again.trials["b"].status == "running" and again.best.trial_id == "a"
    feed(again, "b", [5.0, 1.0])  # b restarts from scratch (no checkpoint) and finishes
    again.close()

    trials, history = load(tmp_path)
    assert dict(zip(trials.trial_id, trials.status)) == {"a": "completed", "b": "completed"}
    # b's first attempt stays in history beside the one that finished (results contract 2)
    assert history.groupby(["trial_id", "attempt"])["iteration"].apply(list).to_dict() == {
        ("a", 1): [1, 2], ("b", 1): [1], ("b", 2): [1, 2]}
    assert history.set_index(["trial_id", "attempt", "iteration"]).loc[("b", 2, 2), "metric.loss"] == 1.0
    assert not (tmp_path / PARTS).exists() and (tmp_path / HISTORY).exists()


def test_a_trial_whose_history_reached_disk_before_trials_parquet_restarts_as_a_new_attempt(tmp_path):
    """A kill after a history part named a trial but before trials.parquet did: the restarted trial is
    attempt 2 (its attempts counted from history), so no (trial, attempt, iteration) is written twice."""
    first = Recorder(tmp_path, "loss", "min")
    feed(first, "a", [3.0, 2.0])
    first.flush()
    (tmp_path / TRIALS).unlink()  # as if the kill came between the part and trials.parquet
    again = Recorder.reopen(tmp_path, "loss", "min")
    feed(again, "a", [3.0, 2.0])  # created again by the resume, from the start
    again.result("b", {"x": 1}, {"training_iteration": 1, "loss": 4.0})  # a result before any start event
    again.close()

    _, history = load(tmp_path)
    assert history.groupby(["trial_id", "attempt"])["iteration"].apply(list).to_dict() == {
        ("a", 1): [1, 2], ("a", 2): [1, 2], ("b", 1): [1]}


def test_an_interrupted_runs_merged_history_becomes_the_first_part(tmp_path):
    first = Recorder(tmp_path, "loss", "min")
    feed(first, "a", [1.0, 0.5])
    first.close()
    again = Recorder.reopen(tmp_path, "loss", "min")
    feed(again, "c", [2.0])
    again.close()
    _, history = load(tmp_path)
    assert sorted(history.trial_id) == ["a", "a", "c"]


def test_the_time_spent_counts_each_stretch_up_to_its_last_record(tmp_path):
    rec = Recorder(tmp_path, "loss", "min")
    feed(rec, "a", [1.0])
    rec.flush()
    trials = pd.read_parquet(tmp_path / TRIALS)
    start = trials["started_at"].iloc[0] - pd.Timedelta(seconds=30)
    meta = {"started_at": start.isoformat()}
    assert spent_s(meta, *load(tmp_path)) == pytest.approx(30, abs=1.5)
    meta["resumes"] = [{"at": (start + pd.Timedelta(seconds=25)).isoformat(), "spent_s": 100.0}]
    assert spent_s(meta, *load(tmp_path)) == pytest.approx(105, abs=1.5)  # 100 before, 5 since that resume


def test_reconcile_settles_the_record_against_tunes_snapshot_trial_by_trial(tmp_path):
    """Each case of the module docstring, against a snapshot written by hand."""
    from orchestrator.run.resume import reconcile

    exp = validate({"name": "r", "family": "synthetic", "metric": {"name": "loss"}, "budget": {"trials": 8}})
    rec = Recorder(tmp_path, "loss", "min", max_t=27)
    feed(rec, "done_both", [3.0])  # finished in both
    feed(rec, "done_after", [2.0, 1.0])  # finished, the snapshot has it running
    feed(rec, "new_done", [4.0], config={"x1": 1.0, "x2": 2.0, "iterations": 27})  # finished, created after it
    feed(rec, "new_running", [5.0], complete=False)  # created after the snapshot, unfinished
    feed(rec, "lag", [6.0], complete=False)  # the snapshot has its end, the record not yet
    feed(rec, "both_running", [7.0], complete=False)  # running in both: Tune resumes it
    rec.flush()
    snapshot = {"done_both": {"status": "TERMINATED", "last_result": {}},
                "done_after": {"status": "RUNNING", "last_result": {}},
                "lag": {"status": "TERMINATED", "last_result": {"loss": 0.5, "training_iteration": 27}},
                "both_running": {"status": "RUNNING", "last_result": {}}}
    _, history = load(tmp_path)
    plan = reconcile(rec, snapshot, exp, history)
    told = {f.trial_id: f for f in plan.told}
    assert set(told) == {"done_after", "new_done", "new_running"}
    assert told["done_after"].known and not told["new_done"].known and not told["new_running"].finished
    assert told["done_after"].result["loss"] == 1.0 and told["done_after"].curve == (2.0, 1.0)
    assert set(told["new_done"].config) == {"x1", "x2"}  # the sampled parameters, not the constants
    assert plan.finished_in_record == {"done_after": "TERMINATED"}
    assert plan.cut_off == ["new_running"] and rec.trials["new_running"].status == "interrupted"
    assert plan.settled == ["lag"]
    lag = rec.trials["lag"]
    assert (lag.status, lag.score, lag.iterations) == ("completed", 0.5, 27)
    assert rec.trials["both_running"].status == "running"
    # told by an earlier resume and finished in the snapshot: told again, the searcher's state decides
    again = reconcile(rec, {**snapshot, "done_after": {"status": "TERMINATED", "last_result": {}}}, exp, history,
                      told_before={"done_after"})
    assert "done_after" in {t.trial_id for t in again.told if t.known} and "done_after" not in again.finished_in_record


def test_resume_refuses_what_it_cannot_resume(tmp_path):
    with pytest.raises(InputError, match="not a run folder"):
        resume(tmp_path)
    rundir.write_json(tmp_path / EXPERIMENT, {"status": "finished"})
    with pytest.raises(InputError, match="finished: nothing to resume"):
        resume(tmp_path)


def test_a_run_whose_snapshot_was_cut_off_is_refused_in_one_line_before_ray_starts(tmp_path):
    """A run folder Ray left with an empty `experiment_state-*.json` (its driver killed mid-copy,
    before `snapshots_written_whole`): refused with what happened and what to do, not a traceback."""
    import yaml

    exp = validate(yaml.safe_load(SPEC))
    rundir.write_json(tmp_path / EXPERIMENT, {"status": "running", "spec": exp.resolved(),
                                              "started_at": "2026-12-07T03:14:47+00:00"})
    (tmp_path / "tune").mkdir()
    (tmp_path / "tune" / "tuner.pkl").write_bytes(b"")  # what Tune's `can_restore` looks for
    (tmp_path / "tune" / "experiment_state-2026-12-07_03-14-47.json").write_text("")
    with pytest.raises(InputError, match=r"snapshot of the run cannot be read \(experiment_state-2026-12-07_03-14-47"
                                         r"\.json is not whole .*killed while Tune wrote it\); run the spec again"):
        resume(tmp_path)
    assert not (tmp_path / "owner.json").exists()  # refused before the folder was claimed


def test_a_snapshot_copy_cut_short_leaves_the_last_snapshot_whole(tmp_path, monkeypatch):
    """Ray's copy of Tune's snapshot into a local run folder (`_upload_to_fs_path`, patched by
    `ray_api.snapshots_written_whole`): a copy that dies halfway through a file leaves the file
    the last copy wrote, whole; one that finishes leaves the new files, Tune's index last."""
    import pyarrow.fs
    from ray.train._internal import storage

    from orchestrator import ray_api

    ray_api.snapshots_written_whole()
    ray_api.snapshots_written_whole()  # idempotent: wraps Ray's upload once
    staging, dest = tmp_path / "staging", tmp_path / "tune"
    (staging / "sub").mkdir(parents=True)
    index = "experiment_state-2026-12-07_03-14-47.json"

    def snapshot(n: int) -> None:
        (staging / index).write_text(json.dumps({"trial_data": [], "n": n}))
        (staging / "searcher-state-2026-12-07_03-14-47.pkl").write_bytes(bytes([n]) * 1000)
        (staging / "sub" / "f.txt").write_text(str(n))

    def upload() -> None:
        storage._upload_to_fs_path(str(staging), pyarrow.fs.LocalFileSystem(), str(dest))

    snapshot(1)
    upload()
    assert json.loads((dest / index).read_text())["n"] == 1 and (dest / "sub" / "f.txt").read_text() == "1"
    renamed = []
    monkeypatch.setattr(os, "replace", lambda a, b: (renamed.append(Path(b).name), os.rename(a, b)))
    snapshot(2)
    upload()
    assert renamed[-1] == index and json.loads((dest / index).read_text())["n"] == 2
    monkeypatch.undo()

    copy = shutil.copyfile

    def dies_halfway(src, dst):
        if Path(src).name == index:
            Path(dst).write_bytes(Path(src).read_bytes()[:5])
            raise SystemExit("killed")  # as a kill -9 mid-copy leaves it
        return copy(src, dst)

    monkeypatch.setattr(shutil, "copyfile", dies_halfway)
    snapshot(3)
    with pytest.raises(SystemExit):
        upload()
    assert json.loads((dest / index).read_text())["n"] == 2  # the last whole snapshot
    assert ray_api.snapshot_trials(dest)[0] == dest / index
    (dest / index).write_text('{"trial_data": [')  # what Ray's own copy could leave
    with pytest.raises(ray_api.TornSnapshot, match="is not whole"):
        ray_api.snapshot_trials(dest)


SPEC = """
name: resume-me
family: synthetic
metric: {name: loss, mode: min}
space: {iterations: 10, sleep_s: 0.2}
searcher: {name: optuna-tpe, seed: 0}
budget: {trials: 10, concurrent: 2}
"""


@pytest.fixture
def ray_tmp():
    """A Ray temp folder of the test's own: a killed Ray leaves its address file there, where a
    later bare `ray.init()` would find it and wait for the dead cluster forever. Short: socket paths."""
    path = Path(f"/tmp/hpo-resume-{os.getpid()}")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _cli(*args, ray_tmp: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "orchestrator.cli", *map(str, args)], cwd=ROOT,
                            env={**os.environ, "RAY_TMPDIR": str(ray_tmp)}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def kill_session(proc: subprocess.Popen) -> None:
    """SIGKILL to every process of the run's session: its driver and the Ray processes it started."""
    import psutil

    for p in psutil.process_iter():
        try:
            if os.getsid(p.pid) == proc.pid:
                p.kill()
        except (psutil.Error, ProcessLookupError, PermissionError):
            pass


def _completed(run_dir) -> pd.DataFrame:
    try:
        trials = pd.read_parquet(run_dir / TRIALS)
    except (OSError, ValueError):
        return pd.DataFrame({"status": []})
    return trials[trials.status == "completed"]


@pytest.mark.slow
def test_kill_9_then_resume_ends_at_exactly_the_budget_and_keeps_finished_trials(tmp_path, ray_tmp):
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC)
    run_dir = tmp_path / "run"
    proc = _cli("run", spec, "--output", run_dir, "--quiet", ray_tmp=ray_tmp)
    deadline = time.monotonic() + 180
    while len(_completed(run_dir)) < 3 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.5)
    assert proc.poll() is None, f"the run ended before it could be killed: {proc.communicate()}"
    kill_session(proc)  # the driver and the Ray it started, without a word
    proc.wait()
    before = _completed(run_dir).set_index("trial_id")["score"].to_dict()
    assert json.loads((run_dir / EXPERIMENT).read_text())["status"] == "running"

    again = _cli("resume", run_dir, "--quiet", ray_tmp=ray_tmp)
    out, err = again.communicate(timeout=240)
    assert again.returncode == 0, err

    trials, history = load(run_dir)
    meta = json.loads((run_dir / EXPERIMENT).read_text())
    entry = meta["resumes"][0]
    assert meta["status"] == "finished" and len(meta["resumes"]) == 1 and entry["spent_s"] > 0
    cut = entry["cut_off_after_snapshot"]
    by_status = trials.groupby("status")["trial_id"].apply(set).to_dict()
    assert len(by_status["completed"]) == 10 and trials.trial_id.is_unique  # exactly the budget, none twice
    assert len(trials) == 10 and set(cut) <= by_status["completed"]  # cut-off trials ran again, under their ids
    after = trials.set_index("trial_id")["score"]
    assert all(after[t] == pytest.approx(score) for t, score in before.items())  # kept, with its score
    assert set(entry["told_searcher"]) >= set(entry["finished_after_snapshot"])
    assert not history.duplicated(["trial_id", "attempt", "iteration"]).any()
    done = trials.loc[trials.status == "completed", "trial_id"]
    last = history[history.trial_id.isin(done)].groupby("trial_id")["attempt"].transform("max")
    ran = history[history.trial_id.isin(done)][lambda h: h["attempt"] == last]
    assert ran.groupby("trial_id")["iteration"].apply(lambda s: sorted(s) == list(range(1, 11))).all()
    assert "run " in out and "best trial" in out


def _saved_and_restored(alg, folder: Path, after: list, build):
    """The searcher state Tune would snapshot, restored into a fresh algorithm told `after`."""
    folder.mkdir(parents=True, exist_ok=True)
    alg.save_to_dir(str(folder), session_str=f"s{len(list(folder.iterdir()))}")
    fresh = build()
    fresh.after_snapshot(after)
    fresh.restore_from_dir(str(folder))
    return fresh


@pytest.mark.parametrize("searcher", ["optuna-tpe", "smac"])
def test_a_restored_searcher_is_told_each_trial_after_the_snapshot_once(tmp_path, searcher):
    """A trial the snapshot had running and one created after it reach the searcher once, even when the
    resume that told them is itself killed and resumed again (its state says what it told)."""
    from orchestrator.run.tuner import build_tune_config
    from orchestrator.search.resumable import AfterSnapshot, base_searcher

    exp = validate({"name": "r", "family": "synthetic", "metric": {"name": "loss"}, "budget": {"trials": 6},
                    "searcher": {"name": searcher, "seed": 0}})

    def build():
        return build_tune_config(exp)[0].search_alg

    alg = build()
    alg._total_samples = 6
    known = alg.searcher.suggest("known")  # proposed before the snapshot, running in it
    alg._counter = 1
    after = [AfterSnapshot("known", {k: known[k] for k in ("x1", "x2")}, {"loss": 1.5}, known=True),
             AfterSnapshot("later", {"x1": 1.0, "x2": 2.0}, {"loss": 0.5}, known=False),
             AfterSnapshot("cut", {"x1": 3.0, "x2": 4.0, "iterations": 27}, None, known=False, finished=False)]
    once = _saved_and_restored(alg, tmp_path / "a", after, build)
    assert once._counter == 2 and once.told == {"known", "later"} and once._rerun == [("cut", after[2].config)]

    def results(search):
        base = base_searcher(search)
        if searcher == "smac":
            return sorted(cost for _, cost in base.told)
        return sorted(t.value for t in base._ot_study.trials if t.state.is_finished())

    assert results(once) == [0.5, 1.5]
    # The resume is killed after Tune's next snapshot, and resumed with the same trials again.
    twice = _saved_and_restored(once, tmp_path / "b", after, build)
    assert twice._counter == 2 and results(twice) == [0.5, 1.5] and twice._rerun == [("cut", after[2].config)]
    # ... or killed before it: the older state is restored, and told all over again, once.
    again = _saved_and_restored(alg, tmp_path / "c", after, build)
    assert again._counter == 2 and results(again) == [0.5, 1.5]


def test_rays_generator_skips_a_trial_that_finished_after_the_snapshot(tmp_path):
    """Random search makes the same trials in the same order from its restored state: the one that
    finished after the snapshot is skipped, the next one is what the killed run would have run next."""
    from ray.tune.experiment import Experiment

    from orchestrator.run.tuner import build_tune_config
    from orchestrator.search.resumable import AfterSnapshot

    exp = validate({"name": "r", "family": "synthetic", "metric": {"name": "loss"}, "budget": {"trials": 4},
                    "searcher": {"name": "random", "seed": 0}})

    def build():
        alg, space = build_tune_config(exp)
        alg = alg.search_alg
        alg.add_configurations([Experiment("t", lambda config: None, config=space, num_samples=4)])
        return alg

    def take(alg):
        trial = alg.next_trial()
        alg.on_trial_complete(trial.trial_id)
        return trial

    first = build()
    ids = [take(first).trial_id]
    alg = _saved_and_restored(first, tmp_path / "snap", [], build)  # Tune's snapshot, after one trial
    later, following = take(alg), take(alg)  # the killed run went on: `later` finished after the snapshot
    after = [AfterSnapshot(later.trial_id, {"x1": later.config["x1"]}, {"loss": 1.0}, known=False)]
    resumed = _saved_and_restored(first, tmp_path / "snap", after, build)
    nxt = take(resumed)
    assert nxt.trial_id == following.trial_id and nxt.config == following.config and nxt.trial_id not in ids


@pytest.mark.slow
@pytest.mark.parametrize("searcher", ["random", "optuna-tpe"])
def test_a_finished_run_extended_with_a_new_budget_ends_at_exactly_it(ray_local, tmp_path, searcher, capsys):
    """`hpo resume RUN --set budget.trials=N`: the same folder, the searcher's state, the earlier trials
    unchanged, exactly N trials at the end, and the refit again; any other change is refused."""
    from orchestrator.cli import main
    from orchestrator.run.driver import run
    from orchestrator.run.resume import resume

    exp = validate({"name": "extend", "family": "synthetic", "metric": {"name": "loss"},
                    "space": {"iterations": 3}, "searcher": {"name": searcher, "seed": 0},
                    "budget": {"trials": 4, "concurrent": 2}})
    first = run(exp, tmp_path / "run", quiet=True)
    before = pd.read_parquet(first.run_dir / TRIALS).set_index("trial_id")["score"]
    assert len(before) == 4

    assert main(["resume", str(first.run_dir), "--set", "searcher.name=random"]) == 2
    assert "--set searcher.name: a resumed run takes a new budget only" in capsys.readouterr().err
    assert main(["resume", str(first.run_dir), "--set", "budget.trials=3"]) == 2  # fewer than ran
    assert main(["resume", str(first.run_dir)]) == 2  # finished: nothing to resume without a new budget

    resume(first.run_dir, quiet=True, overrides=["budget.trials=7"])
    trials = pd.read_parquet(first.run_dir / TRIALS).set_index("trial_id")
    meta = json.loads((first.run_dir / EXPERIMENT).read_text())
    assert len(trials) == 7 and (trials["status"] == "completed").all()
    assert all(trials.loc[t, "score"] == pytest.approx(s) for t, s in before.items())  # kept as they were
    assert meta["status"] == "finished" and meta["spec"]["budget"]["trials"] == 7
    assert meta["resumes"][-1]["budget"]["from"]["trials"] == 4 and meta["resumes"][-1]["budget"]["to"]["trials"] == 7
    if searcher == "random":  # Ray's generator went on with its sequence: no config twice
        assert not trials[["config.x1", "config.x2"]].duplicated().any()

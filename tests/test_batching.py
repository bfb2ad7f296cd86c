"""Report batching (orchestrator.trial.context): a built-in family's trial holds reports back for a short
window, and the Recorder replays every held iteration, so nothing is lost or renumbered."""

from __future__ import annotations

import pytest

from orchestrator import ray_api
from orchestrator.results.contract import HELD
from orchestrator.results.reader import load
from orchestrator.results.writer import Recorder
from orchestrator.run.driver import run
from orchestrator.search.schedulers import SCHEDULERS
from orchestrator.spec.load import validate
from orchestrator.trial import context as trial_mod


@pytest.fixture
def sent(monkeypatch):
    """What reached Tune: (metrics, checkpoint dir or None) per `tune.report`."""
    out: list[tuple[dict, object]] = []
    monkeypatch.setattr(ray_api, "report", lambda metrics, checkpoint_dir=None: out.append((dict(metrics), checkpoint_dir)))
    return out


def ctx(window: float, checkpoint_every: int = 0) -> trial_mod.TrialContext:
    return trial_mod.TrialContext(seed=0, cpus=1, gpus=0.0, checkpoint_every=checkpoint_every, report_every_s=window)


def test_without_a_window_every_report_goes_at_once(sent):
    t = ctx(0.0)
    for i in range(3):
        t.report({"loss": i})
    t.flush()
    assert [m for m, _ in sent] == [{"loss": 0}, {"loss": 1}, {"loss": 2}]


def test_the_first_report_goes_at_once_the_rest_wait_for_the_window_or_the_end(sent):
    t = ctx(3600.0)
    for i in range(1, 5):
        t.report({"loss": 10 - i})
    assert len(sent) == 1 and sent[0][0]["training_iteration"] == 1  # a missing metric shows at once
    t.flush()
    assert len(sent) == 2
    last = sent[1][0]
    assert last["loss"] == 6 and last["training_iteration"] == 4
    assert [r["iteration"] for r in last[HELD]] == [2, 3, 4]
    assert [r["metrics"]["loss"] for r in last[HELD]] == [8, 7, 6]
    t.flush()
    assert len(sent) == 2  # nothing held, nothing sent


def test_a_report_with_a_checkpoint_is_never_held(sent):
    t = ctx(3600.0, checkpoint_every=2)
    t.report({"loss": 1.0}, state={"i": 1})  # first: sent, no checkpoint due
    t.report({"loss": 0.5}, state={"i": 2})  # a checkpoint is due: sent with what it holds
    assert len(sent) == 2 and sent[1][1] is not None and sent[1][0]["training_iteration"] == 2


def test_reports_at_the_schedulers_decision_iterations_are_never_held(sent):
    t = trial_mod.TrialContext(seed=0, cpus=1, gpus=0.0, report_every_s=3600.0, on_time=frozenset({3, 5}))
    for i in range(1, 7):
        t.report({"loss": i})
    assert [m["training_iteration"] for m, _ in sent] == [1, 3, 5]


@pytest.mark.parametrize("grace, rf, max_t, brackets", [(1, 3, 100, 1), (2, 3, 20, 1), (1, 2, 27, 3), (5, 4, 200, 2)])
def test_asha_rungs_are_rays_own(grace, rf, max_t, brackets):
    from orchestrator.search.schedulers import ASHAOptions, asha_rungs, build_scheduler

    opts = ASHAOptions(max_t=max_t, grace_period=grace, reduction_factor=rf, brackets=brackets)
    ray_asha = build_scheduler(opts)
    theirs = {int(m) for b in ray_asha._brackets for m, _ in b._rungs}  # Ray's private view, test only
    assert asha_rungs(opts) == theirs


def test_the_recorder_replays_a_batched_result(tmp_path):
    rec = Recorder(tmp_path, "loss", "min")
    rec.start("a", {"x": 1})
    rec.result("a", {"x": 1}, {"loss": 5.0, "training_iteration": 1, "time_total_s": 0.1, "timestamp": 100})
    held = [{"iteration": i, "at": 100.0 + i, "metrics": {"loss": 5.0 - i}} for i in (2, 3, 4)]
    rec.result("a", {"x": 1}, {"loss": 1.0, "training_iteration": 4, "time_total_s": 4.0, "timestamp": 104,
                               HELD: held})
    rec.complete("a")
    rec.close()
    trials, history = load(tmp_path)
    assert list(history["iteration"]) == [1, 2, 3, 4]
    assert list(history["metric.loss"]) == [5.0, 3.0, 2.0, 1.0]
    assert history["time_total_s"].tolist() == pytest.approx([0.1, 2.0, 3.0, 4.0])
    assert HELD not in "".join(history.columns)
    assert trials.loc[0, "iterations"] == 4 and trials.loc[0, "score"] == 1.0 and trials.loc[0, "score_iteration"] == 4


def test_only_schedulers_that_can_decide_late_let_trials_batch():
    late = {name for name, entry in SCHEDULERS.items() if entry.report_window_s > 0}
    # Pausing (HyperBand) and cloning (PBT) schedulers need each report when it happens.
    assert late == {"fifo", "asha", "median-stopping"}


@pytest.mark.parametrize("scheduler", ["fifo", "asha"])
def test_batched_runs_keep_every_iteration_once_and_asha_still_stops(ray_local, tmp_path, scheduler):
    raw = {"name": "batch", "family": "synthetic", "metric": {"name": "loss"},
           "space": {"iterations": 9, "sleep_s": 0.02}, "searcher": {"name": "random", "seed": 3},
           "scheduler": {"name": scheduler, **({"max_t": 9, "grace_period": 1} if scheduler == "asha" else {})},
           "budget": {"trials": 8, "concurrent": 2}}
    trials, history = load(run(validate(raw), tmp_path / "run", quiet=True).run_dir)
    assert not history.duplicated(["trial_id", "iteration"]).any()
    per_trial = history.groupby("trial_id")["iteration"].apply(list)
    assert all(its == list(range(1, len(its) + 1)) for its in per_trial)
    assert trials.set_index("trial_id")["iterations"].to_dict() == per_trial.map(len).to_dict()
    if scheduler == "fifo":
        assert (per_trial.map(len) == 9).all() and (trials["status"] == "completed").all()
    else:
        assert (trials["status"] == "stopped").any() and (per_trial.map(len) < 9).any()


def test_a_checkpoint_carries_its_schedule_and_a_restore_under_another_config_extends_it(monkeypatch, tmp_path):
    """PBT: a trial restores another's checkpoint and goes on with a perturbed config. (Tune's report
    and checkpoint calls exist only inside a trial, so they are replaced by a folder per checkpoint.)"""
    import contextlib
    import shutil

    from orchestrator.results.contract import SCHEDULE

    saved, sent = [], []

    def report(metrics, checkpoint_dir=None):
        sent.append(dict(metrics))
        if checkpoint_dir:
            saved.append(shutil.copytree(checkpoint_dir, tmp_path / f"checkpoint_{len(saved)}"))

    monkeypatch.setattr(ray_api, "report", report)
    first = trial_mod.TrialContext(seed=0, cpus=1, gpus=0.0, checkpoint_every=2, config={"lr": 0.1})
    for i in range(1, 5):
        first.report({"loss": 1 / i}, state={"i": i})
    assert len(saved) == 2 and not any(SCHEDULE in m for m in sent)  # one config: nothing to tell

    monkeypatch.setattr(ray_api, "restored_dir", lambda: contextlib.nullcontext(saved[-1]))
    clone = trial_mod.TrialContext(seed=0, cpus=1, gpus=0.0, checkpoint_every=2, config={"lr": 0.2})
    assert clone.restore() == {"i": 4}
    clone.report({"loss": 0.1}, state={"i": 5})
    clone.report({"loss": 0.1}, state={"i": 6})
    expected = [{"from_iteration": 0, "config": {"lr": 0.1}}, {"from_iteration": 4, "config": {"lr": 0.2}}]
    assert sent[-1][SCHEDULE] == expected

    monkeypatch.setattr(ray_api, "restored_dir", lambda: contextlib.nullcontext(saved[-1]))
    again = trial_mod.TrialContext(seed=0, cpus=1, gpus=0.0, checkpoint_every=2, config={"lr": 0.2})
    assert again.restore() == {"i": 6} and again.schedule == expected  # same config (HyperBand, resume): no new step

"""Checkpoint pruning on plain folders; the Ray runs that rely on it are in test_strategies."""

from orchestrator.run.checkpoints import keep_only, prune_older


def _trial(tmp_path, name, indexes):
    trial = tmp_path / name
    for i in indexes:
        (trial / f"checkpoint_{i:06d}").mkdir(parents=True)
        (trial / f"checkpoint_{i:06d}" / "state.pkl").write_bytes(b"x")
    (trial / "result.json").parent.mkdir(exist_ok=True)
    (trial / "result.json").write_text("{}")
    return trial


def _left(trial):
    return sorted(p.name for p in trial.iterdir())


def test_prune_older_keeps_the_latest_and_any_newer_one_being_written(tmp_path):
    trial = _trial(tmp_path, "t0", [0, 1, 2, 3])
    assert prune_older(trial / "checkpoint_000002") == 2
    assert _left(trial) == ["checkpoint_000002", "checkpoint_000003", "result.json"]


def test_prune_older_ignores_what_is_not_a_checkpoint_folder(tmp_path):
    trial = _trial(tmp_path, "t0", [0, 1])
    assert prune_older(tmp_path / "elsewhere") == 0
    assert _left(trial) == ["checkpoint_000000", "checkpoint_000001", "result.json"]


def test_keep_only_keeps_latest_checkpoints_even_in_another_trials_folder(tmp_path):
    a, b = _trial(tmp_path, "a", [0, 1, 2]), _trial(tmp_path, "b", [0, 1])
    # b cloned a's checkpoint_000001 (PBT) and ended before saving its own.
    assert keep_only([a, b], {a / "checkpoint_000002", a / "checkpoint_000001"}) == 3
    assert _left(a) == ["checkpoint_000001", "checkpoint_000002", "result.json"]
    assert _left(b) == ["result.json"]


def test_a_superseded_checkpoint_waits_for_the_second_snapshot_copied_after_it(tmp_path):
    """Tune's newest snapshot names the checkpoint `hpo resume` continues a trial from: the older ones
    go only once a snapshot taken after the newer one exists (a kill in between must find it). A
    snapshot's file time is when Tune's background copy wrote it, after Tune took it, so the first copy
    newer than the supersession may still name the older checkpoint: the second one is waited for."""
    import os

    from orchestrator.run.checkpoints import Deferred, older

    tune = tmp_path / "tune"
    trial = tune / "t1"
    for i in range(3):
        (trial / f"checkpoint_{i:06d}").mkdir(parents=True)
    snapshot = tune / "experiment_state-2026-01-01_00-00-00.json"
    snapshot.write_text("{}")
    os.utime(snapshot, (1000, 1000))  # copied before checkpoint 2 superseded the others
    deferred = Deferred(tune)
    deferred.add(older(trial / "checkpoint_000002"), at=2000)
    assert deferred.prune() == 0 and len(list(trial.iterdir())) == 3
    os.utime(snapshot, (2000.5, 2000.5))  # copied just after: it may have been taken before
    assert deferred.prune() == 0 and len(list(trial.iterdir())) == 3
    assert deferred.prune() == 0  # the same snapshot seen again counts once
    os.utime(snapshot, (2011, 2011))  # Tune's next snapshot, taken after the last one was copied
    assert deferred.prune() == 2 and [p.name for p in trial.iterdir()] == ["checkpoint_000002"]
    assert not deferred.pending


def test_a_run_ended_by_ctrl_c_keeps_every_checkpoint_for_hpo_resume(tmp_path):
    """After Ctrl-C Tune snapshots the trials it cut off as running, then stops them (TERMINATED)
    before `on_experiment_end`: the statuses alone read as a finished run, and pruning there deleted a
    checkpoint the snapshot named (chaos.py, BOHB + HyperBand, seeds 1 and 3). The signal keeps them."""
    import signal
    from types import SimpleNamespace

    from orchestrator.run import signals
    from orchestrator.run.callbacks import CheckpointPruner

    trial = _trial(tmp_path / "tune", "t1", [0, 1, 2])
    local = SimpleNamespace(type_name="local")
    cut_off = SimpleNamespace(status="TERMINATED", path=str(trial),
                              checkpoint=SimpleNamespace(path=str(trial / "checkpoint_000002"), filesystem=local))
    pruner = CheckpointPruner(shared=False, tune_dir=tmp_path / "tune")
    signals._requested.append(signal.SIGINT)
    try:
        pruner.on_experiment_end([cut_off])
    finally:
        signals._requested.clear()
    assert _left(trial) == ["checkpoint_000000", "checkpoint_000001", "checkpoint_000002", "result.json"]
    pruner.on_experiment_end([cut_off])  # the session that finishes the run keeps only the latest
    assert _left(trial) == ["checkpoint_000002", "result.json"]

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

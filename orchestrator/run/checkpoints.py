"""Which trial checkpoints stay on disk while a run goes on, and after it.

Ray's `CheckpointConfig(num_to_keep=N)` cannot be used with the schedulers that need checkpoints.
A function trainable's `save()` hands back the checkpoint it last reported, so when a scheduler
pauses a trial (HyperBand) or clones one (PBT), the same directory is registered twice and later
deleted twice: a FileNotFoundError, and the trial's checkpoint bookkeeping stops half-way. Under PBT
it can also delete a checkpoint another trial is about to load, and that trial fails (seen in CI).

So Ray keeps every checkpoint and a Tune callback (orchestrator.run.callbacks) deletes, with the
functions here, those nothing can read any more: a trial's older checkpoints once it reported a
newer one, except under PBT/PB2, whose trials load each other's checkpoints, where only the latest
of each trial survives the end of a finished run (one a signal ended keeps them
all for `hpo resume`). (A PBT trial's latest may lie in the folder of the trial
it cloned; its own folder then keeps none.)

"Nothing can read any more" includes `hpo resume`: it restores Tune's newest experiment snapshot,
which names the checkpoint each trial continues from, and is taken every 10 s or more. Deleting a
trial's older checkpoints as soon as it reported a newer one left, after a kill, snapshots naming
checkpoints that were gone, and those trials errored on resume ("Could not recover from checkpoint
as it does not exist on storage anymore"; seen in benchmarks/chaos.py under HyperBand). So the older
ones wait (`Deferred`) until a snapshot taken after the newer one was registered exists.

A snapshot's file time is not when it was taken: Tune writes it to a staging folder and a background
thread copies it into the run's folder, so the first copy newer than the supersession may still hold
the older checkpoint. So they wait for the second: Tune takes that one at least its snapshot period
(10 s) after the first, long after the first was copied. (That margin is read from Tune's code; the
losses chaos.py measured under Ctrl-C came from the end-of-run pruning, which now keeps everything
when a signal ended the run: orchestrator.run.callbacks.CheckpointPruner.)
"""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

_CHECKPOINT_DIR = re.compile(r"checkpoint_(\d+)$")


def _index(path: Path) -> int | None:
    match = _CHECKPOINT_DIR.match(path.name)
    return int(match.group(1)) if match else None


def older(latest: str | Path) -> list[Path]:
    """The checkpoints beside `latest` with a lower index.

    Only lower indexes: the trial may already be writing its next checkpoint beside this one.
    """
    latest = Path(latest)
    newest = _index(latest)
    if newest is None or not latest.parent.is_dir():  # not a local Ray checkpoint directory
        return []
    return [p for p in latest.parent.iterdir() if (i := _index(p)) is not None and i < newest]


def prune_older(latest: str | Path) -> int:
    """Deletes the checkpoints beside `latest` with a lower index; returns how many."""
    return _delete(older(latest))


class Deferred:
    """Checkpoints to delete once Tune's newest experiment snapshot in `tune_dir` was taken after they
    were superseded (module docstring).

    Args:
        tune_dir: where Tune writes its `experiment_state-*.json` snapshots.
    """

    SNAPSHOTS = "experiment_state-*.json"

    def __init__(self, tune_dir: Path):
        self.tune_dir = Path(tune_dir)
        self.pending: list[tuple[float, list[Path]]] = []  # (when superseded, the checkpoints)
        self.seen: list[float] = []  # the file times of the last two snapshots seen, oldest first

    def add(self, checkpoints: list[Path], at: float | None = None) -> None:
        if checkpoints:
            self.pending.append((time.time() if at is None else at, checkpoints))

    def prune(self) -> int:
        """Deletes what the newest snapshot no longer names; returns how many checkpoints."""
        if not self.pending:
            return 0
        snapshot = self.snapshot_time()
        if snapshot is not None and (not self.seen or snapshot > self.seen[-1]):
            self.seen = [*self.seen[-1:], snapshot]
        # Due once a second snapshot was copied after the supersession (module docstring).
        copied_before = self.seen[-2] if len(self.seen) >= 2 else None
        due = [paths for at, paths in self.pending if copied_before is not None and at < copied_before]
        self.pending = [(at, paths) for at, paths in self.pending if copied_before is None or at >= copied_before]
        return _delete([p for paths in due for p in paths])

    def snapshot_time(self) -> float | None:
        times = [p.stat().st_mtime for p in self.tune_dir.glob(self.SNAPSHOTS)]
        return max(times, default=None)


def keep_only(trial_dirs: list[Path], latest: set[Path]) -> int:
    """Deletes every checkpoint in `trial_dirs` that is not in `latest`; returns how many."""
    found = [p for d in trial_dirs if d.is_dir() for p in d.iterdir() if _index(p) is not None]
    return _delete([p for p in found if p not in latest])


def _delete(checkpoints: list[Path]) -> int:
    for path in checkpoints:
        shutil.rmtree(path, ignore_errors=True)
    return len(checkpoints)

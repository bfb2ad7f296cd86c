"""TensorBoard: event files per trial under `RUN_DIR/tensorboard/<trial_id>/` (tensorboardX), one
scalar per metric per iteration, `global_step` = the iteration and `walltime` = the time it was
reported. `tensorboardX` is imported when the backend opens, on the tracking thread.
"""

from __future__ import annotations

from typing import Any

from orchestrator.tracking.backend import Backend, RunInfo

TENSORBOARD_DIR = "tensorboard"


class TensorboardBackend(Backend):
    name = "tensorboard"

    def __init__(self, options: bool, run: RunInfo):
        super().__init__(options, run)
        self.root = run.run_dir / TENSORBOARD_DIR
        self.writers: dict[str, Any] = {}

    def open(self) -> None:
        import tensorboardX  # noqa: F401 - fail at open, not at the first trial

    def trial_started(self, trial_id, config):
        from tensorboardX import SummaryWriter

        self.writers[trial_id] = SummaryWriter(str(self.root / trial_id))

    def iterations(self, trial_id, rows):
        writer = self.writers[trial_id]
        for it, at, values in rows:
            for k, v in values.items():
                writer.add_scalar(k, v, global_step=it, walltime=at)

    def trial_ended(self, trial_id, status, score, score_iteration, error):
        self.writers.pop(trial_id).close()

    def close(self, status, best):
        for writer in self.writers.values():
            writer.close()
        self.writers.clear()

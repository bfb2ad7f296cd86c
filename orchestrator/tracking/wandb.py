"""Weights & Biases: one run per trial, grouped by the run id, in `RUN_DIR/wandb/` (W&B makes the
folder itself from dir=RUN_DIR).

Offline by default (`mode: offline`: no account, no network; `wandb sync RUN_DIR/wandb/offline-run-*`
uploads later). The runs are made here, on the tracking thread; Ray's `WandbLoggerCallback` starts a
Ray actor per trial instead. A trial's run ends with exit code 1 when it errored or was interrupted
(failed in W&B), and `close` stops W&B's service process (`wandb.teardown()`) rather than leaving it
to interpreter exit. `wandb` is imported when the backend opens (this module's `import wandb` is
the real W&B: imports are absolute).
"""

from __future__ import annotations

from typing import Any

from orchestrator.tracking.backend import Backend, RunInfo, is_finite_number
from orchestrator.tracking.spec import WandbSpec

WANDB_DIR = "wandb"  # W&B makes RUN_DIR/wandb/ itself from dir=RUN_DIR


class WandbBackend(Backend):
    name = "wandb"

    def __init__(self, options: WandbSpec, run: RunInfo):
        super().__init__(options, run)
        self.spec, self.run_dir, self.run_id, self.name_ = options, run.run_dir, run.run_id, run.name
        self.runs: dict[str, Any] = {}

    def open(self) -> None:
        import wandb

        self.wandb = wandb

    def trial_started(self, trial_id, config):
        wandb = self.wandb
        # console="off": W&B would otherwise capture this process's stdout (our progress line) into
        # each run; silent: no banner per trial on the driver's console.
        self.runs[trial_id] = wandb.init(
            project=self.spec.project or self.name_, entity=self.spec.entity, group=self.run_id, name=trial_id,
            config=dict(config), dir=str(self.run_dir), mode=self.spec.mode, reinit="create_new",
            settings=wandb.Settings(silent=True, console="off"))

    def iterations(self, trial_id, rows):
        run = self.runs[trial_id]
        for it, _at, values in rows:
            run.log(values, step=it)

    def trial_ended(self, trial_id, status, score, score_iteration, error):
        run = self.runs.pop(trial_id)
        run.summary["hpo_status"] = status
        if is_finite_number(score):
            run.summary["score"] = score
        run.finish(exit_code=0 if status in ("completed", "stopped") else 1)  # errored, interrupted: failed in W&B

    def close(self, status, best):
        for run in self.runs.values():
            run.finish(exit_code=1)
        self.runs.clear()
        self.wandb.teardown()  # ends W&B's service process now, not at interpreter exit

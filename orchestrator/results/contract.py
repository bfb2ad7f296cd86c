"""The results contract: what a run folder holds, the version it is written in, and what a trial's
report carries from the worker to the writer. Writers and readers import these names from here.

A run folder's `trials.parquet`, `history.parquet` (or `history.parts/`) and `experiment.json`
together are the interface notebooks and other tools read (columns: docs/results.md). Each file
carries `SCHEMA_VERSION`: Parquet files in their key-value metadata under `SCHEMA_KEY`,
`experiment.json` as its `schema_version` key, so a reader can refuse a contract it does not
know instead of misreading it. Raise the number when a column or key is renamed, removed or
changes meaning; adding a column or key keeps it.
"""

from __future__ import annotations

SCHEMA_VERSION = 2  # 2: history keeps every result (repeats of an iteration too), with attempt/restored_from
SCHEMA_KEY = "schema_version"  # the Parquet key-value metadata key, and experiment.json's key

# --- the files of a run folder ------------------------------------------------------------------
EXPERIMENT = "experiment.json"
TRIALS = "trials.parquet"
HISTORY = "history.parquet"
PARTS = "history.parts"  # numbered history flushes while a run is going on
OWNER = "owner.json"  # the claim on the folder: who runs it, and its heartbeat (results.rundir)
JOURNAL = "optuna.journal"  # with `dashboard: true`: the live Optuna journal (orchestrator.tracking.journal)
RESULT_FILES = (TRIALS, HISTORY, EXPERIMENT, JOURNAL)
MODEL_DIR = "model"  # the run's refitted model and its card (orchestrator.model); docs/model.md
MODELS_DIR = "models"  # models/<trial id>/: a chosen trial's, from `hpo refit RUN_DIR --trial ID`
CARD = "model.json"  # the card in a model folder; `checkpoint` in it may link a user trainable's checkpoint

# --- a trial's status in trials.parquet -----------------------------------------------------------
STATUSES = {
    "completed": "ran to its end (its last iteration, or it ended itself)",
    "stopped": "stopped early by the scheduler (ASHA, HyperBand, ...) or at the end of the time budget",
    "errored": "raised an exception",
    "interrupted": "cut off unfinished by Ctrl-C or SIGTERM",
    "running": "still running (a live or crashed run)",
    "pending": "created but not started",
}
ELIGIBLE = ("completed", "stopped")  # the statuses whose score can be the best

# --- what a report carries besides the trainable's own values (the batching wire format) ----------
# A batched result's earlier iterations: [{"iteration": n, "at": unix time, "metrics": {...}}, ...],
# the last of them being the result itself (orchestrator.trial.context holds reports back; the
# writer replays them).
HELD = "hpo_held"
# A trial's schedule, once its config changed mid-run (PBT): [{"from_iteration": n, "config": {...}}, ...],
# each config trained from the iteration after `from_iteration` (orchestrator.trial.context keeps it).
SCHEDULE = "hpo_schedule"
# Where a trial's state came from when it restored a checkpoint: "<trial id>@<iteration>" (PBT's exploit
# names the trial it cloned; a retry or a resume names the trial itself). Sent with each report after
# the restore (orchestrator.trial.context); history.parquet's `restored_from`.
RESTORED = "hpo_restored"

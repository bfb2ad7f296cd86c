"""The Ray Tune hooks of a run: results into the `Recorder`, the run's stopper, checkpoint pruning.

All are thin: the Recorder and its metric check (orchestrator.results.writer), the signal state
(orchestrator.run.signals) and the pruning rules (orchestrator.run.checkpoints) know nothing of Ray, so
they are tested without it; this module only translates Tune's events into their calls.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from ray.tune import Callback
from ray.tune.experiment import Trial
from ray.tune.stopper import Stopper

from orchestrator.cluster import nodes
from orchestrator.errors import RunError
from orchestrator.results.reports import metric_problem
from orchestrator.results.writer import Recorder
from orchestrator.run import signals
from orchestrator.run.checkpoints import Deferred, keep_only, older
from orchestrator.run.stopping import SearchStop
from orchestrator.trial import placement


class RunStopper(Stopper):
    """Sees every result before the scheduler and searcher do, and stops the run on a signal.

    - The metric check: Ray's own strict check (turned off by the runner) said only which
      metric was missing. This one says what the trial did report, and notices a trainable that
      returned without ever reporting when its first trial ends (Ray lets that pass).
    - A result with `done` set here was ended by the trial itself (the scheduler's stop sets
      `done` only after this call): such a trial `completed`, it was not stopped early.
    - `stop_all` ends the run after a signal that Tune's own interrupt did not take (orchestrator.run.signals),
      and when `search_stop` (budget.stop, budget.cpu_hours/gpu_hours: orchestrator.run.stopping)
      gives a reason: Tune then ends the search as at the end of its time budget. With
      `budget.in_flight: finish` it says so through `ends_search_only` instead, which Tune's loop
      asks first (orchestrator.ray_api.finish_in_flight_when_asked): no new trial, and the
      running ones end as they would have.

    Tune pickles its stopper into each experiment checkpoint, so this holds only small state:
    `search_stop`, which holds the running trials' records, is left out (`hpo resume` brings its own).
    """

    def __init__(self, metric: str, search_stop: SearchStop | None = None):
        self.metric = metric
        self.ended_itself: set[str] = set()
        self.search_stop = search_stop

    def __getstate__(self) -> dict:
        return {**self.__dict__, "search_stop": None}

    def __call__(self, trial_id, result):
        if problem := metric_problem(trial_id, self.metric, result):
            raise RunError(problem)
        if result.get("done"):
            self.ended_itself.add(trial_id)
        return False

    def stop_all(self):
        # A signal Tune's own interrupt took ends its loop with the trials resumable (run.signals).
        if signals.requested() is not None and not signals.handed_to_tune():
            return True
        return self.search_stop is not None and self.search_stop.reason() is not None and \
            not self.search_stop.finishing

    def ends_search_only(self) -> bool:
        """A rule ended the search and its running trials are to finish (`budget.in_flight: finish`)."""
        return self.search_stop is not None and self.search_stop.reason() is not None and self.search_stop.finishing

    def has_started(self, trial_id: str) -> bool:
        """Whether the trial ever started: one waiting to start when the search ended never does."""
        return self.search_stop is not None and trial_id in self.search_stop.started


class RecorderCallback(Callback):
    """Feeds `recorder`; `on_step` runs after each step of Tune's loop (the progress line).

    With `placement_key`, each trial's placement record (orchestrator.trial.placement) is read once,
    when the trial ends (and at the run's end for trials still running then), and the run's
    records are deleted when the run ends. One GCS read per trial: reading at results too cost 5%
    of the driver's time on 2,000 tiny trials.
    """

    # How often a step of Tune's loop looks for pending trials (`pending`): the look walks every trial
    # Tune has, so at each step it grew with the run (10,000 trials), for a note due after 60 s.
    PENDING_EVERY_S = 1.0

    def __init__(self, recorder: Recorder, on_step: Callable[[], None] | None = None,
                 placement_key: str | None = None, stopper: RunStopper | None = None,
                 on_note: Callable[[str], None] | None = None, pending: nodes.PendingWatch | None = None):
        self.recorder, self.on_step, self.placement_key = recorder, on_step, placement_key
        self.stopper = stopper  # knows which trials ended themselves
        self.on_note, self.pending = on_note, pending  # a line for the log; why trials wait
        self._looked = float("-inf")  # when a step last looked for pending trials

    def _place(self, trial_id: str) -> None:
        rec = self.recorder.trials.get(trial_id)
        if self.placement_key is None or rec is None:
            return
        if info := placement.read(self.placement_key, trial_id):
            self.recorder.placement(trial_id, info)

    def on_trial_start(self, iteration, trials, trial, **info):
        self.recorder.start(trial.trial_id, trial.config)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        # The config the result was produced with: PBT may already have changed trial.config.
        self.recorder.result(trial.trial_id, result.get("config") or trial.config, result)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._place(trial.trial_id)
        ended_itself = self.stopper is not None and trial.trial_id in self.stopper.ended_itself
        # HyperBand/BOHB stop a trial waiting at a rung (paused) with no result saying so: Tune calls
        # this while the trial is still PAUSED (or PENDING), which is the only sign of that stop. A
        # trial whose pause is still saving its state is RUNNING until the save ends (`is_saving`):
        # one stopped then, by another trial's result at the rung, waited too (once in a full suite).
        waiting = trial.status in (trial.PAUSED, trial.PENDING) or trial.is_saving
        self.recorder.complete(trial.trial_id, ended_itself=ended_itself, stopped_waiting=waiting)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._place(trial.trial_id)
        self.recorder.error(trial.trial_id, self._failure(trial))

    def on_trial_recover(self, iteration, trials, trial, **info):
        """Ray restarts a failed trial (budget.max_failures): say where it failed, and why."""
        self._place(trial.trial_id)
        text = self._failure(trial)
        self.recorder.retry(trial.trial_id, text)
        if self.on_note:
            short = text.split(". ")[0]  # Ray's message runs on for lines; the whole one is in trials.parquet
            self.on_note(f"trial {trial.trial_id} failed ({short}); retrying, {trial.num_failures} of "
                         f"budget.max_failures={trial.max_failures}")

    def _failure(self, trial) -> str:
        """The trial's error, led by the lost node when Ray says its node or worker died."""
        rec = self.recorder.trials.get(trial.trial_id)
        where = {"node_id": rec.node_id, "node_ip": rec.node_ip} if rec else None
        text = error_text(trial)
        lost = nodes.worker_lost(latest_exception(trial))
        return f"{nodes.lost_node(last_failure(trial), where)}: {text}" if lost else text

    def on_experiment_end(self, trials, **info):
        if self.placement_key is not None:
            for trial in trials:
                rec = self.recorder.trials.get(trial.trial_id)
                if rec is not None and rec.node_id is None:
                    self._place(trial.trial_id)
            placement.forget(self.placement_key)

    def on_step_end(self, iteration, trials, **info):
        self.recorder.maybe_flush()
        if self.pending and self.on_note and time.monotonic() - self._looked >= self.PENDING_EVERY_S:
            self._looked = time.monotonic()
            if note := self.pending.update(t.trial_id for t in trials if t.status == "PENDING"):
                self.on_note(note)
        if self.on_step:
            self.on_step()


def error_text(trial) -> str:
    """The last line of the trial's traceback (the exception), which Ray keeps in a file."""
    path = getattr(trial, "error_file", None) or ""
    try:
        text = Path(path).read_text().strip() if path else ""
    except OSError:
        text = ""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return lines[-1][:2000] if lines else "trial failed (no error text recorded)"


class RetryLostWorkersOnly(Callback):
    """Makes Ray retry a failed trial (budget.max_failures) only when its worker or node was lost.

    Ray 2.60 counts a trainable's own exception and a lost actor alike (`Trial.handle_error`) and
    retries both up to `FailureConfig.max_failures`; a trainable that raises on a config raises
    again, so each retry would only repeat the failure (a run of 3 always-raising trials took
    8.4 s with one retry, 4.2 s without). No option tells them apart, so each trial, when it
    starts, becomes a `_LostWorkerTrial`, whose `should_recover` (asked right after the failure
    is counted, before the retry) also requires a lost worker (orchestrator.cluster.nodes.worker_lost).
    `ray_api.PRIVATE_APIS` lists `Trial.should_recover`; tests/test_faults.py has the behaviour.
    """

    def on_trial_start(self, iteration, trials, trial, **info):
        if type(trial) is Trial:
            trial.__class__ = _LostWorkerTrial


class _LostWorkerTrial(Trial):
    """A Tune trial retried only after a lost worker (see RetryLostWorkersOnly). Tune's experiment
    snapshot stores it as a plain Trial; `hpo resume` swaps the class again at its start."""

    def should_recover(self):
        return nodes.worker_lost(latest_exception(self)) and super().should_recover()


def latest_exception(trial) -> BaseException | None:
    """The exception of the trial's latest failure, from the file Ray pickles it to on the driver
    (`Trial.get_pickled_error` reads the storage copy, which is not synced yet at this point)."""
    import ray.cloudpickle

    path = getattr(trial, "pickled_error_file", None)
    try:
        with open(path, "rb") as f:
            return ray.cloudpickle.load(f)
    except Exception:
        return None


def last_failure(trial) -> str:
    """The whole text of the trial's latest failure (Ray appends one section per failure)."""
    path = getattr(trial, "error_file", None) or ""
    try:
        text = Path(path).read_text() if path else ""
    except OSError:
        return ""
    return text.rsplit("Failure # ", 1)[-1]


class CheckpointPruner(Callback):
    """Deletes checkpoints nothing can read any more, `hpo resume` included (orchestrator.run.checkpoints).

    Args:
        shared: trials load each other's checkpoints (PBT), so nothing goes before the run ends.
        tune_dir: Tune's experiment folder, whose snapshots a superseded checkpoint waits for.
    """

    PRUNE_EVERY_S = 1.0  # how often a step looks for a newer snapshot (a few stat calls)

    def __init__(self, shared: bool, tune_dir: Path):
        self.shared = shared
        self.deferred = Deferred(tune_dir)
        self._looked = 0.0

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
        if not self.shared and (path := _local_path(checkpoint)):
            self.deferred.add(older(path))

    def on_step_end(self, iteration, trials, **info):
        if self.deferred.pending and time.monotonic() - self._looked >= self.PRUNE_EVERY_S:
            self._looked = time.monotonic()
            self.deferred.prune()

    def on_experiment_end(self, trials, **info):
        # Tune took its last snapshot, naming each trial's latest checkpoint, before this call. A run
        # that ends unfinished keeps them all: `hpo resume` restores its trials from that snapshot, and
        # deleting here lost checkpoints it needed (chaos.py, BOHB + HyperBand under Ctrl-C and SIGTERM);
        # the session that finishes the run prunes. After Ctrl-C the statuses cannot tell: Tune stops
        # the trials it cut off (TERMINATED) after its snapshot and before this call, so the signal does.
        if signals.requested() or any(t.status not in ("TERMINATED", "ERROR") for t in trials):
            return
        latest = {Path(p) for t in trials if (p := _local_path(t.checkpoint))}
        if latest:  # else the storage is not local, or no trial saved one
            keep_only([Path(t.path) for t in trials if t.path], latest)


def _local_path(checkpoint) -> str | None:
    return checkpoint.path if checkpoint is not None and checkpoint.filesystem.type_name == "local" else None

"""The Recorder's listener that feeds every tracker (`Tracking`), and `open_tracking`, which builds it
for a run from the spec's `tracking:` section and the registry (orchestrator.tracking.spec.TRACKERS).

Why the trackers are fed this way, and not by Ray's own logger callbacks:

- **Fed by the Recorder, not by Tune.** The `Recorder` (orchestrator.results.writer) tells its listeners
  of every trial start, every history row and every trial end, so the trackers see exactly what
  history.parquet holds: one point per iteration, each with its own number and time, also when a
  built-in family batched several iterations into one Tune result (orchestrator.trial.context). Ray's own
  logger callbacks (`MLflowLoggerCallback`, `TBXLoggerCallback`, `WandbLoggerCallback`) see one
  point per Tune result, so they would drop the held-back iterations, and they log Ray's own keys
  (`time_this_iter_s`, ...) as metrics.
- **On a thread of its own.** A listener call only puts an event on a queue (a few µs on the
  driver); one background thread does every tracker's I/O, batching what queued up meanwhile
  (one MLflow `log_batch` per trial per pass). Ray's callbacks write inside Tune's driver loop,
  and a trial's `tune.report` waits on that loop: Ray's MLflow callback makes one
  `log_metric` call, a database transaction with SQLite, per metric per result. Ray's W&B
  callback starts a Ray actor per trial.
- **Bounded at the end.** `close` waits for the queue to drain (`timeout_s`), then ends every
  run it opened; a tracker that fails is dropped with one warning and the run goes on (tracking
  never fails a search), and the thread is a daemon, so a hung tracker cannot hold the process.

Where each tracker's data goes is in its backend's module (`mlflow`, `tensorboard`, `wandb`);
by default inside the run folder.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from orchestrator.tracking.backend import Backend, RunInfo
from orchestrator.tracking.spec import TRACKERS, TrackingSpec

log = logging.getLogger(__name__)


class Tracking:
    """The Recorder's listener: queues events; one daemon thread feeds every backend.

    Args:
        backends: the trackers (see `open_tracking`).
        timeout_s: how long `close` waits for queued events before giving up on them.
    """

    def __init__(self, backends: list[Backend], timeout_s: float = 120.0):
        self.backends = list(backends)
        self.timeout_s = timeout_s
        self.events: queue.SimpleQueue = queue.SimpleQueue()
        self.busy_s: dict[str, float] = {b.name: 0.0 for b in self.backends}  # time in each tracker's calls
        self.iterations_logged = 0
        self.errors: dict[str, str] = {}
        self._open: set[str] = set()
        self._thread = threading.Thread(target=self._loop, name="hpo-tracking", daemon=True)
        self._thread.start()

    def __reduce__(self):
        # Tune pickles its callbacks (and so the Recorder and its listeners) into its experiment
        # snapshot; `hpo resume` replaces them, so the copy only has to unpickle, and does nothing.
        return _Detached, ()

    # -- listener: called on the driver, must stay cheap -------------------------------------------
    def trial_started(self, rec) -> None:
        self.events.put(("start", rec.trial_id, dict(rec.config)))

    def iteration(self, rec, iteration: int, timestamp: float, metrics: Mapping[str, float]) -> None:
        self.events.put(("row", rec.trial_id, (iteration, timestamp, dict(metrics))))

    def trial_ended(self, rec) -> None:
        self.events.put(("end", rec.trial_id, (rec.status, rec.score, rec.score_iteration, rec.error)))

    def model_saved(self, folder: Path) -> None:
        """The run's saved model folder, for the trackers that log artifacts (before `close`)."""
        self.events.put(("model", None, Path(folder)))

    def close(self, status: str, best: Mapping[str, Any] | None) -> list[str]:
        """Ends every run; returns one line per tracker that failed or timed out (also logged)."""
        t0 = time.perf_counter()
        self.events.put(("close", None, (status, dict(best) if best else None)))
        self._thread.join(self.timeout_s)
        self.close_s = time.perf_counter() - t0
        if self._thread.is_alive():
            self._fail("all", f"still writing after {self.timeout_s:g} s; the rest is not tracked")
        return [f"tracking: {name}: {why}" for name, why in self.errors.items()]

    def stats(self) -> dict[str, Any]:
        """For experiment.json: iterations logged, each tracker's busy seconds (on the tracking
        thread), how long the run's end waited for the thread, and what failed."""
        return {"iterations": self.iterations_logged, "busy_s": {k: round(v, 3) for k, v in self.busy_s.items()},
                "close_s": round(getattr(self, "close_s", 0.0), 3), "errors": dict(self.errors)}

    # -- the thread --------------------------------------------------------------------------------
    def _loop(self) -> None:
        self._call("open")
        while True:
            batch = [self.events.get()]
            while True:  # everything that queued up meanwhile, handled as one pass
                try:
                    batch.append(self.events.get_nowait())
                except queue.Empty:
                    break
            if self._handle(batch):
                return

    def _handle(self, batch: list[tuple[str, Any, Any]]) -> bool:
        rows: dict[str, list] = {}
        for kind, trial_id, payload in batch:
            if kind == "row":
                if trial_id in self._open:
                    rows.setdefault(trial_id, []).append(payload)
                continue
            if trial_id in rows:  # a start or end keeps its place after the rows before it
                self._rows(trial_id, rows.pop(trial_id))
            if kind == "start" and trial_id not in self._open:
                self._open.add(trial_id)
                self._call("trial_started", trial_id, payload)
            elif kind == "end" and trial_id in self._open:
                self._open.discard(trial_id)
                self._call("trial_ended", trial_id, *payload)
            elif kind == "model":
                self._call("model_saved", payload)
            elif kind == "close":
                for tid, pending in rows.items():
                    self._rows(tid, pending)
                self._call("close", *payload)
                return True
        for trial_id, pending in rows.items():
            self._rows(trial_id, pending)
        return False

    def _rows(self, trial_id: str, rows: list) -> None:
        self.iterations_logged += len(rows)
        self._call("iterations", trial_id, rows)

    def _call(self, method: str, *args) -> None:
        for backend in list(self.backends):
            t0 = time.perf_counter()
            try:
                getattr(backend, method)(*args)
            except Exception as exc:
                self.backends.remove(backend)
                self._fail(backend.name, f"{method} failed ({type(exc).__name__}: "
                                         f"{str(exc).splitlines()[0] if str(exc) else ''}); no more tracking there")
            finally:
                self.busy_s[backend.name] += time.perf_counter() - t0

    def _fail(self, name: str, why: str) -> None:
        self.errors[name] = why
        log.warning("tracking: %s: %s", name, why)


class _Detached:
    """What a pickled Tracking becomes: a listener that ignores every event."""

    def trial_started(self, rec) -> None: ...

    def iteration(self, rec, iteration, timestamp, metrics) -> None: ...

    def trial_ended(self, rec) -> None: ...


def open_tracking(spec: TrackingSpec, run_dir: Path, run_id: str, name: str, resolved: Mapping[str, Any],
                  metric: str) -> Tracking | None:
    """The run's Tracking, its backends opening on its thread (so Ray starts meanwhile); None if off.

    One backend per `TRACKERS` entry the spec turns on, in the registry's order, each built from
    its `tracking:` value; a backend module is imported here, its tracker's library only when it opens.
    """
    if not spec.enabled:
        return None
    run = RunInfo(Path(run_dir), run_id, name, resolved, metric)
    backends: list[Backend] = [tracker.load()(options, run) for tracker in TRACKERS.values()
                               if (options := getattr(spec, tracker.field))]
    return Tracking(backends)

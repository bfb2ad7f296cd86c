"""Experiment tracking from the spec's `tracking:` section: MLflow, TensorBoard, Weights & Biases.

Opt-in (no section, nothing is imported) and never on the hot path:

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

Where the data goes, by default inside the run folder (`run_dir`):
- MLflow: `sqlite:///RUN_DIR/mlflow.db` (MLflow 3's own default backend is SQLite; its file
  store `mlruns/` now raises unless `MLFLOW_ALLOW_FILE_STORE` is set), or `tracking_uri`. One
  parent run per experiment (params: the resolved spec; at the end the best score) and one child
  run per trial (params: its config; metrics per iteration with `step` = the iteration and the
  time it was reported; status FINISHED, FAILED or KILLED).
- TensorBoard: `RUN_DIR/tensorboard/<trial_id>/` event files (tensorboardX), one scalar per
  metric per iteration.
- W&B: `RUN_DIR/wandb/offline-run-*` in offline mode (the default: no account, no network),
  one run per trial, grouped by the run id; `wandb sync` uploads them later.

Secrets: nothing here reads or writes an API key or token. W&B and MLflow take theirs from their
own environment variables or files, which are never logged; a `tracking_uri` carrying a
credential is refused at validation (it would be written to experiment.json).
"""

from __future__ import annotations

import logging
import math
import queue
import re
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qsl, urlsplit

from pydantic import Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from orchestrator.base import SECRET_INPUT, StrictModel

log = logging.getLogger(__name__)

MLFLOW_DB = "mlflow.db"
TENSORBOARD_DIR = "tensorboard"
WANDB_DIR = "wandb"  # W&B makes RUN_DIR/wandb/ itself from dir=RUN_DIR


# Query keys that name a credential (`?token=`, `?api_key=`, `?sig=`...): refused in a tracking URI.
_SECRET_KEY = re.compile(r"token|key|secret|passw|auth|sig|cred", re.IGNORECASE)


class MlflowSpec(StrictModel):
    tracking_uri: str | None = Field(None, description="default: sqlite:///RUN_DIR/mlflow.db")
    experiment_name: str | None = Field(None, description="default: the spec's name")

    @field_validator("tracking_uri")
    @classmethod
    def _no_secret(cls, uri):
        """A URI is written to experiment.json and the logs: it must not carry a credential."""
        if uri is None:
            return uri
        parts = urlsplit(uri)
        secret_keys = [k for k, _ in parse_qsl(parts.query) if _SECRET_KEY.search(k)]
        if parts.username or parts.password or secret_keys:
            what = "user info before '@'" if parts.username or parts.password else f"query key {secret_keys[0]!r}"
            raise PydanticCustomError(SECRET_INPUT, f"carries a credential ({what}), which would be written "
                                      f"to experiment.json; give it in MLFLOW_TRACKING_USERNAME/"
                                      f"MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) instead")
        return uri


class WandbSpec(StrictModel):
    project: str | None = Field(None, description="default: the spec's name")
    entity: str | None = None
    mode: Literal["offline", "online"] = Field("offline", description="offline: no account, no network; "
                                               "`wandb sync RUN_DIR/wandb/offline-run-*` uploads later")


class TrackingSpec(StrictModel):
    """`tracking:`; `mlflow: true` and `wandb: true` mean their defaults."""

    mlflow: MlflowSpec | None = None
    tensorboard: bool = False
    wandb: WandbSpec | None = None

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data):
        if isinstance(data, dict):
            data = dict(data)
            for key in ("mlflow", "wandb"):
                if data.get(key) is True:
                    data[key] = {}
                elif data.get(key) is False:
                    data[key] = None
        return data

    @property
    def enabled(self) -> bool:
        return bool(self.mlflow or self.tensorboard or self.wandb)


# -- what each tracker is told ---------------------------------------------------------------------

def _end_state(status: str) -> str:
    """A trial's or run's status (results.STATUSES, experiment.json) as MLflow's run status."""
    return {"errored": "FAILED", "failed": "FAILED", "interrupted": "KILLED"}.get(status, "FINISHED")


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def flat_params(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested spec sections as dotted keys; a list or a space entry stays one value."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v and not key.startswith("space."):
            out.update(flat_params(v, f"{key}."))
        else:
            out[key] = v
    return out


class Backend:
    """One tracker. Every method runs on the tracking thread, in event order."""

    name = "tracker"

    def open(self) -> None: ...

    def trial_started(self, trial_id: str, config: dict[str, Any]) -> None: ...

    def iterations(self, trial_id: str, rows: list[tuple[int, float, dict[str, float]]]) -> None:
        """rows: (iteration, unix time it was reported, metrics), in order."""

    def trial_ended(self, trial_id: str, status: str, score: float | None, score_iteration: int | None,
                    error: str | None) -> None: ...

    def close(self, status: str, best: Mapping[str, Any] | None) -> None: ...


class MlflowBackend(Backend):
    name = "mlflow"
    MAX_METRICS, MAX_PARAMS, MAX_VALUE = 1000, 100, 6000  # MLflow's log_batch limits

    def __init__(self, spec: MlflowSpec, run_dir: Path, run_id: str, name: str, params: Mapping[str, Any],
                 metric: str):
        self.spec, self.run_dir, self.run_id, self.name_, self.metric = spec, run_dir, run_id, name, metric
        self.params = params
        self.runs: dict[str, str] = {}
        self.uri = spec.tracking_uri or f"sqlite:///{(run_dir / MLFLOW_DB).resolve()}"

    def open(self) -> None:
        from mlflow.tracking import MlflowClient

        logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)  # "Creating initial tables"
        logging.getLogger("alembic").setLevel(logging.WARNING)
        self.client = MlflowClient(tracking_uri=self.uri)
        name = self.spec.experiment_name or self.name_
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            self.experiment_id = found.experiment_id
        else:
            # In our own store, artifacts would otherwise default to ./mlruns under the working directory.
            where = None if self.spec.tracking_uri else (self.run_dir / "mlartifacts").resolve().as_uri()
            self.experiment_id = self.client.create_experiment(name, artifact_location=where)
        self._end_crashed()
        self.parent = self.client.create_run(self.experiment_id, run_name=self.run_id,
                                             tags={"hpo.run_id": self.run_id, "hpo.run_dir": str(self.run_dir)}
                                             ).info.run_id
        self._params(self.parent, self.params)

    def _end_crashed(self) -> None:
        """`hpo resume` of a killed run: the runs it left RUNNING (its parent, its trials then running)
        are ended KILLED; the resumed stretch gets a parent run of its own, with the same name."""
        left = self.client.search_runs([self.experiment_id], f"tags.`hpo.run_id` = '{self.run_id}' "
                                                            f"and attributes.status = 'RUNNING'")
        for run in left:
            self.client.set_tag(run.info.run_id, "hpo.status", "interrupted")
            self.client.set_terminated(run.info.run_id, "KILLED")

    def _params(self, run_id: str, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(str(k)[:250], str(v)[:self.MAX_VALUE]) for k, v in params.items()]
        for i in range(0, len(items), self.MAX_PARAMS):
            self.client.log_batch(run_id, params=items[i:i + self.MAX_PARAMS])

    def trial_started(self, trial_id, config):
        run = self.client.create_run(self.experiment_id, run_name=trial_id,
                                     tags={"mlflow.parentRunId": self.parent, "hpo.trial_id": trial_id,
                                           "hpo.run_id": self.run_id})
        self.runs[trial_id] = run.info.run_id
        self._params(run.info.run_id, config)

    def iterations(self, trial_id, rows):
        from mlflow.entities import Metric

        metrics = [Metric(k, v, int(at * 1000), it) for it, at, values in rows for k, v in values.items()]
        for i in range(0, len(metrics), self.MAX_METRICS):
            self.client.log_batch(self.runs[trial_id], metrics=metrics[i:i + self.MAX_METRICS])

    def trial_ended(self, trial_id, status, score, score_iteration, error):
        run_id = self.runs.pop(trial_id)
        self.client.set_tag(run_id, "hpo.status", status)
        if error:
            self.client.set_tag(run_id, "hpo.error", error[:5000])
        if _finite(score):
            self.client.log_metric(run_id, f"best_{self.metric}", score, step=score_iteration or 0)
        self.client.set_terminated(run_id, _end_state(status))

    def close(self, status, best):
        for trial_id in list(self.runs):  # left open by a dropped event; should not happen
            self.client.set_terminated(self.runs.pop(trial_id), "KILLED")
        self.client.set_tag(self.parent, "hpo.status", status)
        if best is not None:
            self.client.set_tag(self.parent, "hpo.best_trial", best["trial_id"])
            if _finite(best.get("score")):
                self.client.log_metric(self.parent, f"best_{self.metric}", best["score"])
        self.client.set_terminated(self.parent, _end_state(status))


class TensorboardBackend(Backend):
    name = "tensorboard"

    def __init__(self, run_dir: Path):
        self.root = run_dir / TENSORBOARD_DIR
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


class WandbBackend(Backend):
    name = "wandb"

    def __init__(self, spec: WandbSpec, run_dir: Path, run_id: str, name: str):
        self.spec, self.run_dir, self.run_id, self.name_ = spec, run_dir, run_id, name
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
        if _finite(score):
            run.summary["score"] = score
        run.finish(exit_code=0 if status in ("completed", "stopped") else 1)  # errored, interrupted: failed in W&B

    def close(self, status, best):
        for run in self.runs.values():
            run.finish(exit_code=1)
        self.runs.clear()
        self.wandb.teardown()  # ends W&B's service process now, not at interpreter exit


# -- the thread ------------------------------------------------------------------------------------

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
    """The run's Tracking, its backends opening on its thread (so Ray starts meanwhile); None if off."""
    if not spec.enabled:
        return None
    run_dir = Path(run_dir)
    backends: list[Backend] = []
    if spec.mlflow:
        params = flat_params({k: v for k, v in resolved.items() if k != "tracking"})  # no URIs as params
        backends.append(MlflowBackend(spec.mlflow, run_dir, run_id, name, params, metric))
    if spec.tensorboard:
        backends.append(TensorboardBackend(run_dir))
    if spec.wandb:
        backends.append(WandbBackend(spec.wandb, run_dir, run_id, name))
    return Tracking(backends)

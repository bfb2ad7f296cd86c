"""Trial results -> Parquet, streamed by a Ray Tune callback; and `load()` for analysis.

Files in a run folder:
- `history.parquet`: one row per reported iteration: `trial_id`, `iteration`, `time_total_s`,
  `metric.<name>` for every numeric value reported, `config.<param>` as the trial ran it
  (PBT changes a trial's config mid-run, so config belongs to each row).
- `trials.parquet`: one row per trial: `trial_id`, `status` (completed | stopped | errored |
  running | pending), `iterations`, `score` (best value of the spec's metric) and
  `score_iteration`, `wall_s`, `started_at`, `ended_at`, `node_ip`, `error`,
  where it ran: `node_id`, `cpus`, `gpus` (Ray's grant; 0.5 for a half GPU) and `gpu_ids` (its
  CUDA_VISIBLE_DEVICES, e.g. "1"), recorded in the worker (see orchestrator.placement), so
  GPU-hours = sum(gpus * wall_s) / 3600,
  `config.<param>`, `metric.<name>` (last reported values).

History rows are flushed every few seconds to numbered part files under `history.parts/`, and
`trials.parquet` is rewritten at each flush, so a crash loses at most one flush interval. At the
end the parts are merged into `history.parquet` and removed. Ray's own per-trial JSON/CSV logger
files are not used.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import pandas as pd

from orchestrator.errors import RunError
from orchestrator.schema import SCHEMA_KEY, SCHEMA_VERSION

HISTORY = "history.parquet"
TRIALS = "trials.parquet"
PARTS = "history.parts"

# Keys Ray adds to every result: kept out of `metric.*` (the useful ones get their own column).
RAY_RESULT_KEYS = frozenset({
    "done", "trial_id", "date", "timestamp", "pid", "hostname", "node_ip", "config", "time_since_restore",
    "iterations_since_restore", "checkpoint_dir_name", "should_checkpoint", "experiment_tag",
    "time_this_iter_s", "time_total_s", "training_iteration", "episodes_total", "timesteps_total",
    "timesteps_since_restore", "experiment_id",
})


@dataclass
class TrialRecord:
    trial_id: str
    config: dict[str, Any]
    status: str = "pending"
    iterations: int = 0
    score: float | None = None
    score_iteration: int | None = None
    last: dict[str, float] = field(default_factory=dict)
    started_at: float | None = None
    ended_at: float | None = None
    node_ip: str | None = None
    node_id: str | None = None
    cpus: float | None = None
    gpus: float | None = None
    gpu_ids: str | None = None
    error: str | None = None
    stop_requested: bool = False  # the scheduler (or a stopper) ended it at its last result

    def row(self) -> dict[str, Any]:
        end = self.ended_at or time.time()
        return {
            "trial_id": self.trial_id,
            "status": self.status,
            "iterations": self.iterations,
            "score": self.score,
            "score_iteration": self.score_iteration,
            "wall_s": (end - self.started_at) if self.started_at else None,
            "started_at": _ts(self.started_at),
            "ended_at": _ts(self.ended_at),
            "node_ip": self.node_ip,
            "node_id": self.node_id,
            "cpus": self.cpus,
            "gpus": self.gpus,
            "gpu_ids": self.gpu_ids,
            "error": self.error,
            **{f"config.{k}": v for k, v in self.config.items()},
            **{f"metric.{k}": v for k, v in self.last.items()},
        }


def _ts(t: float | None):
    return pd.Timestamp(t, unit="s", tz="UTC") if t else None


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, f"{key}."))
        else:
            out[key] = v
    return out


def _numeric(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


class Recorder:
    """Keeps every trial's state and history; knows nothing of Ray (the callback feeds it).

    Args:
        run_dir: where the Parquet files go.
        metric, mode: the spec's target, to keep each trial's best score.
        max_t: iterations after which a scheduler's stop means "completed", not "stopped early".
        flush_every_s: how often buffered history goes to disk.
    """

    def __init__(self, run_dir: Path, metric: str, mode: str, max_t: int | None = None,
                 flush_every_s: float = 5.0, on_flush: Callable[["Recorder"], None] | None = None):
        self.run_dir = Path(run_dir)
        self.metric, self.mode, self.max_t = metric, mode, max_t
        self.flush_every_s = flush_every_s
        self.trials: dict[str, TrialRecord] = {}
        self._pending_rows: list[dict[str, Any]] = []
        self._parts = 0
        self._last_flush = time.monotonic()
        self.best: TrialRecord | None = None
        self.missing_metric: str | None = None  # set when a trial's first result lacks the metric
        self._on_flush = on_flush

    # -- events -------------------------------------------------------------------------------
    def start(self, trial_id: str, config: Mapping[str, Any]) -> None:
        rec = self.trials.setdefault(trial_id, TrialRecord(trial_id, flatten(config)))
        rec.status, rec.started_at, rec.ended_at = "running", rec.started_at or time.time(), None

    def result(self, trial_id: str, config: Mapping[str, Any], result: Mapping[str, Any]) -> None:
        rec = self.trials.get(trial_id) or self.trials.setdefault(trial_id, TrialRecord(trial_id, flatten(config)))
        if rec.started_at is None:
            rec.started_at, rec.status = time.time(), "running"
        rec.config = flatten(config)
        metrics = {k: float(v) for k, v in flatten({k: v for k, v in result.items() if k not in RAY_RESULT_KEYS}).items()
                   if _numeric(v)}
        if self.metric not in metrics and rec.iterations == 0 and self.missing_metric is None:
            self.missing_metric = (f"trial {trial_id} reported {sorted(metrics) or 'no numeric values'} but not the "
                                   f"spec's metric {self.metric!r}; change metric.name or report it")
        iteration = int(result.get("training_iteration", rec.iterations + 1))
        rec.iterations = iteration
        rec.last = metrics
        rec.node_ip = result.get("node_ip", rec.node_ip)
        rec.stop_requested = bool(result.get("done"))
        value = metrics.get(self.metric)
        if value is not None and not math.isnan(value) and (rec.score is None or self._better(value, rec.score)):
            rec.score, rec.score_iteration = value, iteration
            if self.best is None or self._better(value, self.best.score):
                self.best = rec
        self._pending_rows.append({
            "trial_id": trial_id,
            "iteration": iteration,
            "time_total_s": result.get("time_total_s"),
            "timestamp": _ts(result.get("timestamp") or time.time()),
            **{f"metric.{k}": v for k, v in metrics.items()},
            **{f"config.{k}": v for k, v in rec.config.items()},
        })

    def placement(self, trial_id: str, info: Mapping[str, Any]) -> None:
        """Where the trial runs (node, CPUs, GPUs, GPU ids), as its worker recorded it."""
        rec = self.trials.get(trial_id)
        if rec is None:
            return
        rec.node_ip = rec.node_ip or info.get("node_ip")
        rec.node_id, rec.cpus, rec.gpus, rec.gpu_ids = (info.get("node_id"), info.get("cpus"), info.get("gpus"),
                                                        info.get("gpu_ids"))

    def complete(self, trial_id: str) -> None:
        rec = self.trials[trial_id]
        early = rec.stop_requested and (self.max_t is None or rec.iterations < self.max_t)
        rec.status, rec.ended_at = ("stopped" if early else "completed"), time.time()

    def error(self, trial_id: str, message: str) -> None:
        rec = self.trials[trial_id]
        rec.status, rec.ended_at, rec.error = "errored", time.time(), message

    def _better(self, a: float, b: float) -> bool:
        return a < b if self.mode == "min" else a > b

    # -- summaries ----------------------------------------------------------------------------
    def counts(self) -> dict[str, int]:
        out = {s: 0 for s in ("completed", "stopped", "errored", "running", "pending")}
        for rec in self.trials.values():
            out[rec.status] = out.get(rec.status, 0) + 1
        return out

    # -- disk ---------------------------------------------------------------------------------
    def maybe_flush(self) -> None:
        if time.monotonic() - self._last_flush >= self.flush_every_s:
            self.flush()

    def flush(self) -> None:
        """Appends buffered history as one part file and rewrites trials.parquet (atomically)."""
        self._last_flush = time.monotonic()
        if self._pending_rows:
            parts = self.run_dir / PARTS
            parts.mkdir(parents=True, exist_ok=True)
            self._parts += 1
            _write(frame(self._pending_rows), parts / f"part-{self._parts:05d}.parquet")
            self._pending_rows = []
        if self.trials:
            _write(frame([r.row() for r in self.trials.values()]), self.run_dir / TRIALS)
        if self._on_flush:
            self._on_flush(self)

    def close(self) -> None:
        """Final flush, then merges the history parts into history.parquet and removes them."""
        for rec in self.trials.values():
            if rec.status in ("running", "pending"):  # cut off by the time budget or an interrupt
                rec.status, rec.ended_at = "stopped", rec.ended_at or time.time()
        self.flush()
        parts = sorted((self.run_dir / PARTS).glob("part-*.parquet"))
        history = _merge(parts)
        _write(history, self.run_dir / HISTORY)
        for p in parts:
            p.unlink()
        if (self.run_dir / PARTS).exists():
            (self.run_dir / PARTS).rmdir()
        if not self.trials:
            _write(frame([]), self.run_dir / TRIALS)


def frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    return tidy(pd.DataFrame(rows))


def tidy(df: pd.DataFrame) -> pd.DataFrame:
    """A frame Parquet can store: a column mixing types (a choice of 0.5 and 'sqrt') becomes text.

    Applied to each part file and again after merging them, since one part may hold only the
    floats of such a column and another only its strings.
    """
    for col in df.columns:
        if df[col].dtype == object:
            kinds = {type(v) for v in df[col].dropna()}
            if len(kinds) > 1 and not kinds <= {int, float}:
                df[col] = df[col].map(lambda v: None if v is None or (isinstance(v, float) and math.isnan(v)) else str(v))
    return df


def _write(df: pd.DataFrame, path: Path) -> None:
    """Writes atomically, with the contract's version in the file's key-value metadata."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(df, preserve_index=False)
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), SCHEMA_KEY: str(SCHEMA_VERSION)})
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def _merge(parts: list[Path]) -> pd.DataFrame:
    return tidy(pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)) if parts else frame([])


def load(run_dir: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(trials, history) of a finished run, or of a crashed one from its flushed parts."""
    run_dir = Path(run_dir)
    trials = pd.read_parquet(run_dir / TRIALS)
    if (run_dir / HISTORY).exists():
        history = pd.read_parquet(run_dir / HISTORY)
    else:
        parts = sorted((run_dir / PARTS).glob("part-*.parquet"))
        history = _merge(parts)
    return trials, history


def tune_callback(recorder: Recorder, on_step: Callable[[], None] | None = None, placement_key: str | None = None):
    """A Ray Tune Callback feeding `recorder`; built here so Ray is imported only when running.

    With `placement_key`, each trial's placement record (orchestrator.placement) is read at its
    first result and again when it ends, and the run's records are deleted when the run ends.
    """
    from ray.tune import Callback

    def place(trial_id: str, again: bool = False) -> None:
        rec = recorder.trials.get(trial_id)
        if placement_key is None or rec is None or (rec.node_id is not None and not again):
            return
        from orchestrator import placement

        if info := placement.read(placement_key, trial_id):
            recorder.placement(trial_id, info)

    class RecorderCallback(Callback):
        def on_trial_start(self, iteration, trials, trial, **info):
            recorder.start(trial.trial_id, trial.config)

        def on_trial_result(self, iteration, trials, trial, result, **info):
            # The config the result was produced with: PBT may already have changed trial.config.
            recorder.result(trial.trial_id, result.get("config") or trial.config, result)
            place(trial.trial_id)
            if recorder.missing_metric:
                raise RunError(recorder.missing_metric)

        def on_trial_complete(self, iteration, trials, trial, **info):
            place(trial.trial_id, again=True)
            recorder.complete(trial.trial_id)

        def on_trial_error(self, iteration, trials, trial, **info):
            place(trial.trial_id, again=True)
            recorder.error(trial.trial_id, _error_text(trial))

        def on_experiment_end(self, trials, **info):
            if placement_key is not None:
                for trial in trials:
                    place(trial.trial_id)
                from orchestrator import placement

                placement.forget(placement_key)

        def on_step_end(self, iteration, trials, **info):
            recorder.maybe_flush()
            if on_step:
                on_step()

    return RecorderCallback()


def _error_text(trial) -> str:
    """The last line of the trial's traceback (the exception), which Ray keeps in a file."""
    path = getattr(trial, "error_file", None) or ""
    try:
        text = Path(path).read_text().strip() if path else ""
    except OSError:
        text = ""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return lines[-1][:2000] if lines else "trial failed (no error text recorded)"

"""The live Optuna journal (`dashboard: true`, or `hpo run --dashboard`): the run as an Optuna study,
written while it goes, in `RUN_DIR/optuna.journal`, for `hpo dashboard RUN_DIR` (optuna-dashboard).

What it writes, and why it agrees with `hpo export optuna`:

- **One builder.** Each trial is built by `orchestrator.analysis.optuna_study.trial` from the
  Recorder's own row for it (`TrialRecord.row()`, what trials.parquet holds): the function the export
  uses. A trial enters the journal as that function builds it from its latest row (RUNNING, with
  its parameters, their distributions from the spec's space, and what it reported so far); each
  later history row adds an intermediate value (the first metric); at the trial's end it is built
  again, now finished, and whatever differs is written (state and values, user attributes, a
  parameter PBT changed). So the study read from the journal
  and the one exported after the run have the same trials, states, parameters, values and
  intermediate values; tests/test_dashboard.py compares them after real runs.
- **Lineage.** A trial's intermediate values are its final lineage (orchestrator.analysis.runs.
  final_lineage): when an attempt starts from a checkpoint (`restored_from` = `<trial>@<k>`: a retry,
  `hpo resume`, PBT's exploit), the source's values up to k are written first. Optuna's journal is
  append-only and cannot take back a step: a trial restarted from iteration k that then stops before
  the step its earlier attempt reached keeps that step's old value in the journal (the export drops
  it). Stated in docs/dashboard.md.
- **Unfinished trials stay RUNNING** (Ctrl-C, SIGTERM, kill -9): `hpo resume` opens the same journal,
  finds each trial by its `hpo_trial_id` user attribute and goes on with the same Optuna trial, so
  no trial appears twice. Before it goes on, the journal is brought up to the run folder's record
  (what a kill cut off between the two: a trial the Parquet knows and the journal does not, an end
  the journal missed); a trial the journal already finished is never changed, and is listed in
  experiment.json (`dashboard.diverged`) if the record disagrees.
- **Never on the hot path.** As with the trackers (orchestrator.tracking.listener), a Recorder event
  only queues a small tuple on the driver; one daemon thread imports Optuna and writes every event.
  A journal write that fails (a full disk) stops the journal with one warning and a line in
  experiment.json (`dashboard.error`); the search goes on. `close` waits for the queue (bounded).
- **Readable after kill -9.** Optuna's journal is one JSON line per operation, appended; a reader skips
  an incomplete last line. Reopening for `hpo resume` first cuts such a line off, since the next
  append would otherwise glue onto it.
- **Passes.** The thread gathers what comes within half a second and writes it as one pass: a trial
  that started and ended in it enters the journal in one operation, built whole, and one still running
  enters it once with what it reported so far. Short trials (the 400 trials of 100 ms of
  `benchmarks/trial_overhead.py`) then cost about one write each instead of twenty (a start, ten
  intermediate values, eight user attributes and the end); the dashboard, which polls, sees a trial
  at most half a second later.
- **No fsync per line.** Optuna's `JournalFileBackend` fsyncs after every line: measured here, 156 µs
  of CPU per write (half of it kernel time) against 53 µs without, taken from cores that run trials,
  for one write per reported iteration; the whole-run benchmark showed it (+3.2% wall time on 4,000
  unbatched reports). `_backend` appends the same lines under Optuna's own lock with one `write` and
  no fsync, and the journal is fsynced once when it closes. A kill -9 loses nothing written (the page
  cache is the kernel's); a power cut may lose the last seconds, as it may for the Parquet files,
  which are not fsynced either.

A journal that holds another run's study is left alone (the run goes on without a live journal).
"""

from __future__ import annotations

import json
import logging
import math
import os
import queue
import threading
import time
from pathlib import Path
from typing import Any

from orchestrator.results.contract import JOURNAL

log = logging.getLogger(__name__)


class LiveJournal:
    """The Recorder's listener that writes the run's Optuna journal on its own thread.

    Args:
        path: the journal file (`RUN_DIR/optuna.journal`).
        meta: the run's experiment.json (its run id, name, spec, metrics).
        run_dir: the run folder (the study's `hpo_path`, and where a resumed run's history is read).
        known: `TrialRecord.row()` of every trial the Recorder already holds (a resumed run's), to
            bring a reopened journal up to the record before going on.
        timeout_s: how long `close` waits for queued events.
        pass_s: how long the thread gathers events before writing them (see "Passes" above).
    """

    def __init__(self, path: Path, meta: dict[str, Any], run_dir: Path, known: list[dict[str, Any]] | None = None,
                 timeout_s: float = 60.0, pass_s: float = 0.5):
        self.path, self.meta, self.run_dir = Path(path), meta, Path(run_dir)
        self.known = list(known or [])
        self.timeout_s = timeout_s
        self.metric = (meta.get("metric") or {}).get("name")
        self.events: queue.SimpleQueue = queue.SimpleQueue()
        self.error: str | None = None
        self.busy_s = 0.0
        self.written = 0  # journal operations
        self.skipped: list[str] = []  # trials whose config lies outside the space (not in the study)
        self.diverged: list[str] = []  # trials the journal had finished otherwise than the record says
        self._ids: dict[str, int] = {}  # hpo trial id -> Optuna's storage trial id
        self._lineage: dict[str, dict[int, float]] = {}  # each trial's intermediate values, as export takes them
        self._attempt: dict[str, int] = {}
        self._written: dict[str, dict[int, float]] = {}  # each trial's intermediate values in the journal
        self.pass_s = pass_s
        self._thread = threading.Thread(target=self._loop, name="hpo-journal", daemon=True)
        self._thread.start()

    def __reduce__(self):
        # Tune pickles its callbacks, the Recorder and its listeners with them, into its experiment
        # snapshot; `hpo resume` attaches a new journal, so the copy only has to unpickle.
        return _Detached, ()

    # -- listener: called on the driver, must stay cheap -------------------------------------------
    def trial_started(self, rec) -> None:
        self.events.put(("start", rec.trial_id, rec.row()))

    def iteration(self, rec, iteration: int, timestamp: float, metrics) -> None:
        self.events.put(("row", rec.trial_id, (iteration, metrics.get(self.metric), rec.attempts, rec.restored_from)))

    def trial_ended(self, rec) -> None:
        self.events.put(("end", rec.trial_id, rec.row()))

    def close(self) -> dict[str, Any]:
        """Writes what is queued (at most `timeout_s`); returns experiment.json's `dashboard` entry."""
        t0 = time.perf_counter()
        self.events.put(("close", None, None))
        self._thread.join(self.timeout_s)
        if self._thread.is_alive():
            self._fail(f"still writing after {self.timeout_s:g} s; the rest is not in the journal")
        return {"journal": self.path.name, "study": self.study_name, "trials": len(self._ids),
                "operations": self.written, "busy_s": round(self.busy_s, 3),
                "close_s": round(time.perf_counter() - t0, 3), "skipped": list(self.skipped),
                "diverged": list(self.diverged), "error": self.error}

    @property
    def study_name(self) -> str:
        from orchestrator.analysis.optuna_study import default_study_name

        return default_study_name(self.meta, self.run_dir)

    # -- the thread --------------------------------------------------------------------------------
    def _loop(self) -> None:
        opened = self._guard(self._open)
        closing = False
        while not closing:
            batch = [self.events.get()]
            deadline = time.monotonic() + self.pass_s
            while batch[-1][0] != "close":  # what comes within a pass is written together
                wait = deadline - time.monotonic()
                try:
                    batch.append(self.events.get(timeout=wait) if wait > 0 else self.events.get_nowait())
                except queue.Empty:
                    break
            closing = batch[-1][0] == "close"
            if opened and self.error is None:
                self._guard(self._pass, batch)
        if opened and self.error is None:
            self._guard(self._finish)

    def _pass(self, batch: list[tuple[str, Any, Any]]) -> None:
        """One pass: events in order; a trial that started in this pass enters the journal once, at
        its end if that came too, else at the end of the pass with what it reported so far."""
        fresh: dict[str, dict[str, Any]] = {}
        for kind, trial_id, payload in batch:
            if kind == "start":
                if trial_id not in self._ids and trial_id not in self.skipped:  # else a retry, resume, unpause
                    self._lineage.setdefault(trial_id, {})
                    fresh[trial_id] = payload
            elif kind == "row":
                self._row(trial_id, payload)
            elif kind == "end":
                fresh.pop(trial_id, None)
                self._settle(payload)
        for row in fresh.values():
            self._settle(row)

    def _guard(self, fn, *args) -> bool:
        t0 = time.perf_counter()
        try:
            fn(*args)
            return self.error is None
        except Exception as exc:
            text = str(exc).splitlines()[0] if str(exc) else ""
            self._fail(f"{fn.__name__.strip('_')} failed ({type(exc).__name__}: {text}); the journal stops here, "
                       f"the run goes on")
            return False
        finally:
            self.busy_s += time.perf_counter() - t0

    def _fail(self, why: str) -> None:
        self.error = why
        log.warning("dashboard journal %s: %s", self.path, why)

    def _open(self) -> None:
        from optuna.storages import JournalStorage

        from orchestrator.analysis import optuna_study

        self._os = optuna_study
        self.dists = optuna_study.distributions((self.meta.get("spec") or {}).get("space") or {})
        self.objs = optuna_study.objectives(self.meta)
        self.bounds = optuna_study.constraints(self.meta)
        if self.path.exists() and self.path.stat().st_size > 0:  # `hpo resume`: after a kill, perhaps
            _cut_incomplete_line(self.path)
            _drop_stale_lock(self.path)
        self.storage = JournalStorage(_backend(self.path))
        run_id = self.meta.get("run_id")
        others = [s.user_attrs.get("hpo_run") for s in self.storage.get_all_studies()
                  if s.user_attrs.get("hpo_run") != run_id]
        if others:
            self._fail(f"{self.path.name} holds the study of another run ({others[0]}); this run writes no "
                       f"live journal (move that file away to get one)")
            return
        try:
            self.study_id = self.storage.get_study_id_from_name(self.study_name)
        except KeyError:
            optuna_study.create_study(self.storage, self.study_name, self.meta, self.run_dir)
            self.study_id = self.storage.get_study_id_from_name(self.study_name)
        for t in self.storage.get_all_trials(self.study_id, deepcopy=False):
            if "hpo_trial_id" in t.user_attrs:
                tid = t.user_attrs["hpo_trial_id"]
                self._ids[tid] = self.storage.get_trial_id_from_study_id_trial_number(self.study_id, t.number)
                self._lineage[tid] = dict(t.intermediate_values)
                self._written[tid] = dict(t.intermediate_values)
        self.skipped = list(self.storage.get_study_user_attrs(self.study_id).get("hpo_skipped_trials") or [])
        if self.known:
            self._catch_up()

    def _catch_up(self) -> None:
        """A resumed run: brings the journal up to the run folder's record before events go on."""
        from orchestrator.results.reader import load

        try:
            history = load(self.run_dir)[1]
        except FileNotFoundError:  # no trial had reported anything
            history = None
        curves = self._os.curves(history, self.objs[0][0]) if history is not None and len(history) else {}
        for row in self.known:
            tid = row["trial_id"]
            self._lineage[tid] = curves.get(tid, self._lineage.get(tid, {}))
            self._attempt[tid] = int(row.get("attempts") or 1)
            self._settle(row)

    def _row(self, trial_id: str, payload: tuple) -> None:
        """A reported iteration: into the trial's lineage, and into the journal if the trial is there."""
        step, value, attempt, restored = payload
        lineage = self._lineage.setdefault(trial_id, {})
        changed = []
        if attempt != self._attempt.get(trial_id):  # this attempt's first row
            if trial_id in self._attempt or restored:
                base = {}
                if restored:
                    source, _, upto = str(restored).rpartition("@")
                    base = {s: v for s, v in self._lineage.get(source, {}).items() if s <= int(upto)}
                lineage = self._lineage[trial_id] = dict(base)
                changed += list(base)
            self._attempt[trial_id] = attempt
        if isinstance(value, (int, float)) and math.isfinite(value):
            lineage[int(step)] = float(value)
            changed.append(int(step))
        number, written = self._ids.get(trial_id), self._written.get(trial_id)
        if number is None or written is None:
            return
        for s in changed:
            if written.get(s) != lineage[s]:
                written[s] = lineage[s]
                self._op(self.storage.set_trial_intermediate_value, number, s, lineage[s])

    def _settle(self, row: dict[str, Any]) -> None:
        """Writes what differs between the journal's trial and the one the export would build from `row`."""
        tid = row["trial_id"]
        try:
            want = self._os.trial(row, self.dists, self._lineage.get(tid, {}), self.objs, self.bounds)
        except ValueError:  # outside the space: the export leaves it out too
            if tid not in self.skipped:
                self.skipped.append(tid)
            return
        number = self._ids.get(tid)
        if number is None:
            self._ids[tid] = self._op(self.storage.create_new_trial, self.study_id, want)
            self._written[tid] = dict(want.intermediate_values)
            return
        have = self.storage.get_trial(number)
        self._written[tid] = written = dict(have.intermediate_values)
        if have.state.is_finished():
            if (have.state, have.values) != (want.state, want.values) and tid not in self.diverged:
                self.diverged.append(tid)
            return
        for name, value in want.params.items():
            if have.params.get(name) != value:
                dist = want.distributions[name]
                self._op(self.storage.set_trial_param, number, name, dist.to_internal_repr(value), dist)
        for step, value in want.intermediate_values.items():
            if written.get(step) != value:
                written[step] = value
                self._op(self.storage.set_trial_intermediate_value, number, step, value)
        for key, value in want.user_attrs.items():
            if have.user_attrs.get(key) != value:
                self._op(self.storage.set_trial_user_attr, number, key, value)
        for key, value in want.system_attrs.items():  # the constraint values, before the state shows them
            if have.system_attrs.get(key) != value:
                self._op(self.storage.set_trial_system_attr, number, key, value)
        if want.state.is_finished():
            self._op(self.storage.set_trial_state_values, number, want.state, want.values)

    def _finish(self) -> None:
        if self.storage.get_study_user_attrs(self.study_id).get("hpo_skipped_trials") != self.skipped:
            self._op(self.storage.set_study_user_attr, self.study_id, "hpo_skipped_trials", self.skipped)
        fd = os.open(self.path, os.O_RDONLY)
        try:
            os.fsync(fd)  # once, at the end (see "No fsync per line" above)
        finally:
            os.close(fd)

    def _op(self, fn, *args):
        self.written += 1
        return fn(*args)


class _Detached:
    """What a pickled LiveJournal becomes: a listener that ignores every event."""

    def trial_started(self, rec) -> None: ...

    def iteration(self, rec, iteration, timestamp, metrics) -> None: ...

    def trial_ended(self, rec) -> None: ...


def _backend(path: Path):
    """Optuna's JournalFileBackend, appending each batch of lines with one `write` under Optuna's own
    lock, without its fsync per line (see the module docstring); reading is Optuna's."""
    from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock

    class Backend(JournalFileBackend):
        def __init__(self, file_path: str):
            self.hpo_path, self.hpo_lock = file_path, JournalFileSymlinkLock(file_path)
            super().__init__(file_path, lock_obj=self.hpo_lock)

        def append_logs(self, logs: list[dict[str, Any]]) -> None:
            text = "".join(json.dumps(log, separators=(",", ":")) + "\n" for log in logs).encode()
            self.hpo_lock.acquire()
            try:
                fd = os.open(self.hpo_path, os.O_WRONLY | os.O_APPEND)
                try:
                    while text:  # one write unless the kernel takes less (then the rest follows)
                        text = text[os.write(fd, text):]
                finally:
                    os.close(fd)
            finally:
                self.hpo_lock.release()

    return Backend(str(path))


def _cut_incomplete_line(path: Path) -> None:
    """Drops a last line without its newline (a writer killed mid-append), which no reader has taken."""
    with open(path, "rb+") as f:
        f.seek(0, 2)
        size = f.tell()
        f.seek(max(0, size - 1))
        if f.read(1) == b"\n":
            return
        f.seek(0)
        data = f.read()
        f.truncate(data.rfind(b"\n") + 1)


def _drop_stale_lock(path: Path, older_than_s: float = 10.0) -> None:
    """Optuna's lock (a symlink beside the file) left by a killed writer: the run folder is this run's
    alone (orchestrator.results.rundir), so an old one is stale; Optuna would wait 30 s to break it."""
    lock = path.with_name(path.name + ".lock")
    try:
        if time.time() - lock.lstat().st_mtime > older_than_s:
            lock.unlink()
    except FileNotFoundError:
        pass


def open_journal(run_dir: Path, meta: dict[str, Any], recorder) -> LiveJournal:
    """The run's live journal, `RUN_DIR/optuna.journal`, opening on its own thread; for a resumed run
    it first catches up with the trials the Recorder reopened (call after `begin`, before the fit)."""
    known = [rec.row() for rec in recorder.trials.values()]
    return LiveJournal(Path(run_dir) / JOURNAL, meta, Path(run_dir), known)

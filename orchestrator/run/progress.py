"""Progress while a run goes: trials done/running/stopped/errored, the best score so far, an ETA.

Two outputs, chosen by whether the stream is a terminal:

- A terminal gets a live bar drawn by rich (`rich.progress.Progress`): the counts, the best score,
  elapsed time and an ETA. rich redraws it from its own refresh thread, so the driver's loop only
  hands it new numbers, at most every `tty_every_s` (a few dict updates under rich's lock: measured
  in benchmarks/progress_overhead.py). The ETA is worked out at each redraw, so it counts down
  between trials.
- Anything else (CI, `hpo logs`, a job's log, a pipe) gets the plain line it always had, printed
  at most every `log_every_s` and only when something other than the clock changed, so logs stay
  short and tests can read them.

The ETA is whichever budget ends first: `budget.trials` at the rate trials have finished so far
(elapsed / finished x remaining), or what is left of `budget.time_s`. Before the first trial
ends, only the time budget can say anything. With `budget.cpu_hours` or `gpu_hours`, the line
also shows the hours spent and left, and once a rule has ended the search with `budget.in_flight:
finish`, which rule, while the running trials finish (orchestrator.run.stopping).
"""

from __future__ import annotations

import atexit
import sys
import time
from typing import TextIO

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, ProgressColumn, TextColumn
from rich.progress import Progress as RichProgress
from rich.table import Column
from rich.text import Text

from orchestrator.results.writer import Recorder
from orchestrator.run.stopping import SearchStop


def eta_s(elapsed: float, finished: int, total: int, time_s: float | None) -> float | None:
    """Seconds until the run ends: the sooner of the trial budget at the rate so far and the time
    budget; None when neither can tell yet (no trial finished and no time budget)."""
    ends = []
    if finished and total:
        ends.append(elapsed / finished * max(0, total - finished))
    if time_s:
        ends.append(max(0.0, time_s - elapsed))
    return min(ends) if ends else None


def clock(seconds: float | None) -> str:
    """0:42, 12:05, 1:02:03; '?' when unknown."""
    if seconds is None:
        return "?"
    s = int(round(seconds))
    h, rest = divmod(s, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


class Progress:
    """Fed from the Recorder; `tick()` is called after every step of Tune's loop, `finish()` once.

    Args:
        recorder: the run's Recorder (counts and best trial).
        total: the trial budget.
        stream: where to write (stdout by default); a terminal gets the live bar.
        tty_every_s, log_every_s: the least time between two updates on a terminal / in a log.
        time_s: the run's time budget, for the ETA.
        search_stop: the run's rules that end it early; their cost budgets' hours are shown, and
            that the search is over while its running trials finish.
    """

    def __init__(self, recorder: Recorder, total: int, stream: TextIO | None = None,
                 tty_every_s: float = 0.5, log_every_s: float = 10.0, time_s: float | None = None,
                 search_stop: SearchStop | None = None):
        self.recorder, self.total, self.time_s = recorder, total, time_s
        self.search_stop = search_stop
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty()
        self.every = tty_every_s if self.tty else log_every_s
        self.started = time.monotonic()
        self._last = 0.0
        self._printed = ""
        # Trials finished before this process (`hpo resume`) say nothing of this run's rate.
        self._finished = 0  # trials finished at the last update (read by the bar's redraws)
        self._front = (-1, 0)  # (trials finished, Pareto front size) at the last count
        self._base = self.counts()[1]
        self._bar: _LiveBar | None = None
        if self.tty:
            self._bar = _LiveBar(self)

    def __getstate__(self) -> dict:
        """Tune pickles its callbacks, this one's `tick` with them, into `tune/tuner.pkl` when the
        Tuner is built: the live bar (threads, locks) and a terminal stream cannot be pickled, and
        a copy never draws (`hpo resume` hands Tune new callbacks), so they are left out, and so is
        the SearchStop that only the live line reads."""
        return {**self.__dict__, "_bar": None, "stream": None, "tty": False, "search_stop": None}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.stream = sys.stdout

    def counts(self) -> tuple[dict[str, int], int]:
        """The Recorder's counts and the trials finished; the ETA goes by the latest of these."""
        c = self.recorder.counts()
        self._finished = c["completed"] + c["stopped"] + c["errored"]
        return c, self._finished

    def eta(self) -> float | None:
        return eta_s(time.monotonic() - self.started, self._finished - self._base, self.total - self._base,
                     self.time_s)

    def line(self) -> str:
        c, finished = self.counts()
        text = (f"[{time.monotonic() - self.started:6.1f}s] trials {finished}/{self.total} finished: "
                f"{c['completed']} completed, {c['stopped']} stopped early, {c['errored']} errored; "
                f"{c['running']} running")
        return text + self._best() + self._search_stop()

    def _search_stop(self) -> str:
        said = self.search_stop.progress() if self.search_stop is not None else ""
        return f" | {said}" if said else ""

    def _best(self) -> str:
        if len(self.recorder.objectives) > 1:  # several metrics: no single best (orchestrator.results.pareto)
            if self._front[0] != self._finished:  # the front moves only when a trial ends (orchestrator.results.pareto)
                self._front = (self._finished, len(self.recorder.pareto()))
            return f" | Pareto front: {self._front[1]} trials"
        best = self.recorder.best
        return "" if best is None else f" | best {self.recorder.metric}={best.score:.6g} ({best.trial_id})"

    def tick(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < self.every:
            return
        self._last = now
        if self._bar is not None:
            self._bar.update()
            return
        text = self.line()
        if text.partition("] ")[2] != self._printed.partition("] ")[2]:  # in a log, only what changed
            self.stream.write(text + "\n")
        self._printed = text
        self.stream.flush()

    def note(self, text: str) -> None:
        """A line of its own (a retried trial, trials waiting long): above the live bar on a
        terminal (rich prints it there), else a plain line in the log."""
        if self._bar is not None and not self._bar.stopped:
            self._bar.rich.console.print(text, markup=False, highlight=False, soft_wrap=True)
            return
        self.stream.write(text + "\n")
        self.stream.flush()

    def finish(self) -> None:
        """The last update; on a terminal the bar stays on screen, final. Safe to call twice."""
        self.tick(force=True)
        if self._bar is not None:
            self._bar.stop()
        self.stream.flush()


class _LiveBar:
    """rich's Progress with our own columns: the counts, the best score, elapsed and the ETA.

    rich redirects stdout/stderr through its console while the bar is live so that other output
    scrolls above it; stderr only when it is the same terminal, so `hpo run 2>err.log` keeps Ray's
    warnings out of the bar's stream.
    """

    def __init__(self, owner: Progress):
        self.owner = owner
        console = Console(file=owner.stream)
        self.rich = _TwoLines(
            TextColumn("trials"), BarColumn(), MofNCompleteColumn(), _ClockColumn(owner),
            console=console, redirect_stdout=owner.stream is sys.stdout,
            redirect_stderr=owner.stream is sys.stdout and sys.stderr.isatty())
        self.task = self.rich.add_task("", total=owner.total)
        self.stopping = self.stopped = False
        self.rich.start()
        # Whatever ends the process before finish(), the terminal gets its cursor back.
        atexit.register(self.stop)

    def update(self) -> None:
        if self.stopped:
            return
        c, finished = self.owner.counts()
        self.rich.status = (f"{c['completed']} completed, {c['stopped']} stopped early, {c['errored']} errored; "
                            f"{c['running']} running{self.owner._best()}{self.owner._search_stop()}")
        self.rich.update(self.task, completed=finished)

    def stop(self) -> None:
        if not self.stopped:
            self.stopping = True
            self.rich.refresh()
            self.rich.stop()
            self.stopped = True
            atexit.unregister(self.stop)


class _TwoLines(RichProgress):
    """The bar with its clock on one line, the counts and the best score on the next (one line
    would not fit 80 columns); on a narrow terminal the second line is cut short."""

    status = ""

    def get_renderables(self):
        yield self.make_tasks_table(self.tasks)
        yield Text(self.status, no_wrap=True, overflow="ellipsis")


class _ClockColumn(ProgressColumn):
    """Elapsed and ETA from the run's own clock and budgets (rich's TimeRemainingColumn guesses from
    its recent speed and knows nothing of budget.time_s); once the run is over, elapsed only."""

    def __init__(self, owner: Progress):
        super().__init__(table_column=Column(no_wrap=True))
        self.owner = owner

    def render(self, task) -> Text:
        owner = self.owner
        elapsed = f"{clock(time.monotonic() - owner.started)} elapsed"
        if owner._bar is not None and owner._bar.stopping:
            return Text(elapsed, style="cyan")
        return Text(f"{elapsed}, ETA {clock(owner.eta())}", style="cyan")

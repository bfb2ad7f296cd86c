"""The live progress line: trials done/running/stopped/errored and the best score so far.

On a terminal the line is redrawn in place; in a log (CI, `hpo logs`) a new line is printed at
most every `log_every_s` seconds, so logs stay short.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from orchestrator.results import Recorder


class Progress:
    def __init__(self, recorder: Recorder, total: int, stream: TextIO | None = None,
                 tty_every_s: float = 0.5, log_every_s: float = 10.0):
        self.recorder, self.total = recorder, total
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty()
        self.every = tty_every_s if self.tty else log_every_s
        self.started = time.monotonic()
        self._last = 0.0
        self._printed = ""

    def line(self) -> str:
        c = self.recorder.counts()
        finished = c["completed"] + c["stopped"] + c["errored"]
        text = (f"[{time.monotonic() - self.started:6.1f}s] trials {finished}/{self.total} finished: "
                f"{c['completed']} completed, {c['stopped']} stopped early, {c['errored']} errored; "
                f"{c['running']} running")
        best = self.recorder.best
        if best is not None:
            text += f" | best {self.recorder.metric}={best.score:.6g} ({best.trial_id})"
        return text

    def tick(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < self.every:
            return
        self._last = now
        text = self.line()
        if self.tty:
            self.stream.write("\r\033[K" + text)
        elif text.partition("] ")[2] != self._printed.partition("] ")[2]:  # in a log, only what changed
            self.stream.write(text + "\n")
        self._printed = text
        self.stream.flush()

    def note(self, text: str) -> None:
        """A line of its own (a retried trial, trials waiting long), kept above the progress line."""
        self.stream.write(("\r\033[K" if self.tty else "") + text + "\n")
        if self.tty and self._printed:
            self.stream.write(self._printed)
        self.stream.flush()

    def finish(self) -> None:
        self.tick(force=True)
        if self.tty:
            self.stream.write("\n")
        self.stream.flush()

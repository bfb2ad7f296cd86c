"""Error types, split by who has to act on them, each with the exit code the CLI gives it.

`SpecError` and `InputError` are the user's to fix and are raised before anything reaches Ray
(exit 2): a spec problem lists `path: message` lines; an input problem (the environment, a data
file, an output folder) is one line naming the thing and the fix. `RunError` is raised once Ray
is running (a trainable that never reports the metric, a failed experiment); partial results
have been flushed to disk by the time it propagates (exit 1).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class HpoError(Exception):
    """Base class for every error this package raises on purpose."""

    exit_code = 1


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a spec: where (a dotted YAML path) and what to do about it."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class SpecError(HpoError):
    """The experiment spec is invalid; nothing was submitted."""

    exit_code = 2

    def __init__(self, problems: list[Problem] | Problem | str, source: str | None = None):
        if isinstance(problems, str):
            problems = [Problem("", problems)]
        elif isinstance(problems, Problem):
            problems = [problems]
        self.problems = list(problems)
        self.source = source
        super().__init__(str(self))

    def __str__(self) -> str:
        head = f"invalid spec {self.source}" if self.source else "invalid spec"
        lines = "\n".join(f"  {p}" for p in self.problems)
        return f"{head}:\n{lines}"


class InputError(HpoError):
    """Input other than the spec is unusable (environment, files, folders); nothing was started."""

    exit_code = 2


class ModelError(InputError):
    """A saved model cannot be loaded or used as asked: a model file missing or damaged, a card
    (model.json) newer than this package reads, or data whose columns, types or labels do not fit
    the model. One line naming the file or column and the fix (exit 2), as for any input."""


class RunError(HpoError):
    """The experiment started but could not finish; results written so far are kept.

    `summary` is the run's RunSummary (orchestrator.run.summary) when the run got as far as Tune,
    so the CLI can still print its counts and best trial.
    """

    def __init__(self, message: str, summary: Any = None):
        super().__init__(message)
        self.summary = summary


class RunInterrupted(RunError):
    """A signal (Ctrl-C, SIGTERM) ended the run; its exit code is the shell's, 128 + the signal."""

    def __init__(self, message: str, signum: int, summary: Any = None):
        super().__init__(message, summary)
        self.signum = signum
        self.exit_code = 128 + signum


class ResultsError(HpoError):
    """A run folder cannot be read or analysed as asked (a wrong path, runs that do not compare,
    too few trials); the user's to fix, like a SpecError: the CLI prints it in one line, exit 2."""

    exit_code = 2

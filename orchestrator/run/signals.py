"""Ctrl-C and SIGTERM end a run as `interrupted`, never as `finished`.

What Ray Tune does: `fit()` installs its own SIGINT handler, which only sets an event that ends
Tune's loop; `fit()` then returns normally. Cut-off trials look like trials the scheduler stopped
early, and nothing tells the caller a signal arrived: `hpo run` exited 0 with `status: finished`
after Ctrl-C. And `ray.init` makes SIGTERM `sys.exit(15)`.

What we do instead, for the duration of a run (`handling_signals`, main thread only):
- Tune's SIGINT handler is turned off (`TUNE_DISABLE_SIGINT_HANDLER`) and ours records the signal,
  then hands it on to Tune's own interrupt (Tune listens for SIGUSR1 while its loop runs): Tune
  leaves its loop with the trials still running, snapshots the experiment one last time, and
  returns. That snapshot is what `hpo resume` continues from, the cut-off trials from their last
  checkpoint. (Stopping the trials instead, through the stopper, told Tune the search was over:
  a resume after Ctrl-C then ran nothing.) Before Tune's loop has started, the run's stopper
  (orchestrator.run.callbacks.RunStopper) stops it at its first step. A second Ctrl-C raises
  KeyboardInterrupt at once, for a user who will not wait.
- SIGTERM (`hpo stop`, a scheduler's kill) raises `Interrupted` at once: Ray's job supervisor
  sends SIGKILL 3 s after SIGTERM, too soon for Tune's own stop. Tune's last snapshot is then
  older than the run's Parquet, which `hpo resume` reconciles (orchestrator.run.resume).
The runner then records `status: interrupted`, marks cut-off trials `interrupted`, and the CLI
exits 128 + the signal number (130 for Ctrl-C, 143 for SIGTERM), as a shell does.
Tests: tests/test_faults.py::test_a_signal_ends_a_run_as_interrupted.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator

_requested: list[int] = []  # the signals received during the current run, in order
_handed_to_tune: list[int] = []  # the ones Tune's own interrupt received
TUNE_INTERRUPT = getattr(signal, "SIGUSR1", None)  # Tune's loop ends on it (ray.tune.tune._setup_signal_catching)


class Interrupted(BaseException):
    """A signal ended the run (a BaseException, so that no `except Exception` inside Ray eats it)."""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(signal.Signals(signum).name)


def requested() -> int | None:
    """The first signal received during the current run, or None."""
    return _requested[0] if _requested else None


def exit_code(signum: int) -> int:
    """What a shell reports for a process ended by `signum`: 128 + its number."""
    return 128 + signum


def handed_to_tune() -> bool:
    """Whether Tune's own interrupt got the signal; if not, the stopper stops Tune's loop."""
    return bool(_handed_to_tune)


def tune_loop_ended() -> None:
    """Tune's loop returned: its interrupt handler, still installed, would now set an event no loop
    reads, so a signal must reach the next loop (a nested search's) through the stopper instead."""
    if TUNE_INTERRUPT is not None and threading.current_thread() is threading.main_thread():
        signal.signal(TUNE_INTERRUPT, signal.SIG_IGN)


def _on_sigint(signum, frame) -> None:
    if signal.SIGINT in _requested:
        raise KeyboardInterrupt  # the second Ctrl-C: stop now, without waiting for trials to stop
    _requested.append(signum)
    if TUNE_INTERRUPT is not None and callable(signal.getsignal(TUNE_INTERRUPT)):
        _handed_to_tune.append(signum)
        signal.raise_signal(TUNE_INTERRUPT)  # handled after this handler returns


def _on_sigterm(signum, frame) -> None:
    _requested.append(signum)
    raise Interrupted(signum)


@contextlib.contextmanager
def handling_signals() -> Iterator[None]:
    """Installs our SIGINT/SIGTERM handlers for one run, and restores the previous ones after."""
    _requested.clear()
    _handed_to_tune.clear()
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread may set handlers; Tune's own then apply
        return
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"  # ours records the signal; Tune's would hide it
    ours = (signal.SIGINT, signal.SIGTERM, *([TUNE_INTERRUPT] if TUNE_INTERRUPT is not None else []))
    previous = {s: signal.getsignal(s) for s in ours}
    signal.signal(signal.SIGINT, _on_sigint)
    signal.signal(signal.SIGTERM, _on_sigterm)
    tune_loop_ended()  # a handler an earlier run's Tune left behind is not this run's
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)

"""Progress while a run goes and the table after it: a live rich bar with an ETA on a terminal (a
real pseudo-terminal here, read back through its master side), the plain lines unchanged in a log."""

from __future__ import annotations

import fcntl
import io
import os
import pty
import re
import struct
import sys
import termios
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

from orchestrator.results.writer import Recorder
from orchestrator.run import summary as summary_mod
from orchestrator.run.driver import run
from orchestrator.run.progress import Progress, clock, eta_s
from orchestrator.spec.load import load_spec
from tests.test_results import feed

PLAIN_LINE = re.compile(r"\[ *\d+\.\ds\] trials \d+/\d+ finished: \d+ completed, \d+ stopped early, \d+ errored; "
                        r"\d+ running( \| best \S+=\S+ \(\S+\))?")
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


@contextmanager
def terminal(columns: int = 120):
    """A pseudo-terminal: yields (the slave side as a text stream, a function returning what was
    written so far with the escape codes removed, and the raw text)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    stream = os.fdopen(slave, "w", buffering=1)
    chunks: list[bytes] = []

    def read() -> None:  # a pty blocks its writer once its buffer is full: drain it all along
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()

    def text() -> tuple[str, str]:
        stream.flush()
        time.sleep(0.2)  # let the reader catch up
        raw = b"".join(chunks).decode(errors="replace")
        return ANSI.sub("", raw), raw

    try:
        yield stream, text
    finally:
        stream.close()
        os.close(master)
        reader.join(timeout=5)


def test_eta_is_whichever_budget_ends_first():
    assert eta_s(10.0, 2, 10, None) == 40.0  # 5 s a trial, 8 to go
    assert eta_s(10.0, 2, 10, 30.0) == 20.0  # the time budget ends first
    assert eta_s(10.0, 0, 10, None) is None  # nothing to go by yet
    assert eta_s(10.0, 0, 10, 60.0) == 50.0
    assert eta_s(70.0, 2, 10, 60.0) == 0.0  # past the time budget: Tune is stopping the trials
    assert (clock(None), clock(42), clock(725), clock(3723)) == ("?", "0:42", "12:05", "1:02:03")


def test_in_a_log_the_lines_are_plain_and_as_before(tmp_path):
    rec = Recorder(tmp_path, "loss", "min")
    out = io.StringIO()
    progress = Progress(rec, total=3, stream=out, log_every_s=0.0, time_s=600)
    progress.tick()
    feed(rec, "a", {"x": 1}, [0.5, 0.25])
    rec.start("b", {"x": 2})
    progress.tick()
    progress.finish()  # nothing changed since: no new line
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and all(PLAIN_LINE.fullmatch(ln) for ln in lines), lines
    assert lines[1].endswith("trials 1/3 finished: 1 completed, 0 stopped early, 0 errored; 1 running"
                             " | best loss=0.25 (a)")
    assert "\x1b" not in out.getvalue() and "ETA" not in out.getvalue()


def test_on_a_terminal_a_live_bar_shows_counts_best_and_eta(tmp_path):
    rec = Recorder(tmp_path, "loss", "min")
    with terminal() as (stream, text):
        progress = Progress(rec, total=4, stream=stream, tty_every_s=0.0, time_s=3600)
        assert progress.tty
        first, _ = text()
        for i, score in enumerate([0.5, 0.3, 0.7]):
            feed(rec, f"t{i}", {"x": i}, [score])
            progress.tick()
            progress._bar.rich.refresh()  # as rich's own refresh thread does, without waiting for it
        progress.finish()
        progress.finish()  # twice is harmless
        plain, raw = text()
    # Before any trial ends only the time budget tells the ETA; then the trial rate does (< 1 h).
    assert re.search(r"0/4 0:0\d elapsed, ETA (59:\d\d|1:00:00)", first), first
    assert re.search(r"3/4 0:0\d elapsed, ETA 0:0\d", plain), plain
    assert "━" in plain and "\x1b[" in raw  # a drawn bar, in colour
    assert "3 completed, 0 stopped early, 0 errored; 0 running | best loss=0.3 (t1)" in plain
    assert "[" not in plain.replace("[?25", "")  # not the log's "[ 1.0s] trials ..." line


def test_top_trials_rank_only_normally_ended_trials_and_show_what_varied(tmp_path):
    rec = Recorder(tmp_path, "loss", "min", max_t=3)
    feed(rec, "a", {"x": 1, "c": 7}, [0.5, 0.4, 0.3])
    feed(rec, "b", {"x": 2, "c": 7, "k": "rbf"}, [0.2, 0.1, 0.15])
    feed(rec, "e", {"x": 3, "c": 7}, [0.01])
    rec.error("e", "ValueError: boom")  # reported the lowest score, then crashed: never ranked
    feed(rec, "s", {"x": 4, "c": 7}, [0.9], stopped_at=1)
    top = summary_mod.top_trials(rec.trials.values(), "min")
    assert [t["trial_id"] for t in top] == ["b", "a", "s"]
    assert [t["score"] for t in top] == [0.1, 0.3, 0.9] and top[0]["score_iteration"] == 2
    assert {c for c in top[0] if c.startswith("config.")} == {"config.x", "config.k"}  # c never varied
    assert [t["trial_id"] for t in summary_mod.top_trials(rec.trials.values(), "max", k=2)] == ["s", "a"]
    s = summary_mod.RunSummary(Path("/r"), "rid", "loss", {**rec.counts(), "not_started": 0}, rec.best.row(), top=top)
    lines = summary_mod.lines(s)
    head = lines.index("top 3 trials")
    assert lines[head - 1].startswith("  config:") and lines[-1].startswith("results: /r/")
    rows = [ln.split() for ln in lines[head + 3:head + 6]]
    assert [r[:4] for r in rows] == [["1", "b", "completed", "0.1"], ["2", "a", "completed", "0.3"],
                                     ["3", "s", "stopped", "0.9"]]
    assert rows[0][-1] == "rbf" and len(rows[1]) == len(rows[0]) - 1  # inactive: blank
    assert not any("\x1b" in ln or "│" in ln for ln in lines)


SYNTHETIC = """
name: progress-pty
family: synthetic
metric: {name: loss}
space: {iterations: 3}
searcher: {name: random, seed: 0}
budget: {trials: 4, concurrent: 2, time_s: 600}
seed: 0
"""


def test_a_real_run_on_a_terminal_draws_the_bar_and_ends_with_the_top_trials(ray_local, write_spec, tmp_path,
                                                                          monkeypatch):
    """`hpo run` on a terminal: the driver's loop feeds the live bar, and the table printed after the
    run lists the best trial of trials.parquet first."""
    exp = load_spec(write_spec(SYNTHETIC))
    with terminal() as (stream, text):
        monkeypatch.setattr(sys, "stdout", stream)
        result = run(exp, tmp_path / "run")
        summary_mod.report(result)
        monkeypatch.undo()
        plain, raw = text()
    trials = pd.read_parquet(tmp_path / "run" / "trials.parquet")
    best = trials.sort_values("score").iloc[0]
    assert re.search(r"trials .*4/4 \d+:\d\d elapsed", plain), plain
    assert re.search(r"\d/4 \d+:\d\d elapsed, ETA \d+:\d\d", plain), plain  # drawn while running
    assert "4 completed, 0 stopped early, 0 errored; 0 running | best loss=" in plain
    table = plain[plain.index("top 4 trials"):]
    first_row = next(ln for ln in table.splitlines() if re.match(r"[│|]\s*1\s*[│|]", ln))
    assert best["trial_id"] in first_row and f"{best['score']:.6g}" in first_row
    assert "┏" in raw  # rich's table, not the log's plain one


def test_a_real_run_in_a_log_prints_the_plain_lines_and_table(ray_local, write_spec, tmp_path, capsys):
    exp = load_spec(write_spec(SYNTHETIC))
    summary_mod.report(run(exp, tmp_path / "run"))
    out = capsys.readouterr().out
    assert "\x1b" not in out and "ETA" not in out
    progress = [ln for ln in out.splitlines() if ln.startswith("[")]
    assert progress and all(PLAIN_LINE.fullmatch(ln) for ln in progress), out
    assert progress[-1].split("] ", 1)[1].startswith("trials 4/4 finished: 4 completed")
    assert "top 4 trials" in out and "┏" not in out


def test_after_a_resume_the_eta_counts_only_this_process_s_trials(tmp_path, monkeypatch):
    import types

    from orchestrator.run import progress as progress_mod

    now = [1000.0]
    monkeypatch.setattr(progress_mod, "time", types.SimpleNamespace(monotonic=lambda: now[0]))
    rec = Recorder(tmp_path, "loss", "min")
    for i in range(6):  # finished before the resume
        feed(rec, f"old{i}", {"x": i}, [1.0])
    progress = Progress(rec, total=10, stream=io.StringIO(), log_every_s=0.0)
    feed(rec, "new", {"x": 9}, [0.5])
    now[0] += 20.0
    progress.tick()
    assert progress.eta() == 60.0  # one trial in this process's 20 s, 3 to go (not 7 in 20 s)


def test_the_pareto_front_is_counted_again_only_when_a_trial_has_ended(tmp_path, monkeypatch):
    """Finding the front is O(n * front) per count: a redraw with no newly ended trial reuses it."""
    rec = Recorder(tmp_path, "a", "min", objectives=[("a", "min"), ("b", "min")])
    calls = []
    real = rec.pareto
    monkeypatch.setattr(rec, "pareto", lambda: calls.append(1) or real())

    def finish(i: int, a: float) -> None:
        rec.start(f"t{i}", {"x": i})
        rec.result(f"t{i}", {"x": i}, {"a": a, "b": 1 - a, "training_iteration": 1})
        rec.complete(f"t{i}", ended_itself=True)

    finish(0, 0.2)
    progress = Progress(rec, 3, stream=io.StringIO())
    assert progress.line().endswith("Pareto front: 1 trials") and progress.line() and len(calls) == 1
    finish(1, 0.6)
    assert progress.line().endswith("Pareto front: 2 trials") and len(calls) == 2

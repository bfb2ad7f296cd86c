"""The live Optuna journal (`dashboard: true`) and `hpo dashboard`.

Unit tests feed a Recorder by hand (no Ray) and compare the journal it wrote live with the study
`hpo export optuna` builds from the run folder afterwards: the same trials, states, parameters,
values and intermediate values, through retries, PBT's exploit, errors, a config outside the
space, several objectives, Ctrl-C, a kill -9 and `hpo resume`. The end-to-end tests start a real
`hpo run` and the real `hpo dashboard`, read the study through the dashboard's own HTTP API while
trials run, and load the page in headless Chromium.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from orchestrator.analysis import dashboard, optuna_study
from orchestrator.errors import ResultsError
from orchestrator.results.writer import Recorder
from orchestrator.tracking.journal import LiveJournal, open_journal
from tests.analysis_runs import write_run

ROOT = Path(__file__).resolve().parent.parent
CFG = {"x1": 1.0, "x2": 2.0}


def journal_study(folder: Path, path: Path | None = None):
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    storage = JournalStorage(JournalFileBackend(str(path or folder / "optuna.journal")))
    (summary,) = storage.get_all_studies()
    return optuna.load_study(study_name=summary.study_name, storage=storage)


def facts(study) -> dict[str, tuple]:
    """What must agree, by hpo trial id; fails on a trial id that appears twice."""
    out = {}
    for t in study.trials:
        tid = t.user_attrs["hpo_trial_id"]
        assert tid not in out, f"trial {tid} twice in the study"
        out[tid] = (t.state.name, t.params, t.values, t.intermediate_values, t.user_attrs["hpo_status"])
    return out


def assert_same_study(folder: Path):
    """The live journal against `hpo export optuna`'s file, each read back through Optuna."""
    export = folder.parent / f"{folder.name}-export.journal"
    export.unlink(missing_ok=True)
    optuna_study.export_journal(folder, export)
    live, exported = journal_study(folder), journal_study(folder, export)
    assert live.study_name == exported.study_name
    assert live.directions == exported.directions and live.metric_names == exported.metric_names
    assert facts(live) == facts(exported)
    run_id = json.loads((folder / "experiment.json").read_text())["run_id"]
    assert live.user_attrs["hpo_run"] == exported.user_attrs["hpo_run"] == run_id
    assert live.user_attrs["hpo_skipped_trials"] == exported.user_attrs["hpo_skipped_trials"]
    return live


def new_run(tmp_path, name="run", pass_s=0.5, **meta) -> tuple[Path, Recorder, LiveJournal]:
    folder = write_run(tmp_path / name, [], history=None, status="running", ended_at=None, **meta)
    (folder / "trials.parquet").unlink()
    doc = json.loads((folder / "experiment.json").read_text())
    objectives = tuple((o["name"], o["mode"]) for o in doc.get("objectives") or ())
    rec = Recorder(folder, "loss", "min", max_t=4, objectives=objectives)
    journal = open_journal(folder, doc, rec)
    journal.pass_s = pass_s
    rec.listeners.append(journal)
    return folder, rec, journal


def report(rec: Recorder, trial: str, iteration: int, loss: float, restored: str | None = None, cfg=CFG, **more):
    result = {"training_iteration": iteration, "loss": loss, "time_total_s": iteration * 0.1, **more}
    rec.result(trial, cfg, {**result, "hpo_restored": restored} if restored else result)
    time.sleep(0.002)  # distinct timestamps: the lineage reads what a source had reported by then


@pytest.mark.parametrize("pass_s", [0.5, 0.0], ids=["passes", "event-by-event"])
def test_the_live_journal_and_the_export_give_the_same_study(tmp_path, pass_s):
    """Whole trials written in one pass, or each event as it comes (trials created, then added to)."""
    folder, rec, journal = new_run(tmp_path, pass_s=pass_s)
    rec.start("a", CFG)
    for i, v in enumerate([5.0, 4.0, 3.0, 2.0], start=1):
        report(rec, "a", i, v)
    rec.start("b", {"x1": 3.0, "x2": 4.0})
    for i, v in enumerate([9.0, 8.0, 7.0], start=1):
        report(rec, "b", i, v, cfg={"x1": 3.0, "x2": 4.0})
    rec.start("b", CFG)  # PBT: b clones a's checkpoint at 2 (and its config) and goes on
    report(rec, "b", 3, 2.5, restored="a@2")
    report(rec, "b", 4, 1.5, restored="a@2")
    rec.start("a", CFG)  # a retried from its own checkpoint at 3
    report(rec, "a", 4, 1.8, restored="a@3")
    rec.start("c", CFG)
    report(rec, "c", 1, 6.0)
    rec.start("c", CFG)  # restarted from scratch: attempt 2 stands alone
    report(rec, "c", 1, 6.5)
    report(rec, "c", 2, float("nan"))  # never an intermediate value
    report(rec, "c", 3, 5.5, done=True)
    rec.start("d", CFG)
    report(rec, "d", 1, 7.0)
    rec.error("d", "ValueError: boom")
    rec.start("e", {"x1": 99.0, "x2": 1.0})  # outside the space: in neither study
    report(rec, "e", 1, 1.0, cfg={"x1": 99.0, "x2": 1.0})
    rec.start("f", CFG)
    rec.start("g", CFG)
    report(rec, "g", 1, 8.0)
    for t in "abc":  # c's last result said done at 3 < max_t: the scheduler stopped it early
        rec.complete(t)
    rec.complete("f")  # f never reported: no value, FAIL
    rec.close(cut_off="interrupted")  # g cut off by Ctrl-C: unfinished, RUNNING
    stats = journal.close()
    assert stats["error"] is None and stats["skipped"] == ["e"] and stats["trials"] == 6

    live = assert_same_study(folder)
    got = facts(live)
    assert got["a"][:4] == ("COMPLETE", CFG, [1.8], {1: 5.0, 2: 4.0, 3: 3.0, 4: 1.8})
    assert got["b"][:4] == ("COMPLETE", CFG, [1.5], {1: 5.0, 2: 4.0, 3: 2.5, 4: 1.5})  # b's lineage: a's, then its own
    assert got["c"][:4] == ("PRUNED", CFG, [5.5], {1: 6.5, 3: 5.5})  # attempt 2 alone; NaN is no value
    d = next(t for t in live.trials if t.user_attrs["hpo_trial_id"] == "d")
    assert got["d"][0] == "FAIL" and d.user_attrs["error"] == "ValueError: boom"
    assert got["f"][0] == "FAIL" and got["g"][0] == "RUNNING" and got["g"][4] == "interrupted"


def test_stopped_trials_are_pruned_with_their_last_value(tmp_path):
    folder, rec, journal = new_run(tmp_path)
    for t, values in (("s", [4.0, 3.5]), ("t", [2.0, 1.0, 0.5, 0.25])):
        rec.start(t, CFG)
        for i, v in enumerate(values, start=1):
            report(rec, t, i, v)
    rec.trials["s"].stop_requested = True
    rec.complete("s")
    rec.complete("t")
    rec.close()
    journal.close()
    got = facts(assert_same_study(folder))
    assert got["s"][:3] == ("PRUNED", CFG, [3.5]) and got["t"][:3] == ("COMPLETE", CFG, [0.25])


def test_several_objectives_take_their_directions_from_the_modes(tmp_path):
    objectives = [{"name": "loss", "mode": "min"}, {"name": "acc", "mode": "max"}]
    folder, rec, journal = new_run(tmp_path, objectives=objectives, spec={"metric": objectives}, metric=objectives[0])
    for t, (loss, acc) in (("p", (1.0, 0.5)), ("q", (2.0, 0.9))):
        rec.start(t, CFG)
        report(rec, t, 1, loss + 1, acc=acc - 0.1)
        report(rec, t, 2, loss, acc=acc)
        rec.complete(t)
    rec.close()
    journal.close()
    live = assert_same_study(folder)
    assert [d.name for d in live.directions] == ["MINIMIZE", "MAXIMIZE"] and live.metric_names == ["loss", "acc"]
    assert facts(live)["q"][2] == [2.0, 0.9]


def test_resume_after_kill_9_continues_the_same_optuna_trials(tmp_path):
    folder, rec, journal = new_run(tmp_path)
    rec.start("a", CFG)
    for i in (1, 2):
        report(rec, "a", i, 5.0 - i)
    rec.start("b", CFG)
    report(rec, "b", 1, 9.0)
    rec.complete("b")
    rec.flush()
    journal.close()
    # ... kill -9: nothing closed, an append cut mid-line, Optuna's lock left behind
    with open(folder / "optuna.journal", "ab") as f:
        f.write(b'{"op_code": 4, "worker_id": "x", "trial_id": 0, "st')
    lock = folder / "optuna.journal.lock"
    os.symlink(folder / "optuna.journal", lock)
    os.utime(lock, (time.time() - 60,) * 2, follow_symlinks=False)
    assert facts(journal_study(folder))["a"][0] == "RUNNING"  # readable as it is

    rec = Recorder.reopen(folder, "loss", "min", max_t=4)
    rec.trials["a"].status = "interrupted"  # what resume's reconciliation makes of a cut-off trial
    rec.trials["c"] = type(rec.trials["a"])("c", dict(CFG), status="completed", score=3.0, iterations=1)
    doc = json.loads((folder / "experiment.json").read_text())
    journal = open_journal(folder, doc, rec)  # c: known to the record, missed by the journal
    rec.listeners.append(journal)
    rec.start("a", CFG)
    report(rec, "a", 3, 2.5, restored="a@2")
    report(rec, "a", 4, 2.0, restored="a@2")
    rec.complete("a")
    rec.close()
    stats = journal.close()
    assert stats["error"] is None and not lock.exists()
    got = facts(assert_same_study(folder))
    assert got["a"][:4] == ("COMPLETE", CFG, [2.0], {1: 4.0, 2: 3.0, 3: 2.5, 4: 2.0})
    assert got["c"][:3] == ("COMPLETE", CFG, [3.0]) and len(got) == 3


def test_a_journal_of_another_run_is_left_alone(tmp_path):
    other, rec, journal = new_run(tmp_path, name="other")
    rec.start("a", CFG)
    rec.close()
    journal.close()
    folder, rec, _ = new_run(tmp_path, name="mine")
    rec.listeners[0].close()
    shutil.copy(other / "optuna.journal", folder / "optuna.journal")
    journal = open_journal(folder, json.loads((folder / "experiment.json").read_text()), rec)
    stats = journal.close()
    assert "holds the study of another run (other)" in stats["error"]
    with pytest.raises(ResultsError, match="another run"):
        dashboard.journal_of(folder)


def test_the_journal_writer_survives_pickling_as_a_listener_that_does_nothing(tmp_path):
    import pickle

    _, rec, journal = new_run(tmp_path)
    copy = pickle.loads(pickle.dumps(journal))
    copy.trial_started(None)
    journal.close()


# --- hpo dashboard: bad input, one line each, exit 2 (no Ray) ---------------------------------------

def hpo(*args, env=None, **kw) -> subprocess.Popen:
    """`hpo ...` in its own process group, with this checkout's code."""
    return subprocess.Popen([sys.executable, "-m", "orchestrator.cli", *map(str, args)], cwd=ROOT, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True, **kw)


def hpo_fails(*args) -> str:
    proc = hpo(*args)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and not out, (out, err)
    assert err.startswith("error: ") and "Traceback" not in err
    return err.splitlines()[0]


def finished_run(tmp_path, name="done") -> Path:
    """A run folder by hand: two trials, no live journal."""
    folder, rec, journal = new_run(tmp_path, name=name)
    rec.listeners.clear()
    journal.close()
    (folder / "optuna.journal").unlink()
    for t, v in (("a", 2.0), ("b", 1.0)):
        rec.start(t, CFG)
        report(rec, t, 1, v)
        rec.complete(t)
    rec.close()
    return folder


def served(proc: subprocess.Popen) -> str:
    """The URL `hpo dashboard` prints alone on stdout once its socket is bound."""
    line = proc.stdout.readline().strip()
    if not line.startswith("http://"):
        proc.kill()
        pytest.fail(f"no URL: {line!r} {proc.communicate()[1][-2000:]}")
    return line


def api(url: str, path: str):
    base = url.split("/dashboard/")[0]
    with urllib.request.urlopen(f"{base}{path}", timeout=10) as r:
        return json.loads(r.read())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_port_in_use_is_refused_naming_the_next_free_one(tmp_path):
    run = finished_run(tmp_path)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        line = hpo_fails("dashboard", run, "--port", port)
    assert re.fullmatch(rf"error: port {port} on 127\.0\.0\.1 is in use; the next free one is (\d+): --port \1 .*", line)


def test_a_folder_without_results_and_a_wrong_path_are_refused(tmp_path):
    empty = write_run(tmp_path / "empty", [], history=None, status="running")
    (empty / "trials.parquet").unlink()
    assert "has no results yet (no trials.parquet, no history.parts/)" in hpo_fails("dashboard", empty)
    assert "is not a run folder (no experiment.json)" in hpo_fails("dashboard", tmp_path)
    assert "no run folder at" in hpo_fails("dashboard", tmp_path / "nowhere")


def test_a_journal_copied_from_another_run_is_refused(tmp_path):
    other, rec, journal = new_run(tmp_path, name="other")
    rec.start("a", CFG)
    journal.close()
    run = finished_run(tmp_path)
    shutil.copy(other / "optuna.journal", run / "optuna.journal")
    line = hpo_fails("dashboard", run)
    assert "holds the study of another run (other), not of this run (done)" in line


def test_a_job_whose_results_this_machine_cannot_follow_says_why_and_what_to_do(tmp_path):
    flag = "--cluster cluster/local.yaml"
    with pytest.raises(ResultsError, match=r"an object store.*hpo fetch j1 --cluster cluster/local.yaml && hpo dash"):
        dashboard.job_run_dir("s3://bucket/runs/j1", "j1", "RUNNING", flag)
    with pytest.raises(ResultsError, match="not mounted here: mount it at that path, or hpo fetch j1"):
        dashboard.job_run_dir(str(tmp_path / "elsewhere"), "j1", "RUNNING", flag)
    run = finished_run(tmp_path)
    with pytest.raises(ResultsError, match=r"no live journal .* --set dashboard=true"):
        dashboard.job_run_dir(str(run), "j1", "SUCCEEDED", flag)
    (run / "optuna.journal").touch()
    assert dashboard.job_run_dir(f"file://{run}", "j1", "RUNNING", flag) == run


def test_a_run_without_a_journal_is_served_as_an_exported_snapshot_and_another_host_is_flagged(tmp_path):
    """--host 0.0.0.0 is taken only when asked, and then the command says it is unauthenticated."""
    run = finished_run(tmp_path)
    port, tmp = free_port(), tmp_path / "tmp"
    tmp.mkdir()
    proc = hpo("dashboard", run, "--host", "0.0.0.0", "--port", port, env={"TMPDIR": str(tmp)})
    try:
        url = served(proc)
        assert url.startswith(f"http://0.0.0.0:{port}/dashboard/studies/")
        study = api(url.replace("0.0.0.0", "127.0.0.1"), f"/api/studies/{url.rsplit('/', 1)[1]}")
        assert study["name"] == "hand/done" and len(study["trials"]) == 2
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "a snapshot exported from" in err and "no authentication" in err
    assert not list(tmp.iterdir())  # the snapshot's folder is removed on exit
    assert not (run / "optuna.journal").exists()  # and the run folder is left as it was


def test_ctrl_c_stops_the_dashboard_even_when_started_with_sigint_ignored(tmp_path):
    """As a shell starts a background command (`hpo dashboard RUN &` in a script): SIGINT ignored,
    inherited through exec. Python then installs no handler of its own, and the dashboard served on
    after every Ctrl-C (the live tests below hung on it whenever pytest itself was started so)."""
    ignoring = ["bash", "-c", 'trap "" INT; exec "$@"', "bash", sys.executable]
    premise = subprocess.run([*ignoring, "-c", "import signal; print(signal.getsignal(signal.SIGINT) == signal.SIG_IGN)"],
                             capture_output=True, text=True, check=True).stdout
    assert premise.strip() == "True"
    run = finished_run(tmp_path)
    proc = subprocess.Popen([*ignoring, "-m", "orchestrator.cli", "dashboard", str(run), "--port", str(free_port())],
                            cwd=ROOT, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    try:
        served(proc)  # its handlers are set before it prints the URL
        proc.send_signal(signal.SIGINT)
        out, err = finish(proc, 30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, err


def test_nothing_imports_optuna_dashboard_unless_asked():
    code = ("import sys, orchestrator.cli, orchestrator.run.lifecycle, orchestrator.tracking.journal, "
            "orchestrator.analysis.dashboard; orchestrator.cli._parser(); "
            "assert 'optuna_dashboard' not in sys.modules and 'optuna' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


# --- end to end: a real run, the real dashboard, a real browser ------------------------------------

SMOKE = ["--set", "budget.trials=4", "--set", "budget.concurrent=2", "--set", "space.iterations=8",
         "--set", "space.sleep_s=0.4", "--set", "scheduler.max_t=8", "--set", "scheduler.grace_period=2"]
EXAMPLE = ROOT / "experiments" / "synthetic_dashboard.yaml"


def finish(proc: subprocess.Popen, limit_s: float = 240) -> tuple[str, str]:
    """Its output once it exits; if it has not within `limit_s`, where each of its threads is
    (py-spy, in the lock), for the failure to say. That dump is how `hpo dashboard` ignoring a
    Ctrl-C it was started without was found (test_ctrl_c_stops_the_dashboard_even_when_...)."""
    try:
        return proc.communicate(timeout=limit_s)
    except subprocess.TimeoutExpired:
        stacks = subprocess.run([str(Path(sys.executable).parent / "py-spy"), "dump", "--locals", "--pid",
                                 str(proc.pid)], capture_output=True, text=True, timeout=60)
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(f"{proc.args[2:]} still running {limit_s} s on; its threads:\n{stacks.stdout}"
                             f"{stacks.stderr}\nits stderr: {err[-3000:]}") from None


def wait_for_study(path: Path, proc: subprocess.Popen, trials: int = 0, limit_s: float = 120) -> None:
    """Until the run's journal holds its study with at least `trials` trials that reported; fails if
    the run ends first."""
    deadline = time.monotonic() + limit_s
    while True:
        try:
            if sum(bool(t.intermediate_values) for t in journal_study(path.parent).trials) >= trials:
                return
        except (OSError, ValueError):  # not written yet
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            out, err = finish(proc)
            pytest.fail(f"no study with {trials} trials in {path}; rc={proc.returncode}\n{out}\n{err[-3000:]}")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """A real `hpo run --dashboard` (4 trials of 8 x 0.7 s, two at a time) and the real `hpo dashboard`
    on it, started as soon as the journal is there; the study read through the dashboard's own HTTP
    API every 0.2 s until the run ends, then until it shows no trial running (the dashboard reads the
    journal's last lines a moment after `hpo` exited; at most 10 s)."""
    run_dir = tmp_path_factory.mktemp("live") / "run"
    # Trials of 8 x 0.7 s: optuna-dashboard caches a study's trials for 2 s (optuna_dashboard._storage
    # .get_trials), and `hpo dashboard` takes ~2.5 s to serve; the run must still go for several of
    # those 2 s once it does, however soon its first trial starts (0.4 s trials were too short once
    # trials started ~0.8 s sooner).
    run = hpo("run", EXAMPLE, "--output", run_dir, "--quiet", *SMOKE, "--set", "space.sleep_s=0.7")
    wait_for_study(run_dir / "optuna.journal", run)
    board = hpo("dashboard", run_dir)
    try:
        url = served(board)
        study_id = url.rsplit("/", 1)[1]
        seen = []  # (run still going, trials, running trials, intermediate values)
        ended = None
        while True:
            going = run.poll() is None
            trials = api(url, f"/api/studies/{study_id}")["trials"]
            seen.append((going, len(trials), sum(t["state"] == "Running" for t in trials),
                         sum(len(t["intermediate_values"]) for t in trials)))
            ended = ended or (None if going else time.monotonic())
            if ended and (seen[-1][2] == 0 or time.monotonic() > ended + 10):
                break
            time.sleep(0.2)
        out, err = finish(run)
        assert run.returncode == 0, err[-3000:]
        yield run_dir, url, seen
    finally:
        board.send_signal(signal.SIGINT)  # Ctrl-C
        finish(board, 30)
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)


@pytest.mark.slow
def test_the_dashboard_shows_a_real_run_as_it_goes(live):
    run_dir, url, seen = live
    going = [s for s in seen if s[0]]
    assert going, "the dashboard never answered while the run went"
    counts = [s[1] for s in seen]
    assert counts == sorted(counts) and counts[-1] == 4  # the trial count grows, then equals the budget
    assert any(0 < trials < 4 for _, trials, _, _ in going), seen
    assert any(running for _, _, running, _ in going), seen  # trials seen while they ran...
    assert len({values for _, _, _, values in going}) > 2, seen  # ... reporting one iteration after another
    assert seen[-1][2] == 0  # and every one of them finished
    meta = json.loads((run_dir / "experiment.json").read_text())
    assert meta["dashboard"]["error"] is None and meta["dashboard"]["trials"] == 4
    states = {t.state.name for t in assert_same_study(run_dir).trials}
    assert states <= {"COMPLETE", "PRUNED"}


def chromium() -> str:
    found = os.environ.get("HPO_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        pytest.skip("no Chromium here: `make test` installs Debian's `chromium` with apt-get where it runs as root "
                    "(else: apt-get install chromium, or point HPO_CHROMIUM at a Chrome/Chromium binary)")
    return found


def browse(url: str, tmp_path: Path, *flags: str) -> subprocess.CompletedProcess:
    """Headless Chromium on `url`, given 10 s of the page's own (virtual) time to fetch and draw."""
    return subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1280,800",
                           "--virtual-time-budget=10000", *flags, url],
                          capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_the_page_in_a_headless_browser_shows_the_study_and_its_trials(live, tmp_path):
    run_dir, url, _ = live
    name = journal_study(run_dir).study_name
    for _ in range(3):  # the page fetches the study after it loads: give it another go if it was slow
        dom = browse(f"{url}/trials", tmp_path, "--dump-dom").stdout
        text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", re.sub(r"<(style|script)[^>]*>.*?</\1>", " ", dom,
                                                                  flags=re.S)))
        if "4 Trials" in text:
            break
    assert name in text and "4 Trials" in text, text[:2000]
    assert all(f"Trial {n} " in text for n in range(4)), text[:2000]
    shot = tmp_path / "history.png"
    browse(url, tmp_path, f"--screenshot={shot}")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000  # a drawn page


@pytest.mark.slow
def test_ctrl_c_closes_the_journal_and_resume_goes_on_with_the_same_trials(tmp_path):
    run_dir = tmp_path / "run"
    run = hpo("run", EXAMPLE, "--output", run_dir, "--quiet", *SMOKE, "--set", "budget.trials=6")
    wait_for_study(run_dir / "optuna.journal", run, trials=2)
    os.killpg(run.pid, signal.SIGINT)  # Ctrl-C, to the whole process group as a terminal sends it
    out, err = finish(run)
    assert run.returncode == 130, err[-3000:]
    journal = (run_dir / "optuna.journal").read_bytes()
    assert journal.endswith(b"\n") and not (run_dir / "optuna.journal.lock").exists()
    meta = json.loads((run_dir / "experiment.json").read_text())
    assert meta["status"] == "interrupted" and meta["dashboard"]["error"] is None
    cut = {tid for tid, f in facts(assert_same_study(run_dir)).items() if f[4] == "interrupted"}
    assert cut and all(facts(journal_study(run_dir))[t][0] == "RUNNING" for t in cut)

    again = hpo("resume", run_dir, "--quiet")
    out, err = finish(again)
    assert again.returncode == 0, err[-3000:]
    after = facts(assert_same_study(run_dir))  # no trial twice (facts fails on one)
    assert sum(f[0] in ("COMPLETE", "PRUNED") for f in after.values()) == 6
    resumed = [t for t in cut if after[t][0] != "RUNNING"]
    assert resumed and all(after[t][3] for t in resumed)  # the cut-off trials went on in their own Optuna trial
    assert (run_dir / "optuna.journal").read_bytes().startswith(journal)  # appended to, never rewritten


def test_the_journal_is_off_unless_the_spec_or_hpo_run_dashboard_turns_it_on(tmp_path):
    from orchestrator.cli import _parser
    from orchestrator.spec.load import load_spec

    spec = tmp_path / "spec.yaml"
    spec.write_text("name: plain\nfamily: synthetic\nmetric: {name: loss}\n")
    assert load_spec(spec).spec.dashboard is False and load_spec(EXAMPLE).spec.dashboard is True
    args = _parser().parse_args(["run", str(spec), "--dashboard"])
    assert args.dashboard and load_spec(spec, [*args.set, "dashboard=true"]).spec.dashboard is True

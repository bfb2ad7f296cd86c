"""Issue 15: what a run survives, and honest endings.

Real processes where the behaviour is about processes (two runs racing for one folder, Ctrl-C,
SIGTERM, a disk that fills up mid-run, a read-only disk); the session's local Ray for endings a
trainable causes; plain unit tests for the rest. Each subprocess run costs Ray's start-up (~8 s),
so there are few of them.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from orchestrator.errors import InputError, RunError, SpecError
from orchestrator.results import rundir
from orchestrator.results.contract import EXPERIMENT, OWNER
from orchestrator.run import signals as interrupt
from orchestrator.run.driver import claim_folder, run
from orchestrator.spec.load import load_spec, validate
from tests.conftest import EXPERIMENTS, ROOT

# A trainable slow enough to be caught mid-run: 2 trials at a time, each 60 reports 0.1 s apart.
SLOW_PY = """
import time
from ray import tune


def train(config):
    for i in range(60):
        time.sleep(0.1)
        tune.report({"loss": config["x"] + 1 / (i + 1)})
"""
SLOW_YAML = """
name: slow
family: slow.py:train
metric: {name: loss, mode: min}
space: {x: {uniform: [0, 1]}}
budget: {trials: 8, concurrent: 2}
"""


@pytest.fixture
def slow_spec(tmp_path) -> Path:
    (tmp_path / "slow.py").write_text(SLOW_PY)
    path = tmp_path / "slow.yaml"
    path.write_text(SLOW_YAML)
    return path


def hpo(*args: str, **kw) -> subprocess.Popen:
    """`hpo ...` in a new process group (as a shell runs a command), with this checkout's code."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen([sys.executable, "-m", "orchestrator.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT, start_new_session=True, **kw)


def finish(proc: subprocess.Popen, limit_s: float = 240) -> tuple[str, str]:
    try:
        return proc.communicate(timeout=limit_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise


def wait_for(path: Path, proc: subprocess.Popen, limit_s: float = 120) -> None:
    """Until `path` exists (the run has flushed trials); fails if the run ends first."""
    deadline = time.monotonic() + limit_s
    while not path.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            out, err = finish(proc)
            pytest.fail(f"{path} never appeared; rc={proc.returncode}\n{out}\n{err[-3000:]}")
        time.sleep(0.2)


# --- 2. one folder per run ------------------------------------------------------------------

def test_run_ids_are_unique_sortable_and_end_with_the_spec_hash():
    ids = [rundir.new_run_id("abcd1234") for _ in range(200)]
    assert len(set(ids)) == 200 and ids == sorted(ids, key=lambda i: i[:22])
    assert all(re.fullmatch(r"\d{8}-\d{6}-\d{6}-[0-9a-f]{4}-abcd1234", i) for i in ids)


def test_a_folder_is_claimed_once(tmp_path):
    claim = rundir.claim(tmp_path / "run")
    assert claim.owner["pid"] == os.getpid()
    with pytest.raises(rundir.FolderTaken, match="already holds results"):
        rundir.claim(tmp_path / "run")


def test_the_claim_is_exclusive_between_the_emptiness_check_and_the_create(tmp_path, monkeypatch):
    """Both racers saw an empty folder; the filesystem lets only one create owner.json."""
    real_open = os.open

    def other_run_claims_first(path, flags, mode=0o777):
        if str(path).endswith(OWNER) and not Path(path).exists():
            Path(path).write_text("{}")  # the other process wins the race here
        return real_open(path, flags, mode)

    monkeypatch.setattr(os, "open", other_run_claims_first)
    with pytest.raises(rundir.FolderTaken, match="claimed by another run"):
        rundir.claim(tmp_path / "run")


@pytest.mark.slow
def test_two_runs_racing_for_one_folder(slow_spec, tmp_path):
    """Started together on one --output: one runs, the other exits 2 naming the folder, at once."""
    out = tmp_path / "run"
    racers = [hpo("run", str(slow_spec), "--output", str(out), "--quiet", "--set", "budget.trials=2") for _ in range(2)]
    results = [(p, *finish(p)) for p in racers]
    codes = sorted(p.returncode for p, _, _ in results)
    assert codes == [0, 2], [(p.returncode, e[-2000:]) for p, _, e in results]
    loser_err = next(e for p, _, e in results if p.returncode == 2)
    assert str(out) in loser_err and len(loser_err.strip().splitlines()) == 1 and "Traceback" not in loser_err
    trials = pd.read_parquet(out / "trials.parquet")
    assert len(trials) == 2 and json.loads((out / "experiment.json").read_text())["status"] == "finished"


# --- 1 (part). liveness -----------------------------------------------------------------------

def _record(run_dir: Path, status: str | None, **owner) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    if status:
        rundir.write_json(run_dir / EXPERIMENT, {"status": status})
    if owner:
        rundir.write_json(run_dir / OWNER, owner)
    return run_dir


def test_a_reused_pid_is_not_the_owner(tmp_path):
    """After a crash the owner's pid can belong to another process: it must read as crashed, or
    `hpo resume` is refused forever. The claim records its process's start time beside the pid."""
    here, now = socket.gethostname(), rundir.now()
    mine = rundir.process_started(os.getpid())
    assert mine is not None
    live = _record(tmp_path / "a", "running", host=here, pid=os.getpid(), pid_started=mine, heartbeat_at=now)
    assert rundir.liveness(live) == "live"
    reused = _record(tmp_path / "b", "running", host=here, pid=os.getpid(), pid_started=str(int(mine) - 1),
                     heartbeat_at=now)
    assert rundir.liveness(reused) == "crashed"
    claim = rundir.claim(tmp_path / "c")
    assert claim.owner["pid_started"] == mine and "start time" in claim.owner["liveness"]


def test_liveness_tells_a_crashed_run_from_a_live_one(tmp_path):
    here, now = socket.gethostname(), rundir.now()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    assert rundir.liveness(_record(tmp_path / "a", "running", host=here, pid=os.getpid(), heartbeat_at=now)) == "live"
    assert rundir.liveness(_record(tmp_path / "b", "running", host=here, pid=dead.pid, heartbeat_at=now)) == "crashed"
    for status in ("finished", "failed", "interrupted"):
        assert rundir.liveness(_record(tmp_path / status, status, host=here, pid=os.getpid())) == "finished"
    assert rundir.liveness(_record(tmp_path / "c", None)) == "none"
    assert rundir.liveness(_record(tmp_path / "d", "running")) == "crashed"  # running, and nobody owns it
    # Another host: only the heartbeat can tell.
    assert rundir.liveness(_record(tmp_path / "e", "running", host="elsewhere", pid=1, heartbeat_at=now)) == "live"
    assert rundir.liveness(_record(tmp_path / "f", "running", host="elsewhere", pid=1,
                                   heartbeat_at="2020-01-01T00:00:00+00:00")) == "crashed"


def test_the_heartbeat_moves(tmp_path):
    claim = rundir.claim(tmp_path / "run")
    claim.owner["heartbeat_at"] = "2020-01-01T00:00:00+00:00"
    claim.beat()
    assert rundir.read_json(tmp_path / "run" / OWNER)["heartbeat_at"] > "2020"


# --- 3. signals -----------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("sig, to_group", [(signal.SIGINT, True), (signal.SIGTERM, False)])
def test_a_signal_ends_a_run_as_interrupted(slow_spec, tmp_path, sig, to_group):
    """Ctrl-C (SIGINT to the whole process group, as a terminal sends it) and SIGTERM to the process."""
    out = tmp_path / "run"
    proc = hpo("run", str(slow_spec), "--output", str(out))
    wait_for(out / "trials.parquet", proc)
    (os.killpg if to_group else os.kill)(proc.pid, sig)
    stdout, stderr = finish(proc)
    assert proc.returncode == 128 + sig, stderr[-3000:]
    meta = json.loads((out / "experiment.json").read_text())
    trials = pd.read_parquet(out / "trials.parquet")
    assert meta["status"] == "interrupted" and meta["signal"] == sig.name
    assert "interrupted" in set(trials.status) and "stopped" not in set(trials.status)
    assert meta["counts"]["not_started"] == 8 - len(trials) > 0
    assert f"interrupted by {sig.name}" in stderr and "Traceback" not in stderr
    assert rundir.liveness(out) == "finished"


def test_interrupt_handlers_record_the_signal_and_are_restored():
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with interrupt.handling_signals():
        assert os.environ["TUNE_DISABLE_SIGINT_HANDLER"] == "1"
        os.kill(os.getpid(), signal.SIGINT)  # the first Ctrl-C asks Tune to stop; no exception here
        assert interrupt.requested() == signal.SIGINT
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)  # the second one does not wait
        with pytest.raises(interrupt.Interrupted):
            os.kill(os.getpid(), signal.SIGTERM)
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


# --- 5. full or read-only disk ----------------------------------------------------------------

@pytest.fixture
def mount_tmpfs(tmp_path):
    """A small tmpfs of our own (root only); skipped where mounting is not permitted."""
    mounted = []

    def mount(size: str, *, read_only: bool = False) -> Path:
        where = tmp_path / f"mnt{len(mounted)}"
        where.mkdir()
        opts = f"size={size}" + (",ro" if read_only else "")
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(where)], capture_output=True, text=True)
        if r.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip() or 'mount failed'}); needs root")
        mounted.append(where)
        return where

    yield mount
    for where in mounted:
        subprocess.run(["umount", "-l", str(where)], check=False)


def test_a_read_only_output_is_refused_before_ray_starts(mount_tmpfs, write_spec):
    ro = mount_tmpfs("1m", read_only=True)
    spec = write_spec("name: s\nfamily: synthetic\nmetric: {name: loss}\nbudget: {trials: 1}\n")
    proc = hpo("run", str(spec), "--output", str(ro / "run"))
    _, err = finish(proc, 60)
    assert proc.returncode == 2 and f"cannot write the run folder {ro / 'run'}" in err and "Traceback" not in err


def test_an_unwritable_output_is_refused_with_its_path(tmp_path, monkeypatch):
    """The same without a mount: the claim's write fails as on a read-only disk."""
    def read_only(path, flags, mode=0o777):
        raise OSError(30, "Read-only file system", str(path))

    monkeypatch.setattr(os, "open", read_only)
    with pytest.raises(InputError, match=f"cannot write the run folder {re.escape(str(tmp_path))}.*Read-only"):
        claim_folder(tmp_path / "run")


@pytest.mark.slow
def test_a_disk_that_fills_mid_run_fails_the_run_and_keeps_what_was_written(mount_tmpfs, slow_spec, request):
    disk = mount_tmpfs("8m")
    out = disk / "run"
    proc = hpo("run", str(slow_spec), "--output", str(out), "--quiet")
    wait_for(out / "trials.parquet", proc)
    kept = pd.read_parquet(out / "trials.parquet")
    request.addfinalizer(lambda: proc.poll() is None and os.killpg(proc.pid, signal.SIGKILL))
    try:
        with open(disk / "filler", "wb", buffering=0) as f:  # fill the disk to the last byte
            while True:
                f.write(b"\0" * 4096)
    except OSError:
        pass
    _, err = finish(proc)
    assert proc.returncode == 1, err[-3000:]
    assert "No space left on device" in err and "Traceback" not in err
    assert len([ln for ln in err.splitlines() if ln.startswith("error:")]) == 1
    assert not list(out.rglob(".*.tmp"))
    (disk / "filler").unlink()  # to read experiment.json's fate we need no space; to load, neither
    trials, history = __import__("orchestrator.results.reader", fromlist=["load"]).load(out)
    assert set(kept.trial_id) <= set(trials.trial_id) and len(history) >= kept["iterations"].sum()
    meta = json.loads((out / "experiment.json").read_text())
    assert meta["status"] in ("failed", "running")  # failed where it could still be written


# --- 6. honest outcomes -----------------------------------------------------------------------

def _user_spec(write_spec, tmp_path, body: str, metric: str = "loss", trials: int = 2, concurrent: int = 1,
               extra: str = ""):
    (tmp_path / "t.py").write_text("import math\nfrom ray import tune\n\n\ndef train(config):\n" + body)
    return load_spec(write_spec(f"name: t\nfamily: t.py:train\nmetric: {{name: {metric}, mode: min}}\n"
                                f"space: {{x: {{uniform: [0, 1]}}}}\nbudget: {{trials: {trials}, concurrent: {concurrent}}}\n"
                                + extra))


@pytest.mark.slow
def test_a_metric_reported_under_another_name_is_named(ray_local, write_spec, tmp_path):
    exp = _user_spec(write_spec, tmp_path, "    for i in range(3):\n        tune.report({'los': 1.0, 'acc': 0.5})\n")
    with pytest.raises(RunError, match=r"never reports the spec's metric 'loss': trial \w+ reported acc, los; "
                                       r"did you mean metric.name: los\?"):
        run(exp, tmp_path / "run", quiet=True)


@pytest.mark.slow
def test_a_trainable_that_never_reports_is_noticed_when_its_first_trial_ends(ray_local, write_spec, tmp_path):
    exp = _user_spec(write_spec, tmp_path, "    return None\n", trials=20)
    with pytest.raises(RunError, match="ended without reporting anything") as caught:
        run(exp, tmp_path / "run", quiet=True)
    assert caught.value.summary.counts["not_started"] >= 15  # not after the whole budget
    assert json.loads((tmp_path / "run" / "experiment.json").read_text())["status"] == "failed"


@pytest.mark.slow
def test_errored_and_infinite_scores_are_never_best_and_no_best_means_failed(ray_local, write_spec, tmp_path):
    """Every trial reports -inf or a tiny score and then crashes: nothing is best, the run failed."""
    exp = _user_spec(write_spec, tmp_path, "    tune.report({'loss': -math.inf if config['x'] < 0.5 else 0.001})\n"
                                           "    tune.report({'loss': 0.0001})\n    raise RuntimeError('diverged')\n",
                     trials=3)
    with pytest.raises(RunError, match="no trial reported a finite loss and ended normally; 3 errored, the first: "
                                       ".*RuntimeError: diverged") as caught:
        run(exp, tmp_path / "run", quiet=True)
    meta = json.loads((tmp_path / "run" / "experiment.json").read_text())
    assert meta["status"] == "failed" and meta["best"] is None and caught.value.summary.best is None
    trials = pd.read_parquet(tmp_path / "run" / "trials.parquet")
    assert (trials["retries"] == 0).all()  # a trainable's own exception is not retried (budget.max_failures)
    assert not trials["error"].str.contains("was lost").any()
    assert "Infinity" not in (tmp_path / "run" / "experiment.json").read_text()


@pytest.mark.slow
def test_a_trial_that_ends_itself_completed(ray_local, write_spec, tmp_path):
    """Ray's pbt_function example reports done=True to end a trial; that is not an early stop."""
    exp = _user_spec(write_spec, tmp_path, "    for i in range(10):\n"
                                           "        tune.report({'loss': config['x'], 'done': i == 2})\n"
                                           "        if i == 2:\n            return\n")
    summary = run(exp, tmp_path / "run", quiet=True)
    trials = pd.read_parquet(summary.run_dir / "trials.parquet")
    assert set(trials.status) == {"completed"} and trials.iterations.eq(3).all()
    assert summary.best["score"] == trials.score.min() and summary.status == "finished"


# --- 7. small input holes ---------------------------------------------------------------------

XGB = {"name": "x", "family": "xgboost", "metric": {"name": "val_error"}, "budget": {"trials": 2}}


@pytest.mark.parametrize("path, value, field", [
    ("budget.trials", True, "budget.trials"), ("budget.concurrent", False, "budget.concurrent"),
    ("searcher", {"name": "optuna-tpe", "n_startup_trials": True}, "searcher.n_startup_trials"),
    ("scheduler", {"name": "asha", "max_t": True}, "scheduler.max_t"), ("resources.cpu", True, "resources.cpu")])
def test_booleans_are_not_counts(path, value, field):
    raw = json.loads(json.dumps(XGB))
    section, _, key = path.partition(".")
    raw[section] = {**raw.get(section, {}), key: value} if key else value
    with pytest.raises(SpecError) as err:
        validate(raw)
    # The field's own dotted path (it read `budget: trials:` before), the rule and the fix.
    given = "false" if field == "budget.concurrent" else "true"
    kind = "a number" if field == "resources.cpu" else "a whole number"
    assert [str(p) for p in err.value.problems] == [f"{field}: expected {kind}, got {given} (a boolean); write {kind}"]


def test_a_boolean_in_a_cluster_file_names_its_field(tmp_path):
    """The cluster file's `metadata.hpo` section names the field too, not the section it sits in."""
    from orchestrator.cluster.spec import ClusterConfigError, load

    path = tmp_path / "c.yaml"
    path.write_text((EXPERIMENTS.parent / "cluster" / "local.yaml").read_text().replace(
        "      gcs_port: 6380", "      gcs_port: true"))
    with pytest.raises(ClusterConfigError) as err:
        load(path)
    assert "metadata.hpo.local.gcs_port: expected a whole number, got true (a boolean)" in str(err.value)


@pytest.mark.parametrize("path", sorted(EXPERIMENTS.glob("*.yaml")), ids=lambda p: p.name)
def test_the_resolved_spec_validates_again_to_the_same_spec(path):
    exp = load_spec(path)
    again = validate(yaml.safe_load(yaml.safe_dump(exp.resolved())), base_dir=path.parent)
    assert again.resolved() == exp.resolved() and again.spec_hash == exp.spec_hash


@pytest.mark.parametrize("evaluation", [{"protocol": "kfold", "folds": 3},
                                        {"protocol": "nested", "outer_folds": 2, "inner": "kfold", "folds": 3}])
def test_a_resolved_evaluation_section_validates_again(evaluation):
    exp = validate({**XGB, "evaluation": evaluation})
    assert validate(exp.resolved()).spec.evaluation == exp.spec.evaluation


def test_a_misspelt_hyperparameter_is_refused_with_a_did_you_mean():
    with pytest.raises(SpecError) as caught:
        validate({**XGB, "space": {"learnig_rate": 0.1}})
    msg = str(caught.value)
    assert "space.learnig_rate: family xgboost has no parameter 'learnig_rate'; did you mean 'learning_rate'?" in msg
    assert "max_depth" in msg and "extra_params: [learnig_rate]" in msg


def test_a_library_parameter_the_family_does_not_list_passes_when_declared():
    exp = validate({**XGB, "space": {"max_bin": 64, "my_new_xgb_param": 2}, "extra_params": ["my_new_xgb_param"]})
    assert exp.params["my_new_xgb_param"].args == (2,)
    with pytest.raises(SpecError, match=r"extra_params\[0\]: 'nope' is not in space"):
        validate({**XGB, "extra_params": ["nope"]})


def test_families_that_pass_names_on_unchecked_refuse_extra_params():
    assert validate({**XGB, "family": "sklearn", "space": {"estimator": "sklearn.svm.SVC", "C": 1.0}})
    with pytest.raises(SpecError, match="passes every name on unchecked"):
        validate({**XGB, "family": "lightgbm", "space": {"max_bin": 63}, "extra_params": ["max_bin"]})


def test_only_rays_sigterm_exit_traceback_is_dropped():
    """What a reused worker printed at the end of every run (seen on the console), and what must stay."""
    from orchestrator.ray_api import without_sigterm_exits

    ray_exit = ["Exception ignored in: <function WeakSet.__init__.<locals>._remove at 0x7f28a0cb25c0>",
                "Traceback (most recent call last):",
                '  File "/usr/lib/python3.11/_weakrefset.py", line 39, in _remove',
                "    def _remove(item, selfref=ref(self)):",
                "",
                '  File ".../ray/_private/worker.py", line 1063, in sigterm_handler',
                "    raise_sys_exit_with_custom_error_message(",
                "SystemExit: 1"]
    users = ["Traceback (most recent call last):", '  File "t.py", line 3, in train', "SystemExit: 3"]
    assert without_sigterm_exits(["epoch 1", *ray_exit, "epoch 2"]) == ["epoch 1", "epoch 2"]
    assert without_sigterm_exits(["a", *users, "b"]) == ["a", *users, "b"]  # a user's own exit stays
    value_error = ["Traceback (most recent call last):", "  File 'x'", "ValueError: sigterm_handler broke"]
    assert without_sigterm_exits(value_error) == value_error


# --- 7. a lost worker (issue 15, node loss; the 2-node version is in tests/test_cluster.py) ------

@pytest.mark.slow
@pytest.mark.parametrize("scheduler", ["", "scheduler: {name: hyperband, max_t: 2}\n"], ids=["fifo", "hyperband"])
def test_a_trial_whose_worker_dies_is_retried_and_its_error_names_the_node(ray_local, write_spec, tmp_path, scheduler,
                                                                          capfd):
    """The worker process of each trial's first attempt is killed (SIGKILL, as the OOM killer or a
    lost node would end it): Ray retries it once (budget.max_failures default 1); the retry finishes,
    and the trial's `error` says which node was lost. Under HyperBand too: Tune takes the retried
    trial out of its bracket and adds it again, and the run must go on to its end."""
    marks = tmp_path / "marks"
    marks.mkdir()
    exp = _user_spec(write_spec, tmp_path, f"""    import os, signal
    mark = os.path.join({str(marks)!r}, str(config['x']))
    tune.report({{'loss': config['x']}})
    if not os.path.exists(mark):
        open(mark, 'w').close()
        os.kill(os.getpid(), signal.SIGKILL)
    tune.report({{'loss': config['x'] / 2}})
""", extra=scheduler)
    summary = run(exp, tmp_path / "run", quiet=True)
    trials = pd.read_parquet(tmp_path / "run" / "trials.parquet")
    node = ray_local.get_runtime_context().get_node_id()
    assert summary.counts["completed"] == 2 and (trials["retries"] == 1).all(), trials.to_string()
    assert trials["error"].str.match(rf"its worker on node \S+ \(id {node[:12]}\) was lost: ").all(), trials["error"]
    assert (trials["score"] == trials["config.x"] / 2).all()  # the retry ran to its end
    retried = [line for line in capfd.readouterr().err.splitlines() if "; retrying, 1 of budget.max_failures=1" in line]
    assert len(retried) == 2, retried  # --quiet hides the progress, not a lost worker


def test_a_trial_no_live_node_can_hold_is_refused_before_the_run_and_leaves_the_folder_free(
        ray_local, write_spec, tmp_path):
    """The embedded Ray has no GPU: `gpu: 1` would leave every trial pending forever."""
    exp = _user_spec(write_spec, tmp_path, "    tune.report({'loss': 1.0})\n", extra="resources: {gpu: 1}\n")
    with pytest.raises(SpecError, match=r"resources.gpu: no live node of this Ray can run a trial needing "
                                        r"cpu=1, gpu=1 \(live nodes: "):
        run(exp, tmp_path / "run", quiet=True)
    assert not list((tmp_path / "run").glob("*"))


def test_a_tuner_that_cannot_be_built_ends_the_run_failed_not_running(ray_local, write_spec, tmp_path, monkeypatch):
    """Building the Tuner is inside the run's one failure path: the error is the run's, and
    experiment.json says failed (it said `running` forever when Tune's restore raised)."""
    import orchestrator.run.driver as runner_mod

    def broken(*args, **kwargs):
        raise RuntimeError("cannot restore")

    monkeypatch.setattr(runner_mod, "build_tuner", broken)
    exp = _user_spec(write_spec, tmp_path, "    tune.report({'loss': 1.0})\n")
    with pytest.raises(RunError, match="RuntimeError: cannot restore"):
        run(exp, tmp_path / "run", quiet=True)
    meta = json.loads((tmp_path / "run" / "experiment.json").read_text())
    assert meta["status"] == "failed" and "cannot restore" in meta["error"]


@pytest.mark.parametrize("value, ok", [(0, True), (3, True), (-1, False), (True, False)])
def test_max_failures_is_a_count_from_zero(write_spec, value, ok):
    path = write_spec(f"name: t\nfamily: synthetic\nmetric: {{name: loss}}\nbudget: {{max_failures: {str(value).lower()}}}\n")
    if ok:
        assert load_spec(path).spec.budget.max_failures == value
    else:
        with pytest.raises(SpecError, match="max_failures"):
            load_spec(path)


def test_max_failures_defaults_to_one_retry_and_reaches_rays_failure_config(write_spec, tmp_path):
    from orchestrator.run.callbacks import RetryLostWorkersOnly
    from orchestrator.run.tuner import build_tuner

    exp = load_spec(write_spec("name: t\nfamily: synthetic\nmetric: {name: loss}\n"))
    assert exp.spec.budget.max_failures == 1
    tuner = build_tuner(exp, tmp_path, [])
    run_config = tuner._local_tuner.get_run_config()
    assert run_config.failure_config.max_failures == 1
    assert any(isinstance(c, RetryLostWorkersOnly) for c in run_config.callbacks)

"""Experiment tracking (orchestrator.tracking) with the real libraries: an MLflow SQLite store read
back with MlflowClient, tensorboardX event files and W&B offline runs read back record by record.
Also the registry (orchestrator.tracking.spec.TRACKERS) against the spec and the lock, and `check`.

The readers below are written from the files' formats (TFRecord; W&B's LevelDB-style log of
protobuf records), not from our writers, so they are an independent check of what was written.
W&B needs no account: offline mode, and no key is set (a canary key is, to prove it is not written).
"""

from __future__ import annotations

import json
import os
import struct
import time
import tomllib
from pathlib import Path

import pandas as pd
import pytest

from orchestrator.errors import SpecError
from orchestrator.results.contract import HELD
from orchestrator.results.writer import Recorder
from orchestrator.spec.load import load_spec, validate
from orchestrator.tracking.backend import Backend
from orchestrator.tracking.listener import open_tracking
from orchestrator.tracking.spec import TRACKERS, TrackingSpec, check
from tests.conftest import EXPERIMENTS

ROOT = Path(__file__).resolve().parent.parent

CANARIES = {"WANDB_API_KEY": "canarywandbkey0123456789abcdef0123456789ab",
            "MLFLOW_TRACKING_TOKEN": "canary-mlflow-token-42", "HPO_TEST_SECRET": "canary-secret-env-7"}


def tensorboard_scalars(trial_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)] from every TFRecord event file in a trial's folder."""
    from tensorboardX.proto.event_pb2 import Event

    out: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(trial_dir.glob("events.out.tfevents.*")):
        data, pos = path.read_bytes(), 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos:pos + 8])
            event = Event.FromString(data[pos + 12:pos + 12 + length])
            pos += 12 + length + 4  # length, its crc, the record, its crc
            for v in event.summary.value:
                out.setdefault(v.tag, []).append((event.step, v.simple_value))
    return out


def wandb_records(path: Path):
    """The protobuf records of one W&B run file (a 7-byte header, then LevelDB log blocks)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, pos, block, buf = path.read_bytes(), 7, 32768, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        buf = chunk if kind in (1, 2) else buf + chunk  # FULL/FIRST start a record, MIDDLE/LAST extend it
        if kind in (1, 4):
            yield pb.Record.FromString(buf)


def wandb_runs(run_dir: Path) -> dict[str, dict]:
    """trial id -> {group, config, steps: {step: {key: value}}, exit} of every offline run."""
    runs = {}
    for path in (run_dir / "wandb").glob("offline-run-*/run-*.wandb"):
        run = {"steps": {}, "exit": None}
        for rec in wandb_records(path):
            kind = rec.WhichOneof("record_type")
            if kind == "run":
                run.update(name=rec.run.display_name, group=rec.run.run_group, project=rec.run.project,
                           config={i.key: json.loads(i.value_json) for i in rec.run.config.update if i.key != "_wandb"})
            elif kind == "history":
                items = {i.key or ".".join(i.nested_key): json.loads(i.value_json) for i in rec.history.item}
                run["steps"][rec.history.step.num] = {k: v for k, v in items.items() if not k.startswith("_")}
            elif kind == "exit":
                run["exit"] = rec.exit.exit_code
        runs[run["name"]] = run
    return runs


def mlflow_runs(uri: str, experiment: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = {r.info.run_name: r for r in runs if "mlflow.parentRunId" in r.data.tags}
    return client, parents, children


def same(points, expected) -> bool:
    """The same iterations with the same values (TensorBoard keeps float32)."""
    return ([s for s, _ in points] == [s for s, _ in expected]
            and [v for _, v in points] == pytest.approx([v for _, v in expected], rel=1e-6))


def all_text(run_dir: Path) -> str:
    return "\n".join(p.read_bytes().decode("latin-1") for p in run_dir.rglob("*") if p.is_file())


# -- the spec ------------------------------------------------------------------------------------------

def test_tracking_is_off_unless_asked_and_true_means_the_defaults():
    base = {"name": "t", "family": "synthetic", "metric": {"name": "loss"}}
    assert not validate(base).spec.tracking.enabled
    spec = validate({**base, "tracking": {"mlflow": True, "wandb": True}}).spec.tracking
    assert spec.mlflow.tracking_uri is None and spec.wandb.mode == "offline" and not spec.tensorboard
    exp = validate({**base, "tracking": {"mlflow": {"experiment_name": "e"}, "tensorboard": True}})
    again = validate(exp.resolved())
    assert again.spec.tracking == exp.spec.tracking and again.spec_hash == exp.spec_hash


def test_tracking_mistakes_are_reported_with_their_path_and_a_password_is_never_echoed():
    raw = {"name": "t", "family": "synthetic", "metric": {"name": "loss"},
           "tracking": {"mlflow": {"tracking_uri": "https://bob:hunter2@mlflow.example.com", "experimnt_name": "x"},
                        "tensorbord": True, "wandb": {"mode": "onlin"}}}
    with pytest.raises(SpecError) as info:
        validate(raw)
    text = str(info.value)
    assert "hunter2" not in text
    assert "tracking.mlflow.tracking_uri: carries a credential (user info before '@')" in text
    assert "tracking.mlflow.experimnt_name: unknown key; did you mean 'experiment_name'?" in text
    assert "tracking.tensorbord: unknown key; did you mean 'tensorboard'?" in text
    assert "tracking.wandb.mode:" in text


@pytest.mark.parametrize("uri", ["https://bob@mlflow.example.com", "https://mlflow.example.com/?api_token=s3cr3t",
                                 "databricks://x?Authorization=s3cr3t"])
def test_a_tracking_uri_with_any_credential_is_refused_without_echoing_it(uri):
    raw = {"name": "t", "family": "synthetic", "metric": {"name": "loss"},
           "tracking": {"mlflow": {"tracking_uri": uri}}}
    with pytest.raises(SpecError) as info:
        validate(raw)
    assert "tracking.mlflow.tracking_uri: carries a credential" in str(info.value)
    assert "s3cr3t" not in str(info.value) and "bob" not in str(info.value)


def test_a_run_without_tracking_imports_no_tracker():
    """Opt-in: validating a spec and building the runner load neither MLflow, W&B nor tensorboardX."""
    import subprocess
    import sys

    code = ("import sys; from orchestrator.run import driver, lifecycle, tuner; from orchestrator.spec import experiment; "
            "print(sorted(m for m in ('mlflow', 'wandb', 'tensorboardX') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=EXPERIMENTS.parent,
                         env={**os.environ, "PYTHONPATH": str(EXPERIMENTS.parent)})
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout + out.stderr



# -- the registry ----------------------------------------------------------------------------------------

def test_every_registry_entry_is_a_field_of_the_spec_and_every_field_an_entry():
    assert {t.field for t in TRACKERS.values()} == set(TrackingSpec.model_fields)
    assert len({t.field for t in TRACKERS.values()}) == len(TRACKERS)


@pytest.mark.parametrize("name", sorted(TRACKERS))
def test_every_registry_entry_loads_a_backend_of_its_name_whose_package_is_pinned(name):
    """The backend's name keys experiment.json's busy_s and the failure lines; the pip name is the
    one `check` tells the user to install, and says requirements.lock pins."""
    tracker = TRACKERS[name]
    backend = tracker.load()
    assert issubclass(backend, Backend) and backend is not Backend and backend.name == name
    assert tracker.modules and not tracker.missing()  # the test environment has every tracker
    pins = {line.split("==")[0].strip().lower() for line in (ROOT / "requirements.lock").read_text().splitlines()
            if "==" in line and not line.lstrip().startswith("#")}
    assert tracker.pip.lower() in pins
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["tracking"]
    assert any(req.lower().startswith(tracker.pip.lower()) for req in extra), extra


def test_the_spec_side_and_check_import_no_tracker_library():
    """`check` looks modules up without importing them, and loading a backend class imports only our module."""
    import subprocess
    import sys

    code = ("import sys; from orchestrator.tracking.spec import TRACKERS, TrackingSpec, check; "
            "spec = TrackingSpec.model_validate({'mlflow': True, 'tensorboard': True, 'wandb': True}); "
            "assert check(spec) == [], check(spec); [t.load() for t in TRACKERS.values()]; "
            "print(sorted(m for m in ('mlflow', 'wandb', 'tensorboardX') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout + out.stderr


def test_check_names_each_missing_package_with_its_path_and_the_fix(monkeypatch):
    """Every tracker on, none installed (find_spec finds nothing): one line per tracker."""
    import importlib.util

    looked_up = []
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: looked_up.append(name))
    spec = TrackingSpec.model_validate({"mlflow": True, "tensorboard": True, "wandb": True})
    assert [str(p) for p in check(spec)] == [
        "tracking.mlflow: needs mlflow-skinny, which is not installed: pip install mlflow-skinny "
        "(pinned in requirements.lock), or remove tracking.mlflow",
        "tracking.tensorboard: needs tensorboardX, which is not installed: pip install tensorboardX "
        "(pinned in requirements.lock), or remove tracking.tensorboard",
        "tracking.wandb: needs wandb, which is not installed: pip install wandb "
        "(pinned in requirements.lock), or remove tracking.wandb"]
    assert sorted(looked_up) == ["mlflow", "tensorboardX", "wandb"]
    looked_up.clear()
    assert check(TrackingSpec()) == [] and check(TrackingSpec(tensorboard=False, wandb=None)) == []
    assert looked_up == []  # a tracker that is off is not looked up


def test_check_reports_only_the_tracker_whose_module_is_missing(monkeypatch):
    """A registry entry whose module does not exist (a fake entry in place of MLflow's)."""
    from dataclasses import replace

    monkeypatch.setitem(TRACKERS, "mlflow", replace(TRACKERS["mlflow"], modules=("mlflow", "hpo_no_such_module_x"),
                                                    pip="hpo-no-such-package"))
    spec = TrackingSpec.model_validate({"mlflow": {"experiment_name": "e"}, "tensorboard": True})
    problems = check(spec)
    assert len(problems) == 1 and problems[0].path == "tracking.mlflow"
    assert str(problems[0]) == ("tracking.mlflow: needs hpo-no-such-package, which is not installed: pip install "
                                "hpo-no-such-package (pinned in requirements.lock), or remove tracking.mlflow")
    assert "\n" not in str(problems[0]) and TRACKERS["mlflow"].missing() == ["hpo_no_such_module_x"]
    assert check(TrackingSpec(tensorboard=True)) == []

# -- the trackers, fed by a Recorder (no Ray) ------------------------------------------------------------

@pytest.fixture
def canaries(monkeypatch):
    for k, v in CANARIES.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("WANDB_MODE", raising=False)


def test_every_tracker_gets_each_iteration_of_a_batched_result_and_each_trial_end(tmp_path, canaries):
    """Two trials; the second result of each carries three iterations its trial held back (as a
    built-in family batches reports): every tracker must show four points, numbered 1..4."""
    spec = TrackingSpec.model_validate({"mlflow": True, "tensorboard": True, "wandb": True})
    tracking = open_tracking(spec, tmp_path, "run-1", "exp", {"name": "exp", "space": {"x": {"uniform": [0, 1]}}},
                             "loss")
    recorder = Recorder(tmp_path, "loss", "min")
    recorder.listeners.append(tracking)
    now = time.time()
    for trial, x in (("t_ok", 0.25), ("t_bad", 0.75)):
        recorder.start(trial, {"x": x})
        recorder.result(trial, {"x": x}, {"loss": 3.0 + x, "training_iteration": 1, "time_total_s": 0.1})
        held = [{"iteration": i, "at": now + i, "metrics": {"loss": 3.0 + x - i / 10}} for i in (2, 3, 4)]
        recorder.result(trial, {"x": x}, {"loss": 2.6 + x, "training_iteration": 4, "time_total_s": 0.4, HELD: held})
    recorder.complete("t_ok")
    recorder.error("t_bad", "ValueError: boom")
    recorder.close()
    assert tracking.close("finished", recorder.best.row()) == []
    history = pd.read_parquet(tmp_path / "history.parquet")
    expected = {t: sorted(zip(h["iteration"].astype(int), h["metric.loss"])) for t, h in history.groupby("trial_id")}
    assert {t: [i for i, _ in pts] for t, pts in expected.items()} == {"t_ok": [1, 2, 3, 4], "t_bad": [1, 2, 3, 4]}

    client, parents, children = mlflow_runs(f"sqlite:///{tmp_path / 'mlflow.db'}", "exp")
    assert [p.info.run_name for p in parents] == ["run-1"] and parents[0].info.status == "FINISHED"
    assert parents[0].data.params["space.x"] == str({"uniform": [0, 1]})
    assert parents[0].data.tags["hpo.best_trial"] == "t_ok" and parents[0].data.metrics["best_loss"] == 2.85
    assert {t: r.info.status for t, r in children.items()} == {"t_ok": "FINISHED", "t_bad": "FAILED"}
    assert children["t_bad"].data.tags["hpo.error"] == "ValueError: boom"
    for trial, run in children.items():
        assert run.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert run.data.params == {"x": str(dict(t_ok=0.25, t_bad=0.75)[trial])}
        points = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, "loss"))
        assert same(points, expected[trial])

    for trial in expected:
        assert same(tensorboard_scalars(tmp_path / "tensorboard" / trial)["loss"], expected[trial])

    runs = wandb_runs(tmp_path)
    assert set(runs) == {"t_ok", "t_bad"}
    for trial, run in runs.items():
        assert run["group"] == "run-1" and run["project"] == "exp" and run["config"] == {"x": dict(t_ok=0.25, t_bad=0.75)[trial]}
        assert same(sorted((s, v["loss"]) for s, v in run["steps"].items()), expected[trial])
    assert runs["t_ok"]["exit"] == 0 and runs["t_bad"]["exit"] == 1

    text = all_text(tmp_path)
    assert not [k for k, v in CANARIES.items() if v in text], "a secret from the environment was written"


def test_a_failing_tracker_is_dropped_with_one_line_and_the_others_carry_on(tmp_path):
    """A real failure: an MLflow store under a path that cannot exist (a file where its folder should be)."""
    (tmp_path / "not-a-dir").write_text("")
    spec = TrackingSpec.model_validate({"mlflow": {"tracking_uri": f"sqlite:///{tmp_path}/not-a-dir/m.db"},
                                        "tensorboard": True})
    tracking = open_tracking(spec, tmp_path, "run-1", "exp", {"name": "exp"}, "loss")
    recorder = Recorder(tmp_path, "loss", "min")
    recorder.listeners.append(tracking)
    recorder.start("t1", {"x": 1})
    recorder.result("t1", {"x": 1}, {"loss": 1.0, "training_iteration": 1})
    recorder.complete("t1")
    lines = tracking.close("finished", None)
    assert len(lines) == 1 and lines[0].startswith("tracking: mlflow: open failed (") and "\n" not in lines[0]
    assert tensorboard_scalars(tmp_path / "tensorboard" / "t1")["loss"] == [(1, 1.0)]


# -- a whole run on Ray --------------------------------------------------------------------------------

def test_the_example_spec_tracks_every_trial_of_a_real_run(ray_local, tmp_path, canaries):
    """experiments/synthetic_tracking.yaml at a smoke size, under ASHA (whose trials batch their
    reports): each tracker holds exactly history.parquet, trial by trial, iteration by iteration,
    and no W&B or MLflow process outlives the run."""
    import psutil

    from orchestrator.run.driver import run

    before = {p.pid for p in psutil.Process().children(recursive=True)}
    exp = load_spec(EXPERIMENTS / "synthetic_tracking.yaml", ["budget.trials=4"])
    summary = run(exp, tmp_path / "run", quiet=True)
    run_dir = summary.run_dir
    trials, history = pd.read_parquet(run_dir / "trials.parquet"), pd.read_parquet(run_dir / "history.parquet")
    expected = {t: sorted(zip(h["iteration"].astype(int), h["metric.loss"])) for t, h in history.groupby("trial_id")}
    assert len(expected) == 4 and min(len(v) for v in expected.values()) >= 3  # ASHA's first rung: batched reports

    stats = json.loads((run_dir / "experiment.json").read_text())["tracking"]
    assert stats["iterations"] == len(history) and stats["errors"] == {} and set(stats["busy_s"]) == {
        "mlflow", "tensorboard", "wandb"}
    client, parents, children = mlflow_runs(f"sqlite:///{run_dir / 'mlflow.db'}", "branin-tracked")
    assert [p.info.run_name for p in parents] == [summary.run_id] and parents[0].info.status == "FINISHED"
    assert set(children) == set(expected)
    for trial, run_ in children.items():
        points = sorted((m.step, m.value) for m in client.get_metric_history(run_.info.run_id, "loss"))
        assert same(points, expected[trial]), trial
        assert run_.data.tags["hpo.status"] == trials.set_index("trial_id").loc[trial, "status"]
    for trial in expected:
        assert same(tensorboard_scalars(run_dir / "tensorboard" / trial)["loss"], expected[trial])
    runs = wandb_runs(run_dir)
    assert set(runs) == set(expected) and {r["group"] for r in runs.values()} == {summary.run_id}
    for trial, r in runs.items():
        assert same(sorted((s, v["loss"]) for s, v in r["steps"].items()), expected[trial])

    text = all_text(run_dir)
    assert not [k for k, v in CANARIES.items() if v in text], "a secret from the environment was written"
    left = [p for p in psutil.Process().children(recursive=True) if p.pid not in before and p.is_running()
            and any(w in " ".join(p.cmdline()) for w in ("wandb", "mlflow"))]
    assert not left, [p.cmdline() for p in left]
    assert os.environ["WANDB_API_KEY"] == CANARIES["WANDB_API_KEY"]  # read by nobody, changed by nobody


def test_a_resumed_run_ends_what_the_killed_one_left_running_in_mlflow(tmp_path):
    """A driver killed mid-run never closes its runs; `hpo resume` (same run id, same store) ends
    them KILLED and tracks the rest under a new parent run of the same name."""
    spec = TrackingSpec(mlflow={})
    first = open_tracking(spec, tmp_path, "run-1", "exp", {"name": "exp"}, "loss")
    recorder = Recorder(tmp_path, "loss", "min")
    recorder.listeners.append(first)
    recorder.start("t1", {"x": 1})
    recorder.result("t1", {"x": 1}, {"loss": 1.0, "training_iteration": 1})
    deadline = time.monotonic() + 60
    while first.iterations_logged < 1 and time.monotonic() < deadline:  # the killed driver's thread got that far
        time.sleep(0.05)
    # ... and was killed: no close. The resumed run:
    second = open_tracking(spec, tmp_path, "run-1", "exp", {"name": "exp"}, "loss")
    assert second.close("finished", None) == []
    _, parents, children = mlflow_runs(f"sqlite:///{tmp_path / 'mlflow.db'}", "exp")
    assert sorted(p.info.status for p in parents) == ["FINISHED", "KILLED"]
    assert {p.info.run_name for p in parents} == {"run-1"}
    assert children["t1"].info.status == "KILLED" and children["t1"].data.tags["hpo.status"] == "interrupted"


def test_a_pickled_tracking_is_a_listener_that_does_nothing(tmp_path):
    """Tune pickles its callbacks, and so the Recorder's listeners, into its snapshot."""
    import pickle

    tracking = open_tracking(TrackingSpec(tensorboard=True), tmp_path, "r", "e", {}, "loss")
    recorder = Recorder(tmp_path, "loss", "min")
    recorder.listeners.append(tracking)
    copy = pickle.loads(pickle.dumps(recorder))
    copy.start("t1", {"x": 1})
    copy.result("t1", {"x": 1}, {"loss": 1.0, "training_iteration": 1})
    copy.complete("t1")
    assert tracking.close("finished", None) == [] and not (tmp_path / "tensorboard").exists()

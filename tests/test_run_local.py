"""End to end on the session's real local Ray: YAML -> Tuner -> Parquet."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pandas as pd
import pytest

from orchestrator import load_model
from orchestrator.errors import InputError, ModelError, RunError
from orchestrator.run.driver import run
from orchestrator.run.tuner import build_tune_config
from orchestrator.search.resumable import base_searcher
from orchestrator.spec.load import load_spec, validate
from tests.conftest import EXPERIMENTS, ROOT

SMALL_XGB = """
name: xgb-small
family: xgboost
data: {source: sklearn, name: digits}
metric: {name: val_error, mode: min}
space:
  n_estimators: 20
  learning_rate: {loguniform: [0.01, 0.3]}
  max_depth: {randint: [2, 6]}
  booster: {choice: [gbtree, dart]}
searcher: {name: optuna-tpe, seed: 1, n_startup_trials: 4}
scheduler: {name: asha, max_t: 20, grace_period: 2, reduction_factor: 3}
budget: {trials: 10, concurrent: 2}
"""


def test_build_tune_config_without_ray():
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    exp = validate(__import__("yaml").safe_load(SMALL_XGB))
    cfg, space = build_tune_config(exp)
    assert isinstance(base_searcher(cfg.search_alg), OptunaSearch) and space == {}  # define-by-run owns the space
    assert isinstance(cfg.scheduler, ASHAScheduler) and cfg.scheduler._max_t == 20
    assert (cfg.metric, cfg.mode, cfg.num_samples) == ("val_error", "min", 10)
    assert cfg.search_alg.searcher.max_concurrent == 2 and cfg.max_concurrent_trials is None  # one owner: the limiter
    assert cfg.reuse_actors is True


@pytest.mark.slow
def test_xgboost_run_writes_typed_parquet_and_asha_stops_early(ray_local, write_spec, tmp_path):
    exp = load_spec(write_spec(SMALL_XGB))
    summary = run(exp, tmp_path / "run", quiet=True)

    trials = pd.read_parquet(summary.run_dir / "trials.parquet")
    history = pd.read_parquet(summary.run_dir / "history.parquet")
    meta = json.loads((summary.run_dir / "experiment.json").read_text())

    assert len(trials) == 10 and trials["trial_id"].is_unique
    assert str(trials["config.max_depth"].dtype) == "int64"
    assert str(trials["config.learning_rate"].dtype) == "float64"
    assert set(trials["config.booster"]) <= {"gbtree", "dart"}
    assert trials["config.n_estimators"].eq(20).all()
    assert {"metric.val_error", "metric.val_log_loss", "metric.val_accuracy"} <= set(trials.columns)
    assert trials["status"].isin(["completed", "stopped"]).all()
    # ASHA really stopped some trials: they have fewer history rows than the full 20 rounds.
    rows = history.groupby("trial_id").size()
    stopped = trials.loc[trials.status == "stopped", "trial_id"]
    assert len(stopped) >= 1 and (rows[stopped] < 20).all()
    assert (rows[trials.loc[trials.status == "completed", "trial_id"]] == 20).all()
    assert rows.to_dict() == trials.set_index("trial_id")["iterations"].to_dict()
    assert trials["score"].min() < 0.2  # digits is easy: a real model was trained
    assert meta["status"] == "finished" and meta["spec"]["metric"]["mode"] == "min"
    assert meta["versions"]["ray"].startswith("2.60") and meta["best"]["trial_id"] in set(trials.trial_id)


@pytest.mark.slow
def test_user_trainable_from_a_file_runs_unchanged(ray_local, tmp_path):
    exp = load_spec(EXPERIMENTS / "user_trainable.yaml", ["budget.trials=4"])
    summary = run(exp, tmp_path / "run", quiet=True)
    trials = pd.read_parquet(summary.run_dir / "trials.parquet")
    history = pd.read_parquet(summary.run_dir / "history.parquet")
    assert len(trials) == 4 and set(trials.status) <= {"completed", "stopped"}
    assert {"metric.loss", "metric.x", "config.lr"} <= set(history.columns)
    assert trials["score"].notna().all()
    # Nothing refitted: the card links the best trial's latest checkpoint as the trainable saved it.
    meta = json.loads((summary.run_dir / "experiment.json").read_text())
    card = json.loads((summary.run_dir / "model" / "model.json").read_text())
    best = meta["best"]["trial_id"]
    assert card["format"] is None and card["trial_id"] == best and meta["model"]["checkpoint"] == card["checkpoint"]
    assert card["checkpoint"].startswith(f"tune/{best}/checkpoint_")
    steps = json.loads((summary.run_dir / card["checkpoint"] / "state.json").read_text())["step"]
    assert steps == trials.set_index("trial_id").loc[best, "iterations"]
    with pytest.raises(ModelError, match="describes a checkpoint of your own trainable"):
        load_model(summary.run_dir)


@pytest.mark.slow
def test_metric_the_trainable_never_reports_fails_clearly_and_keeps_results(ray_local, write_spec, tmp_path):
    (tmp_path / "bad.py").write_text(
        "from ray import tune\n\ndef train(config):\n    for i in range(3):\n        tune.report({'los': 1.0})\n")
    path = write_spec("name: bad\nfamily: bad.py:train\nmetric: {name: loss, mode: min}\nspace: {a: {uniform: [0, 1]}}\n"
                      "budget: {trials: 2}\n")
    with pytest.raises(RunError, match="never reports the spec's metric 'loss'"):
        run(load_spec(path), tmp_path / "run", quiet=True)
    meta = json.loads((tmp_path / "run" / "experiment.json").read_text())
    assert meta["status"] == "failed" and "loss" in meta["error"]
    assert (tmp_path / "run" / "trials.parquet").exists()


def test_existing_results_are_never_overwritten(write_spec, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "trials.parquet").write_bytes(b"precious")
    with pytest.raises(InputError, match="already holds results"):
        run(load_spec(write_spec(SMALL_XGB)), out)
    assert (out / "trials.parquet").read_bytes() == b"precious"


def test_cli_validate_exit_codes(write_spec):
    good = subprocess.run([sys.executable, "-m", "orchestrator.cli", "validate", str(EXPERIMENTS / "xgboost_digits.yaml")],
                          capture_output=True, text=True, cwd=ROOT)
    assert good.returncode == 0 and "name: xgb-digits" in good.stdout
    bad = subprocess.run([sys.executable, "-m", "orchestrator.cli", "validate", str(write_spec("name: x\nfamily: nope\n"))],
                         capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 2 and "metric: required" in bad.stderr


@pytest.mark.parametrize("reset, reuse", [(False, False), (True, True)])
def test_actor_reuse_only_for_classes_that_can_reset(write_spec, tmp_path, reset, reuse):
    """Tune loops forever trying to reuse a Trainable class without reset_config."""
    method = "    def reset_config(self, new_config):\n        return True\n" if reset else ""
    (tmp_path / "cls.py").write_text(
        "from ray import tune\n\nclass Quad(tune.Trainable):\n    def setup(self, config):\n        self.x = config['x']\n"
        "    def step(self):\n        return {'loss': self.x}\n" + method)
    exp = load_spec(write_spec("name: q\nfamily: cls.py:Quad\nmetric: {name: loss, mode: min}\n"
                               "space: {x: {uniform: [0, 1]}}\n"))
    cfg, _ = build_tune_config(exp)
    assert cfg.reuse_actors is reuse


def test_the_driver_holds_the_run_s_data_only_in_the_store_while_trials_search(ray_local):
    """orchestrator.run.run_data: the driver puts the Dataset in Ray's object store once and lets
    its own arrays go (they were a second copy of a 1M-row file for the whole search); after the
    search it copies them back, writable and its own, before Ray can shut down."""
    import gc
    import weakref

    import numpy as np
    import ray

    from orchestrator.run.run_data import RunData
    from orchestrator.spec.data import DataSpec, load

    dataset = load(DataSpec(name="digits"))
    expected = {f: getattr(dataset, f).copy() for f in ("X_train", "y_train", "X_valid", "X_test", "y_test")}
    own = weakref.ref(dataset)
    data = RunData(dataset, reload=lambda: pytest.fail("the object store still held the data"))
    del dataset
    ref = data.for_trials()
    gc.collect()
    assert isinstance(ref, ray.ObjectRef) and own() is None
    views = ray.get(ref)  # what a trial gets: read-only views of the store's one copy
    assert not views.X_train.flags.writeable
    back = data.after_search()
    for name, array in expected.items():
        got = getattr(back, name)
        assert got.flags.writeable and not np.shares_memory(got, getattr(views, name))
        assert got.dtype == array.dtype and np.array_equal(got, array)
    assert back.feature_names == views.feature_names and data.after_search() is back
    assert RunData(None, reload=lambda: None).for_trials() is None  # a family without data


def test_run_data_ray_cannot_give_back_is_read_again_or_skips_the_refit_only(ray_local, capsys):
    """Where the store cannot give the data back after the search (a Ray lost mid-run), it is read
    from its source again for the refit; if that fails too, the run still concludes (its record is
    written), with no refit."""
    import numpy as np
    import ray

    from orchestrator.run.run_data import RunData

    @ray.remote(num_cpus=0, max_retries=0)
    def lost():
        raise ConnectionError("the node holding it is gone")

    ref = lost.remote()  # a reference `ray.get` raises for, as for an object lost with its node
    again = RunData(np.arange(2.0), reload=lambda: "read again")
    again._ref, again._data = ref, None
    assert again.after_search() == "read again"

    def unreadable():
        raise OSError("no such file")

    gone = RunData(np.arange(2.0), reload=unreadable)
    gone._ref, gone._data = ref, None
    assert gone.after_search() is None
    assert "cannot be read again (no such file): no refit" in capsys.readouterr().err


def test_a_local_ray_starts_without_a_dashboard_process(ray_local):
    """Ray 2.60 starts its dashboard head even with include_dashboard=False, and ray.init waits
    for it (~1 s); a local Ray of ours has none (orchestrator.ray_api.without_dashboard_process),
    but still the raylet's own agents, which a run's trials need."""
    import psutil

    commands = [" ".join(p.cmdline()) for p in psutil.Process().children(recursive=True)]
    assert any("raylet" in c for c in commands) and any("dashboard/agent.py" in c for c in commands)
    assert not [c for c in commands if "dashboard/dashboard.py" in c]


def test_trial_actors_go_without_tune_s_runtime_env_where_it_changes_nothing_or_they_set_it(
        ray_local, monkeypatch):
    """Tune gives each trial actor an env-var runtime env, so the workers Ray prestarted (none) could
    not serve it. A local Ray's workers already inherit those values: no runtime env. Where they
    do not (a value the workers did not inherit, as on a joined Ray), the actor sets Tune's default
    itself as it is created. A variable Tune copies from the driver keeps Tune's own runtime env."""
    import ray
    from ray.train.constants import ENABLE_V2_MIGRATION_WARNINGS_ENV_VAR
    from ray.tune.execution import class_cache

    from orchestrator import ray_api
    from orchestrator.run import ray_local

    ray_api.trial_actors_on_prestarted_workers(ray_local.inherited_env)  # as every fit installs it

    class Trainable:
        pass

    assert os.environ["PL_DISABLE_FORK"] == "1"  # what Tune sets, in the environment Ray inherited
    assert "runtime_env" not in class_cache._ActorClassCache().get(Trainable)._default_options

    class Probe:
        def env(self):
            return os.environ.get("PL_DISABLE_FORK")

    monkeypatch.setitem(class_cache.DEFAULT_ENV_VARS, "PL_DISABLE_FORK", "2")  # not what the workers inherited
    remote = class_cache._ActorClassCache().get(Probe)
    assert "runtime_env" not in remote._default_options
    actor = remote.options(num_cpus=0).remote()
    try:
        assert ray.get(actor.env.remote(), timeout=120) == "2"
    finally:
        ray.kill(actor)

    monkeypatch.setenv(ENABLE_V2_MIGRATION_WARNINGS_ENV_VAR, "0")  # set after Ray started: not inherited
    env_vars = class_cache._ActorClassCache().get(Trainable)._default_options["runtime_env"]["env_vars"]
    assert env_vars[ENABLE_V2_MIGRATION_WARNINGS_ENV_VAR] == "0" and env_vars["PL_DISABLE_FORK"] == "2"


TELLS_ITS_RUNTIME_ENV = """
import json
import os

import ray
from ray import tune


def train(config):
    seen = {"runtime_env": ray.get_runtime_context().runtime_env, "PL_DISABLE_FORK": os.environ.get("PL_DISABLE_FORK")}
    with open(os.path.join(config["marks"], str(os.getpid())), "w") as f:
        json.dump(seen, f)
    tune.report({"loss": config["x"]})
"""


def _marking_spec(write_spec, tmp_path, code: str, budget: str):
    """A spec of the function trainable `code`, whose trials each leave a file in the folder `marks`
    (in the space): returns the spec's path and that folder."""
    (tmp_path / "marking.py").write_text(code)
    marks = tmp_path / "marks"
    marks.mkdir()
    return write_spec(f"""
name: marking
family: {tmp_path / "marking.py"}:train
metric: {{name: loss, mode: min}}
space: {{marks: {str(marks)!r}, x: {{uniform: [0, 1]}}}}
{budget}
"""), marks


@pytest.mark.slow
def test_a_run_on_a_ray_it_did_not_start_puts_its_trials_on_prestarted_workers(ray_local, write_spec, tmp_path,
                                                                              monkeypatch):
    """A notebook's own `ray.init()`: the run neither started nor joined that Ray, so nothing of
    ours saw it come up, and what its workers inherited is not known. The rule is installed as the
    run fits (orchestrator.run.lifecycle.fit): its trial actors come without Tune's runtime env,
    which would keep them off the workers Ray prestarted, and set Tune's value themselves."""
    import ray
    from ray.tune.execution import class_cache

    from orchestrator.run import ray_local as local

    get = class_cache._ActorClassCache.get
    monkeypatch.setattr(class_cache._ActorClassCache, "get", getattr(get, "__wrapped__", get))  # Tune's own
    monkeypatch.setattr(local, "_started", [])  # this process did not start the Ray it is connected to
    assert ray.is_initialized() and local.inherited_env() is None
    spec, marks = _marking_spec(write_spec, tmp_path, TELLS_ITS_RUNTIME_ENV, "budget: {trials: 2, concurrent: 2}")
    summary = run(load_spec(spec), tmp_path / "run", quiet=True)
    assert summary.status == "finished"
    seen = [json.loads(p.read_text()) for p in marks.iterdir()]
    assert seen and all(s["PL_DISABLE_FORK"] == "1" for s in seen)
    assert not [s for s in seen if "env_vars" in s["runtime_env"]], seen  # none came with Tune's runtime env


INSTANT = """
import os
from ray import tune


def train(config):
    open(os.path.join(config["marks"], str(os.getpid())), "w").close()
    tune.report({"loss": config["x"]})
"""


@pytest.mark.slow
def test_a_kept_actor_never_replaces_one_ray_is_creating(ray_local, write_spec, tmp_path, monkeypatch):
    """Trials that end at once, 4 at a time: the first ones end while the others' actors are still
    starting. Tune gave an ended trial's kept actor to such a trial and killed the actor Ray was
    creating for it, then asked for a new one for the next trial (bare Tune: 200 of 320 trials, 53
    workers for 16 slots). Here no actor Ray was creating is replaced (one still waiting for
    resources may be: the session's Ray can be busy with an earlier test's actors), kept actors
    are reused, and the 24 trials ran in 4 worker processes, plus one for each actor Tune did not
    keep because two trials ended in one step."""
    import logging

    from ray.tune.execution.tune_controller import TuneController

    from orchestrator import ray_api

    ray_api.reused_actors_never_replace_one_starting()
    reuse, remove = TuneController._maybe_reuse_cached_actor, TuneController._remove_actor
    reusing, reused, replaced = [], [], []

    def spy_reuse(self, trial):
        reusing.append(trial)
        try:
            took = reuse(self, trial)
        finally:
            reusing.pop()
        reused.extend([trial] if took else [])
        return took

    def spy_remove(self, tracked_actor):
        if reusing and self._actor_manager.is_actor_started(tracked_actor) and tracked_actor not in self._started_actors:
            replaced.append(tracked_actor)  # an actor Ray was creating, killed for a kept one
        return remove(self, tracked_actor=tracked_actor)

    spy_reuse._hpo_kept = True  # what the patch checks to stay idempotent
    monkeypatch.setattr(TuneController, "_maybe_reuse_cached_actor", spy_reuse)
    monkeypatch.setattr(TuneController, "_remove_actor", spy_remove)

    spec, marks = _marking_spec(write_spec, tmp_path, INSTANT, "budget: {trials: 24, concurrent: 4}\nresources: {cpu: 0.5}")
    said: list[str] = []

    class Said(logging.Handler):
        def emit(self, record):
            said.append(record.getMessage())

    controller, handler = logging.getLogger("ray.tune.execution.tune_controller"), Said()
    level = controller.level
    controller.setLevel(logging.DEBUG)
    controller.addHandler(handler)
    try:
        summary = run(load_spec(spec), tmp_path / "run", quiet=True)
    finally:
        controller.removeHandler(handler)
        controller.setLevel(level)
    trials = pd.read_parquet(summary.run_dir / "trials.parquet")
    assert len(trials) == 24 and (trials["status"] == "completed").all()
    assert replaced == [] and len(reused) >= 12, (replaced, len(reused))
    not_kept = sum(m.startswith("Terminating actor for trial") for m in said)
    assert len(list(marks.iterdir())) <= 4 + max(0, not_kept - 4)  # the last 4 are not kept: the search is over


def test_a_trial_actor_starts_without_importing_ipython():
    """Tune's actor imports IPython (0.3 s) to clear a shell: in a worker, as it imports our trainable
    module, that is skipped where nothing imported IPython, and still done where something did."""
    code = """
import sys
import orchestrator.trial.trainable
from ray.tune.trainable import trainable
trainable.disable_ipython()
print("IPython" in sys.modules)
from IPython.core.interactiveshell import InteractiveShell
InteractiveShell.instance()
trainable.disable_ipython()
print(InteractiveShell.initialized())
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["False", "False"]  # not imported; then, once imported, the shell cleared


def test_a_user_trainable_s_actor_starts_without_importing_ipython_too():
    """A user's trainable never imports our trainable module; every trainable is wrapped by
    orchestrator.trial.placement.recording, so importing that module in a worker skips the import too.
    In the driver, which imports it before Ray starts, it imports no Ray at all."""
    code = """
import sys
import orchestrator.trial.placement
print("ray" in sys.modules)
del sys.modules["orchestrator.trial.placement"]
import ray._private.worker as worker
worker.global_worker.mode = worker.WORKER_MODE
import orchestrator.trial.placement
from ray.tune.trainable import trainable
trainable.disable_ipython()
print("IPython" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["False", "False"]


def test_ray_start_finds_the_dashboard_dependencies_without_importing_them():
    """Ray imports aiohttp, grpc, opentelemetry... in the driver only to choose the agent's
    `--minimal` flag (0.4 s); in our local start they are looked up instead, and a missing one
    still gets Ray's own import check and its error."""
    code = (
        "import sys\n"
        "from ray._private import utils\n"
        "from orchestrator import ray_api\n"
        "with ray_api.without_dashboard_process():\n"
        "    found = utils.get_dashboard_dependency_error()\n"
        "print(found is None, 'aiohttp' in sys.modules, 'grpc' in sys.modules)\n"
        "ray_api.DASHBOARD_DEPENDENCIES = ('hpo_no_such_package',)\n"
        "with ray_api.without_dashboard_process():\n"
        "    found = utils.get_dashboard_dependency_error()\n"
        "print(found is None, 'aiohttp' in sys.modules, utils.get_dashboard_dependency_error.__module__)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    looked_up, fell_back = out.stdout.split("\n")[:2]
    assert looked_up == "True False False"
    assert fell_back == "True True ray._private.utils"  # Ray's check ran (and imported), then was put back


def test_what_the_driver_imports_while_ray_starts(write_spec, tmp_path):
    """Ray Tune always; the family's library only where the refit trains in this process (no GPU),
    and none for a user's trainable, whose imports are its own."""
    from orchestrator.run.lifecycle import imports_after_start
    from orchestrator.run.ray_local import imported_meanwhile

    xgb = load_spec(write_spec(SMALL_XGB))
    assert imports_after_start(xgb) == ("orchestrator.run.callbacks", "xgboost")
    on_gpu = load_spec(write_spec(SMALL_XGB), ["resources.gpu=1"])
    assert imports_after_start(on_gpu) == ("orchestrator.run.callbacks",)
    (tmp_path / "fn.py").write_text("from ray import tune\n\ndef f(config):\n    tune.report({'loss': config['x']})\n")
    user = load_spec(write_spec("name: u\nfamily: fn.py:f\nmetric: {name: loss, mode: min}\n"
                                "space: {x: {uniform: [0, 1]}}\n"))
    assert imports_after_start(user) == ("orchestrator.run.callbacks",)

    sys.modules.pop("email.mime.audio", None)
    with imported_meanwhile(("hpo_no_such_module", "email.mime.audio")):
        pass  # a failed import is left for the caller's own import to raise
    assert "email.mime.audio" in sys.modules

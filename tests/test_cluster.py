"""Cluster files, submission and the cluster path end to end on a real 2-node Ray cluster here.

Unit tests (no Ray started): the shipped cluster files pass Ray's own checks, broken ones are
refused with their path, the pre-flight names node types and capacities, packaging leaves the
right things out and sends no environment.

`local_cluster` (module scope) starts cluster/local.yaml's head and GPU worker (2 logical GPUs)
as real `ray start` processes on free ports, with its own temp dir, token file and results
folder, and always stops them by pid: a developer's own Ray and the session's `ray_local` are
never touched (no `ray stop`). The Jobs API is only reached over HTTP, as a user would.
"""

from __future__ import annotations

import io
import json
import os
import secrets
import stat
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pandas as pd
import pytest
import yaml

from orchestrator.cluster import jobs
from orchestrator.cluster import local as localcluster
from orchestrator.cluster import spec as cl
from orchestrator.errors import SpecError
from tests.conftest import EXPERIMENTS, ROOT

CLUSTERS = ROOT / "cluster"
CANARY = f"hpo-canary-{secrets.token_hex(8)}"  # a "secret" in the environment that must land nowhere


def _cluster_file(tmp: Path, edit=None, source: str = "local.yaml") -> Path:
    raw = yaml.safe_load((CLUSTERS / source).read_text())
    if edit:
        edit(raw)
    path = tmp / "cluster.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def _hpo(raw: dict) -> dict:
    return raw["metadata"]["hpo"]


def _cli(*args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "orchestrator.cli", *map(str, args)], capture_output=True,
                          text=True, cwd=ROOT, env=env, timeout=300)


# --- cluster files -----------------------------------------------------------------------------

@pytest.mark.parametrize("name, kind, gpus", [("local.yaml", "launcher", {"gpu_worker": 2}),
                                              ("aws-gpu.yaml", "launcher", {"gpu_worker": 1}),
                                              ("kuberay.yaml", "kuberay", {"gpu-workers": 1})])
def test_shipped_cluster_files_pass_rays_own_checks(name, kind, gpus):
    c = cl.load(CLUSTERS / name)
    assert c.kind == kind and c.head_type in c.node_types
    assert {n: t.gpu for n, t in c.node_types.items() if t.gpu} == gpus
    assert c.hpo.jobs_address.startswith("http://127.0.0.1:")  # reached over loopback or a tunnel
    assert c.is_local == (name == "local.yaml")


@pytest.mark.parametrize("edit, where, says", [
    (lambda r: r.update(bogus=1), "", "Additional properties are not allowed ('bogus'"),
    (lambda r: r["available_node_types"]["gpu_worker"]["resources"].update(GPU=-1),
     "available_node_types.gpu_worker.resources.GPU", "-1 is less than the minimum of 0"),
    (lambda r: r.update(head_node_type="nope"), "", "`head_node_type` must be one of `available_node_types`"),
    (lambda r: r.pop("metadata"), "metadata.hpo", "missing: add jobs_address, auth and storage"),
    (lambda r: _hpo(r)["local"].update(gcs_prot=1), "metadata.hpo.local.gcs_prot", "unknown key"),
    (lambda r: _hpo(r).update(storage="results"), "metadata.hpo.storage", "must be an absolute path"),
    (lambda r: _hpo(r)["auth"].update(token_env="T"), "metadata.hpo.auth", "exactly one of token_file or token_env"),
    (lambda r: _hpo(r)["local"].update(dashboard_host="127.0.0.1") or _hpo(r).update(jobs_address="http://10.0.0.5:8266"),
     "metadata.hpo", "jobs_address must name 127.0.0.1 too"),
])
def test_broken_cluster_files_are_refused_with_their_path(tmp_path, edit, where, says):
    with pytest.raises(cl.ClusterConfigError) as err:
        cl.load(_cluster_file(tmp_path, edit))
    problem = str(err.value)
    assert says in problem
    if where:
        assert f"  {where}: " in problem


def test_kuberay_file_needs_the_annotation(tmp_path):
    raw = yaml.safe_load((CLUSTERS / "kuberay.yaml").read_text())
    del raw["metadata"]["annotations"]
    path = tmp_path / "rc.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(cl.ClusterConfigError, match="metadata.annotations.hpo-orchestrator/config"):
        cl.load(path)


# --- pre-flight and packaging ------------------------------------------------------------------

def test_preflight_refuses_a_trial_no_node_type_can_hold_and_names_them():
    result = _cli("submit", EXPERIMENTS / "user_trainable.yaml", "--cluster", CLUSTERS / "local.yaml",
                  "--set", "resources.gpu=3")
    assert result.returncode == 2, result.stderr
    assert "resources: no node type of cluster hpo-local" in result.stderr
    assert "head (CPU 1, GPU 0; head); gpu_worker (CPU 2, GPU 2; 1-1 nodes)" in result.stderr
    assert "pending forever" in result.stderr


def test_capacity_counts_whole_and_fractional_gpus():
    c = cl.load(CLUSTERS / "local.yaml")
    assert cl.check_capacity(c, 0.5, 1).per_type == {"gpu_worker": 2}
    assert cl.check_capacity(c, 0.5, 0.5).per_type == {"gpu_worker": 4}
    assert cl.check_capacity(c, 1, 0).per_type == {"head": 1, "gpu_worker": 2}  # CPU trials use both nodes
    aws = cl.load(CLUSTERS / "aws-gpu.yaml")
    assert cl.check_capacity(aws, 4, 0.5).per_type == {"gpu_worker": 4 * 2}  # 2 per node, up to 4 nodes


def test_package_sends_code_and_spec_but_no_environment(monkeypatch):
    monkeypatch.setenv("HPO_TEST_SECRET", CANARY)
    c = cl.load(CLUSTERS / "aws-gpu.yaml")
    sub = jobs.package(c, EXPERIMENTS / "user_trainable.yaml", ["budget.trials=3"], ROOT)
    env = sub.runtime_env
    assert env["working_dir"] == str(ROOT)
    assert {".venv", ".git", "results", "__pycache__", ".ipynb_checkpoints"} <= set(env["excludes"])
    assert [Path(p).name for p in env["py_modules"]] == ["orchestrator", "experiments"]
    pins = env["pip"]["packages"]
    assert any(p.startswith("optuna==") for p in pins) and not any(p.startswith("ray==") for p in pins)
    assert sub.entrypoint == (f"python -m orchestrator.job_entry experiments/user_trainable.yaml --output "
                              f"s3://YOUR-BUCKET/hpo-results/user-trainable/{sub.job_id} --set budget.trials=3")
    assert sub.metadata["hpo_results"] == sub.results
    assert CANARY not in json.dumps([sub.entrypoint, env, sub.metadata])


def test_spec_outside_the_working_dir_is_refused(tmp_path):
    c = cl.load(CLUSTERS / "local.yaml")
    with pytest.raises(SpecError, match="outside the working dir"):
        jobs.package(c, EXPERIMENTS / "user_trainable.yaml", [], tmp_path)


# --- a real 2-node cluster on loopback ---------------------------------------------------------

def _loopback_cluster(tmp: Path) -> cl.Cluster:
    """cluster/local.yaml with its own free ports, token file, state, storage and temp dir in `tmp`."""
    def edit(raw):
        hpo = _hpo(raw)
        hpo["jobs_address"] = f"http://127.0.0.1:{cl.free_port()}"
        hpo["auth"] = {"token_file": str(tmp / "state" / "auth_token")}
        hpo["storage"] = str(tmp / "storage")
        hpo["local"].update(gcs_port=cl.free_port(), state_dir=str(tmp / "state"),
                            temp_dir=f"/tmp/hpo-test-{secrets.token_hex(3)}")  # short: socket paths

    return cl.load(_cluster_file(tmp, edit))


@pytest.fixture(scope="module")
def local_cluster(tmp_path_factory):
    """cluster/local.yaml on free ports; started with real `ray start`, always stopped by pid
    (and, should this test process be killed outright, by the kernel's parent-death signal)."""
    tmp = tmp_path_factory.mktemp("cluster")
    c = _loopback_cluster(tmp)
    old = os.environ.get("HPO_TEST_SECRET")
    os.environ["HPO_TEST_SECRET"] = CANARY  # the nodes, hence every job, inherit it
    try:
        t0 = time.monotonic()
        state = localcluster.up(c, log=lambda m: None, die_with_parent=True)
        print(f"\nlocal 2-node cluster up in {time.monotonic() - t0:.1f}s")
        yield c, state
    finally:
        if old is None:
            os.environ.pop("HPO_TEST_SECRET", None)
        else:
            os.environ["HPO_TEST_SECRET"] = old
        t0 = time.monotonic()
        localcluster.down(c, grace_s=20)
        print(f"local cluster down in {time.monotonic() - t0:.1f}s")
        localcluster.remove_temp_dir(c)


def _state_rows(c: cl.Cluster, kind: str, detail: bool = False) -> list[dict]:
    """Ray's state API over the Jobs API's HTTP, as a user reaches it: nodes, actors, placement_groups."""
    import requests

    return requests.get(f"{c.hpo.jobs_address}/api/v0/{kind}", params={"limit": 1000, "detail": str(detail).lower()},
                        headers=c.headers(), timeout=10).json()["data"]["result"]["result"]


def _run(c: cl.Cluster, spec: Path, wd: Path, overrides=()) -> tuple[jobs.Submission, str, str, Path]:
    """Submits, follows the logs to the end, fetches: (submission, final status, logs, fetched dir)."""
    sub = jobs.submit(c, spec, list(overrides), wd)
    out = io.StringIO()
    status = jobs.follow(c, sub.job_id, out)
    return sub, status, out.getvalue(), jobs.fetch(c, sub.job_id, spec.parent / "fetched" / sub.job_id)


@pytest.mark.cluster
@pytest.mark.slow
def test_cluster_nodes_and_token_auth_on_the_jobs_api(local_cluster):
    import requests

    c, state = local_cluster
    token_file = c.hpo.auth.path()
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    url = f"{c.hpo.jobs_address}/api/jobs/"
    assert requests.get(url, timeout=10).status_code == 401  # no token: refused
    assert requests.get(url, headers={"Authorization": "Bearer wrong"}, timeout=10).status_code == 403
    assert requests.get(url, headers=c.headers(), timeout=10).status_code == 200
    assert [n.node_type for n in state.nodes] == ["head", "gpu_worker"]
    nodes = requests.get(f"{c.hpo.jobs_address}/api/v0/nodes", headers=c.headers(), timeout=10).json()
    totals = sorted((r["resources_total"].get("CPU"), r["resources_total"].get("GPU", 0))
                    for r in nodes["data"]["result"]["result"] if r["state"] == "ALIVE")
    assert totals == [(1.0, 0), (2.0, 2.0)]


@pytest.mark.cluster
@pytest.mark.slow
def test_run_joins_a_running_ray_instead_of_starting_one(local_cluster, tmp_path):
    """`hpo run --ray ADDRESS` uses the Ray that is up (no start-up of its own): every trial ran
    on one of the cluster's nodes."""
    import requests

    c, state = local_cluster
    env = dict(os.environ, RAY_AUTH_TOKEN_PATH=str(c.hpo.auth.path()))
    out = tmp_path / "run"
    run = _cli("run", "experiments/user_trainable.yaml", "--set", "budget.trials=2", "--output", out, "--quiet",
               "--ray", state.gcs_address, env=env)
    assert run.returncode == 0, run.stderr
    nodes = requests.get(f"{c.hpo.jobs_address}/api/v0/nodes", headers=c.headers(), timeout=10).json()
    cluster_nodes = {r["node_id"] for r in nodes["data"]["result"]["result"]}
    trials = pd.read_parquet(out / "trials.parquet")
    assert len(trials) == 2 and set(trials["node_id"]) <= cluster_nodes


@pytest.mark.cluster
@pytest.mark.slow
def test_cli_submits_the_unchanged_spec_follows_it_and_fetches_parquet(local_cluster, tmp_path):
    import requests

    c, _ = local_cluster
    flag = ["--cluster", c.source]
    env = dict(os.environ, HPO_TEST_SECRET=CANARY)
    sub = _cli("submit", "experiments/user_trainable.yaml", *flag, "--set", "budget.trials=4", env=env)
    assert sub.returncode == 0, sub.stderr
    job = sub.stdout.strip()
    assert job.startswith("hpo-user-trainable-") and f"hpo logs {job}" in sub.stderr
    logs = _cli("logs", job, *flag, "--follow", env=env)
    assert logs.returncode == 0, logs.stdout + logs.stderr  # exit 0: the job SUCCEEDED
    assert "trials 4/4 finished" in logs.stdout
    status = _cli("status", job, *flag, env=env)
    assert f"{job}: SUCCEEDED" in status.stdout and f"results: {c.hpo.storage}/user-trainable/{job}" in status.stdout
    fetched = _cli("fetch", job, *flag, "--output", tmp_path / "fetched", env=env)
    assert fetched.returncode == 0, fetched.stderr

    trials = pd.read_parquet(tmp_path / "fetched" / "trials.parquet")
    history = pd.read_parquet(tmp_path / "fetched" / "history.parquet")
    meta = json.loads((tmp_path / "fetched" / "experiment.json").read_text())
    assert len(trials) == 4 and trials["status"].isin(["completed", "stopped"]).all()
    assert trials["node_id"].notna().all() and (trials["cpus"] == 1).all() and (trials["gpus"] == 0).all()
    assert trials["gpu_ids"].isna().all() and (trials["wall_s"] > 0).all()
    nodes = requests.get(f"{c.hpo.jobs_address}/api/v0/nodes", headers=c.headers(), timeout=10).json()
    assert set(trials["node_id"]) <= {r["node_id"] for r in nodes["data"]["result"]["result"]}
    assert {"metric.loss", "config.lr"} <= set(history.columns)
    assert meta["status"] == "finished" and meta["spec"]["budget"]["trials"] == 4

    # No secret from the environment (nor the token) in results, metadata or logs.
    token = c.token()
    texts = [p.read_bytes() for p in (tmp_path / "fetched").rglob("*") if p.is_file()]
    card = json.loads((tmp_path / "fetched" / "model" / "model.json").read_text())  # the model folder came too
    assert card["checkpoint"].startswith("tune/") and (tmp_path / "fetched" / card["checkpoint"]).is_dir()
    texts += [r.encode() for r in (sub.stdout, sub.stderr, logs.stdout, logs.stderr, status.stdout)]
    assert not any(CANARY.encode() in t or token.encode() in t for t in texts)


RENDEZVOUS = '''
import os, time
from ray import tune


def _held(d):
    out = {}
    for name in os.listdir(d):
        if not name.startswith("."):
            try:
                with open(os.path.join(d, name)) as f:
                    out[name] = f.read()
            except FileNotFoundError:  # that trial just finished
                pass
    return out


def train(config):
    """Holds its resources until `wait_for` trials hold theirs at once (or 60 s pass), noting
    how many trials ever held at once and whether another one held the same GPU id meanwhile."""
    d, gpu = config["rendezvous"], os.environ.get("CUDA_VISIBLE_DEVICES", "")
    me = f"{os.getpid()}-{time.monotonic_ns()}"
    with open(os.path.join(d, "." + me), "w") as f:
        f.write(gpu)
    os.rename(os.path.join(d, "." + me), os.path.join(d, me))
    peak = clash = 0
    start, met = time.monotonic(), None
    try:
        while time.monotonic() - start < 60:  # a broken scheduler fails the test, it cannot hang it
            held = _held(d)
            peak = max(peak, len(held))
            clash = max(clash, sum(1 for k, v in held.items() if k != me and v == gpu))
            if peak >= config["wait_for"]:
                met = met or time.monotonic()
                if time.monotonic() - met > 0.5:  # long enough for the others to see us too
                    break
            time.sleep(0.05)
    finally:
        os.remove(os.path.join(d, me))
    tune.report({"peak": peak, "clash": clash, "gpu": float(gpu) if gpu.isdigit() else -1.0})
'''


def _gpu_spec(tmp_path: Path, name: str, cpu: float, gpu: float, wait_for: int) -> Path:
    (tmp_path / "rendezvous").mkdir()
    (tmp_path / "rendezvous_train.py").write_text(RENDEZVOUS)
    spec = tmp_path / f"{name}.yaml"
    spec.write_text(yaml.safe_dump({
        "name": name, "family": "rendezvous_train.py:train", "metric": {"name": "peak", "mode": "max"},
        "space": {"rendezvous": str(tmp_path / "rendezvous"), "wait_for": wait_for, "x": {"uniform": [0, 1]}},
        "searcher": {"name": "random", "seed": 0}, "budget": {"trials": 4, "concurrent": 4},
        "resources": {"cpu": cpu, "gpu": gpu}}))
    return spec


@pytest.mark.cluster
@pytest.mark.slow
def test_whole_gpu_trials_get_disjoint_ids_and_never_exceed_capacity(local_cluster, tmp_path):
    c, _ = local_cluster
    sub, status, logs, fetched = _run(c, _gpu_spec(tmp_path, "gpu-whole", 0.5, 1, wait_for=2), tmp_path)
    assert status == "SUCCEEDED", logs
    assert sub.capacity.total == 2  # 2 logical GPUs: the CPUs would allow 4
    t = pd.read_parquet(fetched / "trials.parquet")
    assert len(t) == 4 and (t["status"] == "completed").all()
    assert (t["metric.peak"] == 2).all()  # pairs met, and never 3 held GPUs at once
    assert (t["metric.clash"] == 0).all()  # no trial saw another one on its GPU
    assert (t["gpus"] == 1).all() and set(t["gpu_ids"]) == {"0", "1"}
    assert (t["gpu_ids"].astype(float) == t["metric.gpu"]).all()  # our column is what the trial saw
    assert t["node_id"].nunique() == 1  # only the worker has GPUs


@pytest.mark.cluster
@pytest.mark.slow
def test_fractional_gpu_trials_share_and_gpu_hours_add_up(local_cluster, tmp_path):
    c, _ = local_cluster
    sub, status, logs, fetched = _run(c, _gpu_spec(tmp_path, "gpu-half", 0.5, 0.5, wait_for=4), tmp_path)
    assert status == "SUCCEEDED", logs
    assert sub.capacity.total == 4
    t = pd.read_parquet(fetched / "trials.parquet")
    assert (t["metric.peak"] == 4).all()  # all four held half a GPU each at the same time
    assert (t["gpus"] == 0.5).all() and sorted(t["gpu_ids"]) == ["0", "0", "1", "1"]
    assert (t["metric.clash"] == 1).all()  # each shared its GPU with exactly one other trial
    gpu_hours = (t["gpus"] * t["wall_s"]).sum() / 3600
    assert 0 < gpu_hours < (t["wall_s"].sum() / 3600)


@pytest.mark.cluster
@pytest.mark.slow
def test_stop_ends_a_running_job_and_keeps_its_results(local_cluster, tmp_path):
    c, _ = local_cluster
    (tmp_path / "slow.py").write_text(
        "import time\nfrom ray import tune\n\ndef train(config):\n"
        "    for i in range(600):\n        time.sleep(0.2)\n        tune.report({'loss': 1.0 / (i + 1)})\n")
    spec = tmp_path / "slow.yaml"
    spec.write_text("name: slow\nfamily: slow.py:train\nmetric: {name: loss, mode: min}\n"
                    "space: {x: {uniform: [0, 1]}}\nbudget: {trials: 2, concurrent: 2}\n")
    sub = jobs.submit(c, spec, [], tmp_path)
    results = Path(sub.results)
    deadline = time.monotonic() + 120
    while not (results / "trials.parquet").exists() and time.monotonic() < deadline:
        time.sleep(0.5)  # the first flush: trials are running and reporting
    assert (results / "trials.parquet").exists(), jobs.logs(c, sub.job_id)
    assert jobs.stop(c, sub.job_id) == "STOPPED"
    fetched = jobs.fetch(c, sub.job_id, tmp_path / "fetched")
    meta = json.loads((fetched / "experiment.json").read_text())
    trials = pd.read_parquet(fetched / "trials.parquet")
    assert meta["status"] == "interrupted"
    assert len(trials) == 2 and (trials["iterations"] > 0).all()
    assert (trials["iterations"] < 600).all()


@pytest.mark.slow
def test_placement_columns_for_a_trainable_class_too(ray_local, tmp_path):
    """Function trainables are covered above; a `tune.Trainable` class is recorded from `setup`,
    and from `reset_config` when Tune reuses its actor for the next trial."""
    from orchestrator.run.driver import run
    from orchestrator.spec.load import load_spec

    (tmp_path / "quad.py").write_text(
        "from ray import tune\n\nclass Quad(tune.Trainable):\n    def setup(self, config):\n"
        "        self.x = config['x']\n\n    def step(self):\n        return {'loss': (self.x - 1) ** 2, 'done': True}\n\n"
        "    def save_checkpoint(self, d):\n        return {'x': self.x}\n\n"
        "    def load_checkpoint(self, state):\n        self.x = state['x']\n\n"
        "    def reset_config(self, new_config):\n        self.x = new_config['x']\n        return True\n")
    spec = tmp_path / "quad.yaml"
    spec.write_text("name: quad\nfamily: quad.py:Quad\nmetric: {name: loss, mode: min}\n"
                    "space: {x: {uniform: [0, 2]}}\nbudget: {trials: 2}\n")
    summary = run(load_spec(spec), tmp_path / "run", quiet=True)
    trials = pd.read_parquet(summary.run_dir / "trials.parquet")
    assert len(trials) == 2 and trials["node_id"].notna().all()
    assert (trials["cpus"] == 1).all() and (trials["gpus"] == 0).all() and trials["gpu_ids"].isna().all()



NODE_LOSS = '''
import os, time
import ray
from ray import tune


def train(config):
    """Marks which node it runs on, then reports every 0.1 s until the test releases it."""
    node, trial = ray.get_runtime_context().get_node_id(), tune.get_context().get_trial_id()
    open(os.path.join(config["marks"], f"{node}-{trial}-{os.getpid()}"), "w").close()
    for i in range(1200):  # 2 min at most: a broken test fails, it cannot hang
        time.sleep(0.1)
        tune.report({"loss": config["x"] + 1 / (i + 1)})
        if i >= 5 and os.path.exists(config["release"]):
            return
'''


def _keep_evidence(c: cl.Cluster, folder: Path) -> Path:
    """What Ray says while a trial waits (every actor, placement group, unfinished task, node, and the
    autoscaler's report of what is used and pending) and each node's Ray logs, kept in `folder`
    (pytest keeps the last runs' folders): the node-loss test's rare wait, for the next look.
    One suspect: the GCS placing the pending group on the worker again and again from a stale view
    of its free CPUs (ray-project/ray#62858); its scheduling attempts and prepare failures would show
    in the group's stats, and gcs_server.out in the head's logs."""
    import shutil

    import requests

    folder.mkdir(parents=True, exist_ok=True)
    said = {}
    for kind in ("actors", "placement_groups", "tasks", "nodes"):
        try:
            rows = _state_rows(c, kind, detail=True)  # a placement group's scheduling stats too
            said[kind] = [r for r in rows if r.get("state") != "FINISHED"] if kind == "tasks" else rows
        except (requests.RequestException, KeyError, ValueError) as exc:
            said[kind] = repr(exc)
    try:
        said["cluster_status"] = requests.get(f"{c.hpo.jobs_address}/api/cluster_status", params={"format": "1"},
                                              headers=c.headers(), timeout=10).text
    except requests.RequestException as exc:
        said["cluster_status"] = repr(exc)
    (folder / "ray_state.json").write_text(json.dumps(said, indent=1, default=str))
    for logs in c.temp_dir.glob("*/session_latest/logs"):
        shutil.copytree(logs, folder / logs.parts[-3], ignore=shutil.ignore_patterns("*.sock"), dirs_exist_ok=True)
    return folder


def _worker_raylet(state: localcluster.LocalState):
    psutil = localcluster._psutil()
    worker = next(n for n in state.nodes if not n.head)
    return next(p for p in psutil.Process(worker.pid).children(recursive=True) if p.name() == "raylet")


def _apart_spec(folder: Path, name: str, trials: int, seed: int) -> Path:
    """A search whose trials checkpoint (HyperBand), so that two of them could mix up checkpoints."""
    spec = folder / f"{name}.yaml"
    spec.write_text(yaml.safe_dump({
        "name": name, "family": "synthetic", "metric": {"name": "loss"},
        "space": {"iterations": 6, "sleep_s": 0.05}, "searcher": {"name": "random", "seed": seed},
        "scheduler": {"name": "hyperband", "max_t": 6}, "budget": {"trials": trials, "concurrent": 2},
        "resources": {"cpu": 0.5}}))
    return spec


def _apart(folder: Path, trials: int) -> pd.DataFrame:
    """One run's folder holds its own budget, and only its own trials, histories and checkpoints."""
    t, h = pd.read_parquet(folder / "trials.parquet"), pd.read_parquet(folder / "history.parquet")
    assert len(t) == trials and (t["status"].isin(["completed", "stopped"])).all() and t["node_id"].notna().all()
    assert set(h["trial_id"]) == set(t["trial_id"])
    checkpointed = {c.parent.name for c in (folder / "tune").glob("*/checkpoint_*")}
    assert checkpointed and checkpointed <= set(t["trial_id"])
    return t


@pytest.mark.cluster
@pytest.mark.slow
def test_two_runs_on_one_ray_stay_apart(local_cluster, tmp_path):
    """`hpo run --ray` twice at once on one Ray: folders, checkpoints and placement records apart,
    neither sees the other's trials, each ends at its own budget."""
    c, state = local_cluster
    env = dict(os.environ, RAY_AUTH_TOKEN_PATH=str(c.hpo.auth.path()))
    runs = [(tmp_path / "a", 3, _apart_spec(tmp_path, "apart-a", 3, 0)),
            (tmp_path / "b", 5, _apart_spec(tmp_path, "apart-b", 5, 1))]
    procs = [subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "run", str(spec), "--output", str(out),
                               "--quiet", "--ray", state.gcs_address], cwd=ROOT, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for out, _, spec in runs]
    for proc in procs:
        _, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err[-3000:]
    a, b = (_apart(out, trials) for out, trials, _ in runs)
    assert not set(a["trial_id"]) & set(b["trial_id"])


@pytest.mark.cluster
@pytest.mark.slow
def test_two_jobs_at_once_on_the_cluster_keep_their_own_budgets(local_cluster, tmp_path):
    c, _ = local_cluster
    specs = [(_apart_spec(tmp_path, "job-a", 3, 0), 3), (_apart_spec(tmp_path, "job-b", 4, 1), 4)]
    subs = [jobs.submit(c, spec, [], tmp_path) for spec, _ in specs]  # both submitted before either runs far
    assert subs[0].results != subs[1].results
    for sub, (_, trials) in zip(subs, specs):
        assert jobs.follow(c, sub.job_id, io.StringIO()) == "SUCCEEDED"
        fetched = jobs.fetch(c, sub.job_id, tmp_path / "fetched" / sub.job_id)
        t = pd.read_parquet(fetched / "trials.parquet")
        assert len(t) == trials and t["node_id"].notna().all()
        assert json.loads((fetched / "experiment.json").read_text())["status"] == "finished"


@pytest.mark.cluster
@pytest.mark.slow
def test_a_killed_worker_node_is_retried_named_refused_and_restarted(local_cluster, tmp_path):
    """kill -9 the worker's raylet while trials run there: the worker's
    trials are retried on the head (budget.max_failures, default 1) and the job succeeds; each
    retried trial's `error` names the lost node; a `gpu: 1` submit is then refused against the live
    nodes (the cluster file still lists the GPU worker); `hpo cluster up` notices the dead worker
    and starts it again.

    Trials of half a CPU: the head (1 CPU) can take the retried ones even when Ray counts part of
    its CPU as used by nothing it lists (seen in a full suite: 2.5 of 3 CPUs used, 2 of them by
    the trials on the worker). Asked for 3 trials on 3 CPUs, Ray has also left one pending for
    minutes with a CPU free, in ~1 of 3 full suites (CI at stops 28, 31 and 33; the GCS's stale
    view of a node, ray-project/ray#62858, is one suspect; never seen with this module alone).
    The test needs only one trial on the worker, so it goes on with what Ray placed and keeps
    Ray's evidence of the wait (`_keep_evidence`) when a trial never starts."""

    c, state = local_cluster
    marks, release = tmp_path / "marks", tmp_path / "release"
    marks.mkdir()
    (tmp_path / "node_loss.py").write_text(NODE_LOSS)
    spec = tmp_path / "node-loss.yaml"
    spec.write_text(yaml.safe_dump({
        "name": "node-loss", "family": "node_loss.py:train", "metric": {"name": "loss", "mode": "min"},
        "space": {"marks": str(marks), "release": str(release), "x": {"uniform": [0, 1]}},
        "budget": {"trials": 3, "concurrent": 3}, "resources": {"cpu": 0.5, "gpu": 0}}))

    def alive_nodes():
        return {r["node_id"]: r for r in _state_rows(c, "nodes") if r["state"] == "ALIVE"}

    def holding():
        """What still holds a node's resources: live actors and placement groups (an earlier job's)."""
        return [f"{kind[:-1]} {r.get('class_name') or r.get('placement_group_id')} ({r.get('job_id')})"
                for kind, live in (("actors", "ALIVE"), ("placement_groups", "CREATED"))
                for r in _state_rows(c, kind) if r["state"] == live]

    def until_nothing_holds() -> list[str]:
        deadline = time.monotonic() + 60
        while (held := holding()) and time.monotonic() < deadline:
            time.sleep(0.5)  # the jobs are over; Ray frees their actors' CPUs in a moment
        return held

    def started() -> dict[str, str]:
        """trial id -> the node it started on, from the marks the trials leave."""
        return {mark.name.split("-")[1]: mark.name.split("-")[0] for mark in marks.iterdir()}

    held = until_nothing_holds()
    assert not held, held  # the head's CPU must be free for the trials retried there
    head_id = next(i for i, r in alive_nodes().items() if r["is_head_node"])
    try:
        sub = jobs.submit(c, spec, [], tmp_path)
        deadline = time.monotonic() + 120
        while len(on := started()) < 3 and time.monotonic() < deadline:
            if set(on.values()) - {head_id}:
                deadline = min(deadline, time.monotonic() + 30)  # one on the worker is enough; the rest get 30 s
            time.sleep(0.2)
        on = started()  # a trial may have started during the last sleep
        if len(on) < 3:
            warnings.warn(f"only {len(on)} of 3 trials started; Ray's view of the wait is kept in "
                          f"{_keep_evidence(c, tmp_path / 'evidence')}", stacklevel=1)
        assert set(on.values()) - {head_id}, \
            (on, f"evidence in {_keep_evidence(c, tmp_path / 'evidence')}", jobs.logs(c, sub.job_id)[-3000:])
        worker_id = next(node for node in on.values() if node != head_id)
        lost = sorted(trial for trial, node in on.items() if node == worker_id)
        _worker_raylet(state).kill()
        deadline = time.monotonic() + 60
        while jobs.logs(c, sub.job_id).count("retrying, ") < len(lost) and time.monotonic() < deadline:
            time.sleep(0.5)  # the driver saw every failure (a worker may outlive its raylet a while)
        release.touch()
        out = io.StringIO()
        status = jobs.follow(c, sub.job_id, out)
        logs = out.getvalue()
        assert status == "SUCCEEDED", logs
        t = pd.read_parquet(jobs.fetch(c, sub.job_id, tmp_path / "fetched") / "trials.parquet")
        assert len(t) == 3 and (t["status"] == "completed").all(), t.to_string()
        retried = t[t["retries"] > 0]
        assert sorted(retried["trial_id"]) == lost and (retried["retries"] == 1).all(), (lost, t.to_string())
        assert (t["node_id"] == head_id).all()  # the retried trials, and any left pending, ran on the live node
        assert retried["error"].str.startswith(f"its worker on node {retried['node_ip'].iloc[0]} "
                                               f"(id {worker_id[:12]}) was lost: ").all(), t.to_string()
        assert t.loc[t["retries"] == 0, "error"].isna().all()
        assert logs.count(f"(id {worker_id[:12]}) was lost") == len(lost)
        assert "retrying, 1 of budget.max_failures=1" in logs

        deadline = time.monotonic() + 60
        while worker_id in alive_nodes() and time.monotonic() < deadline:
            time.sleep(0.5)  # Ray marks a node DEAD after its health checks fail (seconds)
        with pytest.raises(SpecError, match=r"resources.gpu: no live node of cluster hpo-local can run a trial "
                                            r"needing cpu=0.5, gpu=1 \(live nodes: .*head.*\); start the lost node"):
            jobs.submit(c, _gpu_spec(tmp_path, "gpu-after-loss", 0.5, 1, wait_for=1), [], tmp_path)
    finally:
        restarted = localcluster.up(c, log=lambda m: None, die_with_parent=True)
    assert len(alive_nodes()) == 2 and restarted.nodes[1].pid != state.nodes[1].pid
    assert localcluster.running(c) == restarted and localcluster.dead_nodes(restarted) == []


@pytest.mark.cluster
@pytest.mark.slow
def test_a_worker_whose_ray_start_exits_before_it_registers_is_started_again(tmp_path, monkeypatch):
    """Ray gives a joining raylet a fixed 30 s to register and then exits `ray start` (CI saw it
    once on a loaded machine, failing every cluster test). Here the worker's first `ray start` is
    killed outright once it has spawned its raylet; `up` kills what it left and starts it again."""
    psutil = localcluster._psutil()
    c = _loopback_cluster(tmp_path)
    real_start, first = localcluster._start, {}

    def start_then_kill_the_first_worker(cluster, t, *args, **kw):
        n = real_start(cluster, t, *args, **kw)
        if not n.head and not first:
            root = psutil.Process(n.pid)
            deadline = time.monotonic() + 60
            while not [p for p in root.children(recursive=True) if p.name() == "raylet"]:
                assert time.monotonic() < deadline, "the worker's raylet never started"
                time.sleep(0.2)
            first.update(node=n, left=root.children(recursive=True))
            root.kill()
        return n

    monkeypatch.setattr(localcluster, "_start", start_then_kill_the_first_worker)
    lines = []
    try:
        state = localcluster.up(c, log=lines.append, die_with_parent=True)
        worker = next(n for n in state.nodes if not n.head)
        assert worker.pid != first["node"].pid and localcluster.healthy(worker)
        assert [n for n in localcluster.LocalState.read(localcluster.state_path(c)).nodes if not n.head] == [worker]
        assert lines == ["node gpu_worker-0 (gpu_worker): `ray start` exited before the node registered; "
                         "starting it again"]
        assert not [p for p in first["left"] if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        assert sum(r["state"] == "ALIVE" for r in _state_rows(c, "nodes")) == 2
    finally:
        localcluster.down(c, grace_s=20)
        localcluster.remove_temp_dir(c)

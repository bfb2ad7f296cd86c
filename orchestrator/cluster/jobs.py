"""An experiment on a Ray cluster: submitted through the Ray Jobs API, followed, stopped, fetched.

`submit` checks everything it can here, before anything reaches the cluster: the spec (the same
`load_spec` as `hpo run`), the trial's request against the cluster's node types
(orchestrator.cluster.spec.check_capacity), the cluster's Ray version. Then it packages:

- `working_dir`: the project folder (the current directory unless told), which must hold the
  spec and the files it names; Ray honours its .gitignore, and EXCLUDES keep virtualenvs, git
  data, results, caches and notebook outputs out of the upload.
- `py_modules`: the `orchestrator` and `experiments` packages this machine runs, so the cluster
  runs the same code whatever the working dir holds.
- `pip` (optional, for remote clusters): the pinned lock file, without its `ray` pin.

The job's entrypoint is `python -m orchestrator.job_entry SPEC --output STORAGE/<name>/<job id>`
(the job side, which calls the library as `hpo run` does): the job id is chosen here, so the
results folder is known before the job starts and rides in the job's metadata for `fetch`.
Nothing from this machine's environment is sent: no variables, no token (the Jobs API request
carries it in its Authorization header only).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from orchestrator.cluster import nodes
from orchestrator.cluster.spec import Capacity, Cluster, ClusterError, check_capacity
from orchestrator.errors import Problem, SpecError
from orchestrator.results import storage
from orchestrator.results.contract import CARD, MODEL_DIR, PARTS, RESULT_FILES
from orchestrator.results.rundir import new_run_id
from orchestrator.spec.load import load_spec

EXCLUDES = [
    ".venv", "venv", ".git", "results", "__pycache__", "*.pyc", ".pytest_cache", "*.egg-info", "build",
    ".ipynb_checkpoints", "notebooks/**/*.parquet", "notebooks/**/*.png", "notebooks/**/*.html",
]
META_RESULTS, META_NAME, META_SPEC = "hpo_results", "hpo_name", "hpo_spec"
ENTRYPOINT_MODULE = "orchestrator.job_entry"


@dataclass(frozen=True)
class Submission:
    """What `submit` sends; built without touching the cluster, so tests can inspect it."""

    job_id: str
    entrypoint: str
    runtime_env: dict[str, Any]
    metadata: dict[str, str]
    results: str
    capacity: Capacity
    cpu: float = 1.0  # per trial, for the pre-flight against live nodes
    gpu: float = 0.0


def package(cluster: Cluster, spec_path: str | Path, overrides: list[str] | None = None,
            working_dir: str | Path | None = None) -> Submission:
    """Validates the spec and the trial's request, and builds the job (entrypoint, runtime env, id)."""
    overrides = list(overrides or [])
    exp = load_spec(spec_path, overrides)
    wd = Path(working_dir or Path.cwd()).resolve()
    spec_rel = _inside(Path(spec_path).resolve(), wd, "SPEC", exp.source)
    module_file = getattr(exp.family, "module_file", None)
    if module_file is not None:
        _inside(Path(module_file), wd, "family", exp.source)
    data_path = getattr(exp.spec.data, "path", None)
    if data_path and not storage.is_uri(data_path):
        _inside((exp.base_dir / data_path).resolve(), wd, "data.path", exp.source)
    res = exp.spec.resources
    capacity = check_capacity(cluster, res.cpu, res.gpu, exp.source)

    job_id = f"hpo-{exp.spec.name}-{new_run_id(exp.spec_hash)}"  # run ids are unique already
    results = f"{cluster.hpo.storage}/{exp.spec.name}/{job_id}"
    args = [cluster.hpo.python, "-m", ENTRYPOINT_MODULE, spec_rel.as_posix(), "--output", results]
    for item in overrides:
        args += ["--set", item]
    runtime_env: dict[str, Any] = {
        "working_dir": str(wd),
        "excludes": EXCLUDES + list(cluster.hpo.runtime_env.excludes),
        "py_modules": [str(_package_dir("orchestrator")), str(_package_dir("experiments"))],
        "env_vars": {"PYTHONUNBUFFERED": "1"},  # progress lines reach `hpo logs` as they happen
    }
    if cluster.hpo.runtime_env.pip:
        runtime_env["pip"] = {"packages": pinned_requirements(cluster), "pip_check": False}
    metadata = {META_RESULTS: results, META_NAME: exp.spec.name, META_SPEC: spec_rel.as_posix()}
    return Submission(job_id, shlex.join(args), runtime_env, metadata, results, capacity, res.cpu, res.gpu)


def _inside(path: Path, wd: Path, field: str, source: str) -> Path:
    try:
        return path.relative_to(wd)
    except ValueError:
        raise SpecError(Problem(field, f"{path} is outside the working dir {wd}, so the job would not see it; "
                                       f"submit from a folder that holds it, or pass --working-dir"), source) from None


def _package_dir(name: str) -> Path:
    import importlib

    return Path(importlib.import_module(name).__file__).parent


def pinned_requirements(cluster: Cluster) -> list[str]:
    """The lock file's pins, minus `ray` (a job runs on the cluster's Ray) and pip options."""
    path = (cluster.source.parent / cluster.hpo.runtime_env.pip).resolve()
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise ClusterError(f"{cluster.source}: metadata.hpo.runtime_env.pip: cannot read {path} "
                           f"({exc.strerror})") from None
    pins = []
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        if re.split(r"[\[=<>~! ]", line, maxsplit=1)[0].lower() == "ray":
            continue
        pins.append(line)
    return pins


# --- talking to the Jobs API ----------------------------------------------------------------

def connect(cluster: Cluster):
    """A JobSubmissionClient sending the cluster's token; a clear error if the cluster is not there."""
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(cluster.hpo.jobs_address, headers=cluster.headers())
    except ConnectionError as exc:
        hint = (f"start it with `hpo cluster up {cluster.source}`" if cluster.is_local else
                "check that the cluster is up and the tunnel / port-forward to it is running")
        raise ClusterError(f"cannot reach the Ray Jobs API at {cluster.hpo.jobs_address}: {_first_line(exc)}; "
                           f"{hint}") from None
    except RuntimeError as exc:  # 401/403: Ray formats the authentication error
        raise ClusterError(f"the Ray Jobs API at {cluster.hpo.jobs_address} refused the request: "
                           f"{_first_line(exc)}; check metadata.hpo.auth in {cluster.source}") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def check_ray_version(cluster: Cluster) -> str | None:
    """Refuses a cluster on another Ray minor version; returns a warning for a patch difference."""
    import ray
    import requests

    try:
        r = requests.get(f"{cluster.hpo.jobs_address}/api/version", headers=cluster.headers(), timeout=10)
        theirs = r.json().get("ray_version", "")
    except (requests.RequestException, ValueError):
        return None  # connect() reports reachability
    if theirs.split(".")[:2] != ray.__version__.split(".")[:2]:
        raise ClusterError(f"cluster {cluster.name} runs Ray {theirs}, this machine Ray {ray.__version__}: the job "
                           f"would run orchestrator code against another Ray API; install the same version here")
    if theirs != ray.__version__:
        return f"note: cluster runs Ray {theirs}, this machine {ray.__version__}"
    return None


def submit(cluster: Cluster, spec_path: str | Path, overrides: list[str] | None = None,
           working_dir: str | Path | None = None, log=None) -> Submission:
    sub = package(cluster, spec_path, overrides, working_dir)
    client = connect(cluster)
    if (warning := check_ray_version(cluster)) and log:
        log(warning)
    check_live_nodes(cluster, sub, spec_path)
    client.submit_job(entrypoint=sub.entrypoint, submission_id=sub.job_id, runtime_env=sub.runtime_env,
                      metadata=sub.metadata)
    return sub


def live_nodes(cluster: Cluster) -> list[nodes.LiveNode] | None:
    """The cluster's nodes alive now (Ray's state API over the Jobs API address); None if unreadable."""
    import requests

    try:
        r = requests.get(f"{cluster.hpo.jobs_address}/api/v0/nodes", params={"limit": 1000},
                         headers=cluster.headers(), timeout=10)
        return nodes.from_state_rows(r.json()["data"]["result"]["result"])
    except (requests.RequestException, KeyError, TypeError, ValueError):
        return None


def check_live_nodes(cluster: Cluster, sub: Submission, spec_path: str | Path) -> None:
    """The pre-flight again, against the nodes alive now: the cluster file says what the cluster
    can hold, but a lost node (issue 15: a killed GPU worker) leaves a trial pending forever.

    Skipped where an autoscaler may still add a node that fits (a node type below its max_workers).
    """
    fitting = [cluster.node_types[name] for name in sub.capacity.per_type]
    if any(t.max_workers > t.min_workers for t in fitting if not t.head) or (live := live_nodes(cluster)) is None:
        return
    fix = (f"start the lost node again with `hpo cluster up {cluster.source}`" if cluster.is_local else
           "bring the lost node back, or lower resources")
    nodes.check_live(live, sub.cpu, sub.gpu, f"cluster {cluster.name}", str(spec_path), fix)


def info(cluster: Cluster, job_id: str):
    client = connect(cluster)
    try:
        return client.get_job_info(job_id)
    except RuntimeError as exc:
        raise ClusterError(f"no job {job_id!r} on cluster {cluster.name}: {_first_line(exc)}") from None


def describe(details) -> list[str]:
    """`hpo status` lines: status, message, times, where the results go."""
    def ts(ms):
        return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat(timespec="seconds") if ms else "-"

    lines = [f"{details.submission_id}: {details.status}"]
    if details.message:
        lines.append(f"  {details.message}")
    lines.append(f"  started {ts(details.start_time)}, ended {ts(details.end_time)}")
    if results := (details.metadata or {}).get(META_RESULTS):
        lines.append(f"  results: {results}")
    return lines


def logs(cluster: Cluster, job_id: str) -> str:
    info(cluster, job_id)
    return connect(cluster).get_job_logs(job_id)


def follow(cluster: Cluster, job_id: str, out: TextIO = sys.stdout) -> str:
    """Streams the job's logs until it ends; returns its final status."""
    info(cluster, job_id)
    client = connect(cluster)

    async def tail():
        async for chunk in client.tail_job_logs(job_id):
            out.write(chunk)
            out.flush()

    asyncio.run(tail())
    return str(client.get_job_status(job_id).value)


def stop(cluster: Cluster, job_id: str, wait_s: float = 30.0) -> str:
    """Asks Ray to stop the job (SIGTERM to its driver, which flushes its results) and waits for it."""
    import time

    info(cluster, job_id)
    client = connect(cluster)
    client.stop_job(job_id)
    deadline = time.monotonic() + wait_s
    while (status := client.get_job_status(job_id)).is_terminal() is False and time.monotonic() < deadline:
        time.sleep(0.5)
    return str(status.value)


def fetch(cluster: Cluster, job_id: str, dest: str | Path | None = None) -> Path:
    """Copies the job's Parquet files and experiment.json here (again, if fetched before), and the
    saved model folders with the checkpoint a model card links (orchestrator.results.storage.carried)."""
    import pyarrow.fs as pafs

    details = info(cluster, job_id)
    meta = details.metadata or {}
    if META_RESULTS not in meta:
        raise ClusterError(f"job {job_id} was not submitted by hpo (its metadata names no results folder)")
    fs, root = storage.filesystem(meta[META_RESULTS])
    dest = Path(dest) if dest else Path("results") / meta.get(META_NAME, "cluster") / job_id
    found = [f for f in fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
             if f.base_name in RESULT_FILES and f.type == pafs.FileType.File]
    parts = [f for f in fs.get_file_info(pafs.FileSelector(f"{root}/{PARTS}", allow_not_found=True))
             if f.type == pafs.FileType.File]
    if not found and not parts:
        where = "" if fs.get_file_info(root).type != pafs.FileType.NotFound else " (the folder does not exist here)"
        raise ClusterError(f"no results at {meta[META_RESULTS]}{where}; the job is {details.status}. "
                           f"Storage must be reachable from this machine to fetch (an object store, or the "
                           f"shared path mounted here)")
    for f in found:
        storage.download(fs, f.path, dest / f.base_name)
    for f in parts:
        storage.download(fs, f.path, dest / PARTS / f.base_name)
    card = dest / MODEL_DIR / CARD
    if fs.get_file_info(f"{root}/{MODEL_DIR}/{CARD}").type == pafs.FileType.File:
        storage.download(fs, f"{root}/{MODEL_DIR}/{CARD}", card)
    for rel in storage.carried(json.loads(card.read_text()) if card.is_file() else None):
        for f in fs.get_file_info(pafs.FileSelector(f"{root}/{rel}", recursive=True, allow_not_found=True)):
            if f.type == pafs.FileType.File:
                storage.download(fs, f.path, dest / rel / Path(f.path).relative_to(f"{root}/{rel}"))
    return dest

"""`hpo cluster up/down` for a cluster file with `metadata.hpo.local`: real `ray start` nodes here.

Each node is one `ray start --block` process, started in its own session. With `--block`, Ray
keeps that process as the parent of the node's processes (GCS, raylet, dashboard, agents,
workers) and shuts them down itself when it gets SIGTERM (draining first). So `down` signals
exactly the processes `up` started, found by pid (and start time, against pid reuse) in a state
file, never by name: `ray stop` would kill every Ray on the machine, a developer's own included.

What binds where (Ray 2.60, measured with `ss -ltnp`): the dashboard/Jobs API binds to
`local.dashboard_host` (127.0.0.1 unless the file opts in). Ray binds the GCS, raylet, object
manager, dashboard agent gRPC and metrics ports to all interfaces whatever `--node-ip-address`
says, and the client server, agents and runtime-env agent to the host's address too; with
RAY_AUTH_MODE=token (always on here) their RPC/HTTP calls need the token, but the Prometheus
metrics endpoints answer anyone who can reach the port. Every port except the GCS and dashboard
ones is picked free at start (the head's metrics ports too, through AUTOSCALER_METRIC_PORT and
DASHBOARD_METRIC_PORT), so a developer's own Ray (6379, 8265, 10001, 52365, 44217, 44227) is
undisturbed.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlparse

from orchestrator.cluster import auth
from orchestrator.cluster.spec import Cluster, ClusterError, NodeType, free_port, is_loopback
from orchestrator.results import rundir

STATE_FILE = "nodes.json"
JOIN_ATTEMPTS = 3  # `ray start` per worker before `up` gives up (see _rejoin)
# Variables a node must not inherit: they would point it at another cluster or another token.
_DROP_ENV = ("RAY_ADDRESS", auth.TOKEN_VAR)


@dataclass
class NodeProcess:
    node_type: str
    pid: int
    create_time: float
    log: str
    head: bool


@dataclass
class LocalState:
    cluster_name: str
    jobs_address: str
    gcs_address: str
    temp_dir: str
    nodes: list[NodeProcess]
    started_s: float  # seconds from the first `ray start` to every node registered

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def read(cls, path: Path) -> LocalState | None:
        try:
            raw = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        raw["nodes"] = [NodeProcess(**n) for n in raw["nodes"]]
        return cls(**raw)


def _require_local(cluster: Cluster) -> None:
    if not cluster.is_local:
        how = "kubectl apply -f" if cluster.kind == "kuberay" else "ray up"
        raise ClusterError(f"{cluster.source} describes a remote cluster (no metadata.hpo.local); start it with "
                           f"`{how} {cluster.source}`, then submit to it")


def state_path(cluster: Cluster) -> Path:
    return cluster.state_dir / STATE_FILE


def running(cluster: Cluster) -> LocalState | None:
    """The state of this cluster if its head is still up (its `ray start` and its raylet)."""
    state = LocalState.read(state_path(cluster))
    if state and any(n.head and healthy(n) for n in state.nodes):
        return state
    return None


def dead_nodes(state: LocalState) -> list[NodeProcess]:
    """The worker nodes of a running cluster that are gone: their `ray start --block` exited, or
    their raylet did (kill -9, OOM). Ray marks such a node DEAD and never brings it back."""
    return [n for n in state.nodes if not n.head and not healthy(n)]


def up(cluster: Cluster, *, timeout_s: float = 120.0, log=print, die_with_parent: bool = False) -> LocalState:
    """Starts the head, then `min_workers` nodes of every other type, and waits for all to register.

    `die_with_parent` (Linux, for test fixtures): each node gets SIGTERM when this process dies,
    even by SIGKILL, so a killed test run cannot leave a cluster behind.
    """
    _require_local(cluster)
    if state := running(cluster):
        if dead := dead_nodes(state):
            return _restart(cluster, state, dead, timeout_s, log, die_with_parent)
        log(f"cluster {cluster.name} is already up (Jobs API {state.jobs_address})")
        return state
    if stale := LocalState.read(state_path(cluster)):
        _stop(stale.nodes, grace_s=10)  # the head is gone: whatever is left of its workers too
    local = cluster.hpo.local
    mode = os.environ.get(auth.MODE_VAR, "token").lower()
    if mode != "token":
        raise ClusterError(f"{auth.MODE_VAR}={mode}: hpo starts clusters with Ray token authentication only; "
                           f"unset {auth.MODE_VAR} or set it to 'token'")
    token_file = cluster.hpo.auth.path()
    if token_file is None:
        raise ClusterError(f"{cluster.source}: a local cluster reads its token from a file: set "
                           f"metadata.hpo.auth.token_file")
    auth.ensure_private_token(token_file)
    cluster.state_dir.mkdir(parents=True, exist_ok=True)
    cluster.state_dir.chmod(0o700)
    url = urlparse(cluster.hpo.jobs_address)
    if not is_loopback(local.dashboard_host):
        log(f"note: the Jobs API binds to {local.dashboard_host} (opted in by metadata.hpo.local.dashboard_host); "
            f"Ray token authentication guards it")
    env = _node_env(cluster, token_file)
    head_type = cluster.node_types[cluster.head_type]
    gcs = f"127.0.0.1:{local.gcs_port}"
    started = time.monotonic()
    nodes: list[NodeProcess] = []
    try:
        head_args = ["--head", f"--port={local.gcs_port}", f"--dashboard-host={local.dashboard_host}",
                     f"--dashboard-port={url.port}", "--include-dashboard=true",
                     f"--ray-client-server-port={free_port()}"]
        # The autoscaler's and dashboard's own Prometheus ports are fixed by default (44217, 44227).
        head_env = dict(env, AUTOSCALER_METRIC_PORT=str(free_port()), DASHBOARD_METRIC_PORT=str(free_port()))
        nodes.append(_start(cluster, head_type, head_args, head_env, "head", die_with_parent))
        _wait_head(cluster, nodes[0], started + timeout_s)
        workers = [t for t in cluster.node_types.values() if not t.head for _ in range(t.min_workers)]
        for i, t in enumerate(workers):
            nodes.append(_start(cluster, t, [f"--address={gcs}"], env, f"{t.name}-{i}", die_with_parent))
        _wait_nodes(cluster, nodes, 1 + len(workers), started + timeout_s,
                    rejoin=lambda n: _rejoin(cluster, n, gcs, env, die_with_parent, log))
    except BaseException:
        _stop(nodes, grace_s=10)
        raise
    state = LocalState(cluster.name, cluster.hpo.jobs_address, gcs, str(cluster.temp_dir), nodes,
                       round(time.monotonic() - started, 2))
    _save(cluster, state)
    return state


def _save(cluster: Cluster, state: LocalState) -> None:
    """Atomically: a crash mid-write must not leave a state file `down` cannot read (nodes orphaned)."""
    text = state.to_json()
    rundir.atomic_write(state_path(cluster), lambda tmp: tmp.write_text(text))


def _restart(cluster: Cluster, state: LocalState, dead: list[NodeProcess], timeout_s: float, log,
             die_with_parent: bool) -> LocalState:
    """Starts each dead worker again, as the same node type and label, and waits for all to register."""
    _stop(dead, grace_s=10)  # what is left of them (a `ray start` whose raylet died, its agents)
    env = _node_env(cluster, cluster.hpo.auth.path())
    started = time.monotonic()
    nodes, old = list(state.nodes), list(state.nodes)
    for n in dead:
        log(f"node {_label(n)} ({n.node_type}, pid {n.pid}) is dead; starting it again")
        nodes[nodes.index(n)] = _start(cluster, cluster.node_types[n.node_type], [f"--address={state.gcs_address}"],
                                       env, _label(n), die_with_parent)
    state = LocalState(state.cluster_name, state.jobs_address, state.gcs_address, state.temp_dir, nodes,
                       round(time.monotonic() - started, 2))
    _save(cluster, state)  # before waiting: `down` must find the new processes whatever happens next

    def rejoin(n: NodeProcess) -> NodeProcess:
        new = _rejoin(cluster, n, state.gcs_address, env, die_with_parent, log)
        _save(cluster, state)  # `nodes` now holds `new`
        return new

    _wait_nodes(cluster, nodes, len(nodes), started + timeout_s, fresh=[n for n in nodes if n not in old],
                rejoin=rejoin)
    return state


def _label(n: NodeProcess) -> str:
    """The node's name in this cluster (`head`, `gpu_worker-0`): its log's and its temp dir's name."""
    return Path(n.log).stem


def _rejoin(cluster: Cluster, n: NodeProcess, gcs: str, env: dict[str, str], die_with_parent: bool,
            log) -> NodeProcess:
    """A worker whose `ray start` exited before its node registered, started again on fresh ports.

    Ray gives a joining raylet a fixed 30 s to register with the GCS and then exits `ray start`
    ("The current node timed out during startup", ray#47087); on a loaded 2-core machine that
    happens now and then while the head is still busy starting. What the failed start left
    behind (a raylet or agent that may still register late) is killed first.
    """
    log(f"node {_label(n)} ({n.node_type}): `ray start` exited before the node registered; starting it again")
    _kill_leftovers(cluster.temp_dir / _label(n))
    return _start(cluster, cluster.node_types[n.node_type], [f"--address={gcs}"], env, _label(n), die_with_parent,
                  append_log=True)


def _kill_leftovers(temp_dir: Path) -> None:
    """Every process of a node whose `ray start` is gone, found by the node's own temp dir in its
    command line (its raylet, agents and workers all name their session folder there)."""
    psutil = _psutil()
    mark = f"{temp_dir}/"
    left = []
    for p in psutil.process_iter(["cmdline"]):
        if any(mark in arg for arg in p.info["cmdline"] or ()):
            left.append(p)
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
    psutil.wait_procs(left, timeout=5)


def down(cluster: Cluster, *, grace_s: float = 30.0) -> LocalState | None:
    """Stops the nodes `up` started (workers first, then the head); None if none was running."""
    _require_local(cluster)
    state = LocalState.read(state_path(cluster))
    if state is None:
        return None
    _stop(state.nodes, grace_s)
    state_path(cluster).unlink(missing_ok=True)
    return state


def _node_env(cluster: Cluster, token_file: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _DROP_ENV}
    env.update({
        auth.MODE_VAR: "token",
        auth.TOKEN_PATH_VAR: str(token_file),
        # Job entrypoints run `python ...`: make it this interpreter (the venv with orchestrator in it).
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
        "RAY_USAGE_STATS_ENABLED": "0",
    })
    return env


def _ray_command() -> list[str]:
    exe = Path(sys.executable).with_name("ray")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "ray.scripts.scripts"]


def _resource_args(t: NodeType) -> list[str]:
    args = []
    if t.cpu is not None:
        args.append(f"--num-cpus={int(t.cpu)}")
    if t.gpu is not None:
        args.append(f"--num-gpus={int(t.gpu)}")
    if t.custom:
        args.append(f"--resources={json.dumps(dict(t.custom))}")
    return args


def _psutil():
    """Ray vendors psutil (ray/thirdparty_files) and puts it on sys.path when imported."""
    import psutil
    import ray  # noqa: F401

    return psutil


def _start(cluster: Cluster, t: NodeType, args: list[str], env: dict[str, str], label: str,
           die_with_parent: bool = False, append_log: bool = False) -> NodeProcess:
    psutil = _psutil()

    ports = [f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
             f"--runtime-env-agent-port={free_port()}", f"--metrics-export-port={free_port()}"]
    # One temp dir per node: nodes sharing one would share `runtime_resources/`, and one node's
    # runtime-env agent would delete a job's working dir that another node's driver still runs in.
    temp_dir = cluster.temp_dir / label
    cmd = [*_ray_command(), "start", "--block", *args, *_resource_args(t), *ports, f"--temp-dir={temp_dir}",
           "--disable-usage-stats"]
    log_path = cluster.state_dir / f"{label}.log"
    with open(log_path, "a" if append_log else "w") as log:
        proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True,  # a Ctrl-C in this terminal must not reach the nodes
                                preexec_fn=_sigterm_on_parent_death if die_with_parent else None)
    return NodeProcess(t.name, proc.pid, psutil.Process(proc.pid).create_time(), str(log_path), t.head)


def _sigterm_on_parent_death() -> None:
    """In the child before exec: prctl(PR_SET_PDEATHSIG, SIGTERM). Linux only; elsewhere a no-op."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)
    except OSError:
        pass


def _wait_head(cluster: Cluster, head: NodeProcess, deadline: float) -> None:
    import requests

    headers = cluster.headers()
    while True:
        _check_alive(head)
        try:
            r = requests.get(f"{cluster.hpo.jobs_address}/api/version", headers=headers, timeout=2)
            if r.status_code == 200:
                return
        except requests.RequestException:
            pass
        if time.monotonic() > deadline:
            raise ClusterError(f"the head did not answer on {cluster.hpo.jobs_address} in time; see {head.log}")
        time.sleep(0.3)


def _wait_nodes(cluster: Cluster, nodes: list[NodeProcess], expected: int, deadline: float,
                fresh: list[NodeProcess] = (), rejoin=None) -> None:
    """Until `expected` nodes are ALIVE, each of `fresh` among them (restarted nodes: counting
    alone could be fooled by a killed node Ray has not marked DEAD yet).

    A worker whose `ray start` exits meanwhile is started again by `rejoin` (it replaces the
    node in `nodes`), at most JOIN_ATTEMPTS times in all; the head, or a worker out of
    attempts, ends the wait with its log's last lines.
    """
    import requests

    fresh = list(fresh)
    since_ms = min((n.create_time for n in fresh), default=0) * 1000 - 1000
    attempts = dict.fromkeys(map(_label, nodes), 1)

    headers = cluster.headers()
    alive = 0
    while True:
        for i, n in enumerate(nodes):
            if n.head or rejoin is None or attempts[_label(n)] >= JOIN_ATTEMPTS or _alive(n):
                _check_alive(n)
                continue
            attempts[_label(n)] += 1
            nodes[i] = rejoin(n)
            fresh = [nodes[i] if f is n else f for f in fresh]
        try:
            r = requests.get(f"{cluster.hpo.jobs_address}/api/v0/nodes",  # detail: start_time_ms
                             params={"limit": 1000, **({"detail": "true"} if fresh else {})},
                             headers=headers, timeout=5)
            if r.status_code == 200:
                rows = r.json()["data"]["result"]["result"]
                alive = sum(1 for row in rows if row.get("state") == "ALIVE")
                new = sum(1 for row in rows if row.get("state") == "ALIVE" and row.get("start_time_ms", 0) >= since_ms)
                if alive >= expected and new >= len(fresh):
                    return
        except (requests.RequestException, KeyError, ValueError):
            pass
        if time.monotonic() > deadline:
            raise ClusterError(f"only {alive} of {expected} nodes registered in time; see the logs in "
                               f"{cluster.state_dir}")
        time.sleep(0.5)


def _alive(n: NodeProcess) -> bool:
    psutil = _psutil()

    try:
        p = psutil.Process(n.pid)
        return abs(p.create_time() - n.create_time) < 1e-3 and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def healthy(n: NodeProcess) -> bool:
    """Its `ray start --block` runs and so does its raylet (the node as Ray knows it)."""
    if not _alive(n):
        return False
    psutil = _psutil()
    try:
        return any(p.name() == "raylet" for p in psutil.Process(n.pid).children(recursive=True))
    except psutil.NoSuchProcess:
        return False


def _check_alive(n: NodeProcess) -> None:
    if not _alive(n):
        tail = _tail(Path(n.log))
        raise ClusterError(f"`ray start` for node {n.node_type} exited; last lines of {n.log}:\n{tail}")


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _stop(nodes: list[NodeProcess], grace_s: float) -> None:
    """SIGTERM each node's `ray start --block` (workers first), then SIGKILL whatever outlived the grace.

    The processes under each node are listed before signalling, so a worker or agent orphaned by
    a crash is still killed by pid rather than left running.
    """
    psutil = _psutil()

    ordered = sorted((n for n in nodes if _alive(n)), key=lambda n: n.head)
    for n in ordered:
        try:
            root = psutil.Process(n.pid)
            family = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
        try:
            root.send_signal(signal.SIGTERM)
        except psutil.NoSuchProcess:
            pass
        _, alive = psutil.wait_procs(family, timeout=grace_s)
        for p in alive:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(alive, timeout=5)


def remove_temp_dir(cluster: Cluster) -> None:
    """Ray's session folders and logs (kept by `down` for post-mortems; tests remove them)."""
    shutil.rmtree(cluster.temp_dir, ignore_errors=True)

"""Live nodes: what a trial lost when its node died, whether a request fits the nodes alive now,
and why trials have waited long.

Issue 15 (node loss on the 2-node cluster): killing the worker errored its trials with Ray's
"Socket closed", nothing was retried, and the job still SUCCEEDED; then a `gpu: 1` job passed
pre-flight, which trusted the cluster file while the only GPU node was dead, and sat at
0 running without a word. So:

- `worker_lost` tells a lost worker (its node, raylet or process died: Ray's RayActorError) from
  the trainable's own exception, so only the first is retried (budget.max_failures, Ray's
  FailureConfig, through orchestrator.run.callbacks.RetryLostWorkersOnly: Ray 2.60 itself retries
  both alike); `lost_node` says "its worker on node 127.0.0.1 (id 3f2a...) was lost", for the
  trial's `error` and for the line that says it is retried.
- `check_live` is the pre-flight against the nodes alive now (Ray's state API rows, read over
  the Jobs API by `hpo submit`, or `ray.nodes()` in a run), beside the cluster file's node types.
- `PendingWatch` notices trials pending for `after_s` and says why, naming the live nodes.

Nothing here imports ray.tune; only `live_nodes` talks to Ray (the connected driver's view), and
`worker_lost` reads Ray's exception types.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from orchestrator.errors import Problem, SpecError

# Ray's ActorDiedError "The actor died because its node has died. Node Id: ..." names the lost
# node; its ActorUnavailableError texts ("... RPC error: Socket closed rpc_code: 14", "...
# recvmsg:Connection reset by peer ...", both seen here with kill -9 of a worker's raylet) name
# only the caller's node (`node_id=...`), which is not the lost one.
_NODE_ID = re.compile(r"Node I[Dd]: ([0-9a-f]{16,})")

def worker_lost(exc: BaseException | None) -> bool:
    """Whether a trial failed because its actor died (its node, raylet or worker process went),
    not because the trainable raised: the same test Ray's `Trial.handle_error` makes."""
    from ray.exceptions import RayActorError, RayTaskError

    if isinstance(exc, RayTaskError):
        exc = exc.as_instanceof_cause()
    return isinstance(exc, RayActorError)


@dataclass(frozen=True)
class LiveNode:
    node_id: str
    ip: str
    head: bool
    cpu: float
    gpu: float

    def describe(self) -> str:
        role = "head, " if self.head else ""
        return f"{self.ip} ({role}id {self.node_id[:12]}: CPU {self.cpu:g}, GPU {self.gpu:g})"


def lost_node(text: str, placement: Mapping[str, Any] | None = None) -> str:
    """`its worker on node IP (id ...) was lost`, for a trial whose actor died (`worker_lost`):
    the node itself, its raylet, or only the worker process (OOM killer, a crash).

    Where the trial ran comes first from its own placement record (orchestrator.trial.placement), then
    from Ray's text, which names the lost node in some of its messages and not in others.
    """
    placement = placement or {}
    node_id = placement.get("node_id") or (m.group(1) if (m := _NODE_ID.search(text or "")) else None)
    ip = placement.get("node_ip")
    if not node_id and not ip:
        return "its worker or node was lost"
    where = " ".join(filter(None, [ip, f"(id {node_id[:12]})" if node_id else None]))
    return f"its worker on node {where} was lost"


def from_state_rows(rows: Iterable[Mapping[str, Any]]) -> list[LiveNode]:
    """Ray's state API node rows (`/api/v0/nodes`) -> the nodes alive now."""
    return [LiveNode(r["node_id"], r.get("node_ip", "?"), bool(r.get("is_head_node")),
                     float((r.get("resources_total") or {}).get("CPU", 0)),
                     float((r.get("resources_total") or {}).get("GPU", 0)))
            for r in rows if r.get("state") == "ALIVE"]


def live_nodes() -> list[LiveNode]:
    """The nodes alive now, as the connected Ray driver sees them (`ray.nodes()`)."""
    import ray

    return [LiveNode(n["NodeID"], n.get("NodeManagerAddress", "?"), "node:__internal_head__" in n["Resources"],
                     float(n["Resources"].get("CPU", 0)), float(n["Resources"].get("GPU", 0)))
            for n in ray.nodes() if n.get("Alive")]


def fits(node: LiveNode, cpu: float, gpu: float) -> bool:
    return node.cpu + 1e-9 >= cpu and node.gpu + 1e-9 >= gpu


def describe(nodes: Iterable[LiveNode]) -> str:
    return "; ".join(n.describe() for n in nodes) or "none"


def check_live(nodes: list[LiveNode], cpu: float, gpu: float, where: str, source: str | None = None,
               fix: str = "lower resources or add a node with enough") -> None:
    """Refuses a per-trial request that no live node can hold (Ray would leave it pending forever)."""
    if any(fits(n, cpu, gpu) for n in nodes):
        return
    field = "resources.gpu" if gpu and any(fits(n, cpu, 0) for n in nodes) else "resources.cpu"
    raise SpecError(Problem(field, f"no live node of {where} can run a trial needing cpu={cpu:g}, gpu={gpu:g} "
                                         f"(live nodes: {describe(nodes)}); {fix}"), source)


class PendingWatch:
    """Says why trials have been pending for `after_s`: no live node fits, or they are all busy.

    `update` gets the ids of the trials Tune has pending now at each step of its loop; it returns
    a line at most once per `after_s` while some trial has waited that long, else None.
    `nodes` is called only then (it asks Ray).
    """

    def __init__(self, cpu: float, gpu: float, after_s: float = 60.0,
                 nodes: Callable[[], list[LiveNode]] = live_nodes, clock: Callable[[], float] = time.monotonic):
        self.cpu, self.gpu, self.after_s, self.nodes, self.clock = cpu, gpu, after_s, nodes, clock
        self.since: dict[str, float] = {}
        self._said = float("-inf")

    def update(self, pending: Iterable[str]) -> str | None:
        now = self.clock()
        self.since = {t: self.since.get(t, now) for t in pending}
        waited = [now - s for s in self.since.values() if now - s >= self.after_s]
        if not waited or now - self._said < self.after_s:
            return None
        self._said = now
        try:
            nodes = self.nodes()
        except Exception as exc:
            return f"{_trials(len(waited))} pending for {max(waited):.0f} s (live nodes unknown: {exc})"
        need = f"cpu={self.cpu:g}, gpu={self.gpu:g}"
        if any(fits(n, self.cpu, self.gpu) for n in nodes):
            why = f"every live node that fits a trial ({need}) is busy"
        else:
            why = (f"no live node has the CPU/GPU a trial needs ({need}): a node may have been lost; "
                   f"restart it (`hpo cluster up`) or lower resources")
        return f"{_trials(len(waited))} pending for {max(waited):.0f} s: {why}; live nodes: {describe(nodes)}"


def _trials(n: int) -> str:
    return f"{n} trial" + ("" if n == 1 else "s")

"""orchestrator.cluster.nodes without a cluster: naming a lost node, the pre-flight against live nodes,
and the line for trials pending long (its clock and node list given, so nothing waits)."""

from __future__ import annotations

import pytest

from orchestrator.cluster import nodes
from orchestrator.errors import SpecError

HEAD = nodes.LiveNode("a" * 56, "10.0.0.1", True, 1, 0)
GPU_WORKER = nodes.LiveNode("b" * 56, "10.0.0.2", False, 2, 2)


def test_the_lost_node_comes_from_the_trials_placement_before_rays_text():
    # Ray's "Socket closed" text names the caller's node (node_id=...), not the lost one.
    text = "The actor 9fa9 is unavailable: RPC error: Socket closed rpc_code: 14. node_id=" + "c" * 56
    assert nodes.lost_node(text, {"node_id": "d" * 56, "node_ip": "10.0.0.2"}) == \
        f"its worker on node 10.0.0.2 (id {'d' * 12}) was lost"
    died = "The actor died because its node has died. Node Id: " + "e" * 56
    assert nodes.lost_node(died, {}) == f"its worker on node (id {'e' * 12}) was lost"
    assert nodes.lost_node(text, None) == "its worker or node was lost"


def test_a_lost_actor_is_told_from_the_trainables_own_exception():
    from ray.exceptions import ActorDiedError, ActorUnavailableError, RayTaskError

    assert nodes.worker_lost(ActorDiedError())
    assert nodes.worker_lost(ActorUnavailableError("Socket closed", b"\x00" * 16))
    user = RayTaskError("train", "Traceback ...", ValueError("bad config"))
    assert not nodes.worker_lost(user) and not nodes.worker_lost(ValueError("x")) and not nodes.worker_lost(None)


def test_the_live_preflight_names_the_field_and_the_live_nodes():
    nodes.check_live([HEAD, GPU_WORKER], 0.5, 1, "cluster c")  # fits the worker
    with pytest.raises(SpecError) as err:
        nodes.check_live([HEAD], 0.5, 1, "cluster c", "spec.yaml", "start it again")
    assert str(err.value).splitlines()[1].strip() == (
        f"resources.gpu: no live node of cluster c can run a trial needing cpu=0.5, gpu=1 (live nodes: "
        f"10.0.0.1 (head, id {'a' * 12}: CPU 1, GPU 0)); start it again")
    with pytest.raises(SpecError, match="resources.cpu: no live node"):
        nodes.check_live([HEAD, GPU_WORKER], 4, 0, "cluster c")


def test_state_api_rows_keep_only_alive_nodes():
    rows = [{"node_id": "a" * 56, "node_ip": "10.0.0.1", "is_head_node": True, "state": "ALIVE",
             "resources_total": {"CPU": 1.0}},
            {"node_id": "b" * 56, "node_ip": "10.0.0.2", "is_head_node": False, "state": "DEAD",
             "resources_total": {"CPU": 2.0, "GPU": 2.0}}]
    assert nodes.from_state_rows(rows) == [HEAD]


def test_trials_pending_long_are_explained_once_per_period():
    now = [0.0]
    live = [HEAD]
    watch = nodes.PendingWatch(1, 1, after_s=60, nodes=lambda: live, clock=lambda: now[0])
    assert watch.update(["t1", "t2"]) is None
    now[0] = 59
    assert watch.update(["t1", "t2"]) is None
    now[0] = 61
    line = watch.update(["t1", "t2"])
    assert line.startswith("2 trials pending for 61 s: no live node has the CPU/GPU a trial needs (cpu=1, gpu=1)")
    assert line.endswith(f"live nodes: 10.0.0.1 (head, id {'a' * 12}: CPU 1, GPU 0)")
    now[0] = 90
    assert watch.update(["t1", "t2"]) is None  # said once per period
    live.append(GPU_WORKER)
    now[0] = 125
    assert "every live node that fits a trial (cpu=1, gpu=1) is busy" in watch.update(["t2", "t3"])
    now[0] = 200
    assert watch.update(["t3"]).startswith("1 trial pending for 75 s: ")  # t2 started; t3 still waits
    assert watch.update([]) is None and watch.since == {}


def test_a_note_is_a_line_of_its_own_in_a_log(tmp_path):
    import io

    from orchestrator.results.writer import Recorder
    from orchestrator.run.progress import Progress

    out = io.StringIO()  # not a terminal: plain lines, as in `hpo logs`
    progress = Progress(Recorder(tmp_path, "loss", "min"), 3, stream=out)
    progress.note("trial t1 failed (its worker on node 10.0.0.2 was lost: ...); retrying, 1 of budget.max_failures=1")
    assert out.getvalue() == ("trial t1 failed (its worker on node 10.0.0.2 was lost: ...); retrying, 1 of "
                              "budget.max_failures=1\n")

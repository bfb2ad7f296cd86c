"""How a run folder is written and owned: run ids, atomic writes, claims, liveness.

The file names are the results contract's (orchestrator.results.contract). Writes go to a hidden
temporary file beside the target and are renamed over it, so a reader never sees half a file,
whatever kills the writer.

One folder, one run. Checking that a folder is empty and writing to it seconds later let two runs
started together (same `--output`, or the same spec within one second when run ids had one-second
resolution) both pass the check and overwrite each other's results. So a run *claims* its folder
before Ray starts: `claim` creates `owner.json` with O_EXCL, which the filesystem grants to one
process only, and the loser is refused (`tests/test_faults.py::test_two_runs_racing_for_one_folder`).
The same file says who runs it (host, pid, start) and carries a heartbeat refreshed at each flush,
so `liveness` can tell a crashed run (`status: running`, owner gone) from a live one.
"""

from __future__ import annotations

import datetime as dt
import errno
import json
import os
import secrets
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from orchestrator.results.contract import EXPERIMENT, OWNER

# How owner.json's `liveness` says a live run is told from a crashed one: on its own host by its pid
# together with that process's start time (a reused pid is not the owner), elsewhere by its heartbeat.
LIVENESS_RULE = "same host: pid and its process start time; other hosts: heartbeat within STALE_AFTER_S"

# A run on another host whose heartbeat is older than this is taken for dead (a flush, and so a
# heartbeat, happens every few seconds while trials run; the refit after the search can be long).
STALE_AFTER_S = 600.0


def new_run_id(spec_hash: str) -> str:
    """`<UTC time to the microsecond>-<4 random hex>-<spec hash>`: the only place run ids are made.

    They sort by start time, runs of one spec end alike, and two runs started in the same
    microsecond still differ (the random part); the folder claim is what makes sharing impossible.
    """
    return f"{dt.datetime.now(dt.UTC):%Y%m%d-%H%M%S-%f}-{secrets.token_hex(2)}-{spec_hash}"


def now() -> str:
    """A UTC timestamp as experiment.json writes them."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Calls `write(tmp)` and renames tmp over `path`; the temporary file never outlives a failure."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: Path, obj: dict[str, Any]) -> None:
    """Strict JSON (no NaN/Infinity, which other tools reject): non-finite floats become null."""
    text = json.dumps(_finite(obj), indent=2, default=str, allow_nan=False) + "\n"
    atomic_write(Path(path), lambda tmp: tmp.write_text(text))


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


def _finite(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if obj == obj and obj not in (float("inf"), float("-inf")) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


# --- claiming a folder, and telling a live run from a crashed one ----------------------------

class FolderTaken(Exception):
    """The folder holds results or another run's claim: choose another one."""


@dataclass
class Claim:
    """This process's claim on a run folder; `beat()` refreshes its heartbeat."""

    run_dir: Path
    owner: dict[str, Any]

    def beat(self) -> None:
        self.owner["heartbeat_at"] = now()
        write_json(self.run_dir / OWNER, self.owner)


def claim(run_dir: Path) -> Claim:
    """Makes `run_dir` this process's, before anything else is written to it.

    Raises:
        FolderTaken: it already holds files (results are never overwritten), or another run
            claimed it first (the one that creates owner.json wins; the check is atomic).
        OSError: the folder cannot be created or written (read-only or full disk, permissions).
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if any(run_dir.iterdir()):
        raise FolderTaken(f"{run_dir} already holds results; choose an empty or new folder "
                          f"(results are never overwritten)")
    return _create_claim(run_dir, f"{run_dir} was claimed by another run started at the same time; "
                                  f"choose another folder")


def take_over(run_dir: Path) -> Claim:
    """Makes a crashed or ended run's folder this process's (`hpo resume`). The old claim is moved
    aside with one rename, which only one of two resumes started together can do."""
    run_dir = Path(run_dir)
    try:
        os.replace(run_dir / OWNER, run_dir / f".{OWNER}.{os.getpid()}.old")
    except FileNotFoundError:
        if liveness(run_dir) == "live":
            raise FolderTaken(f"{run_dir} is being resumed by another process") from None
    else:
        (run_dir / f".{OWNER}.{os.getpid()}.old").unlink(missing_ok=True)
    return _create_claim(run_dir, f"{run_dir} is being resumed by another process")


def _create_claim(run_dir: Path, taken: str) -> Claim:
    owner = {"host": socket.gethostname(), "pid": os.getpid(), "pid_started": process_started(os.getpid()),
             "liveness": LIVENESS_RULE, "started_at": now(), "heartbeat_at": now()}
    try:
        fd = os.open(run_dir / OWNER, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        raise FolderTaken(taken) from None
    try:
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(owner, indent=2) + "\n")
    except OSError:
        (run_dir / OWNER).unlink(missing_ok=True)  # a claim we could not write is no claim
        raise
    return Claim(run_dir, owner)


Liveness = Literal["live", "crashed", "finished", "none"]


def liveness(run_dir: Path, stale_after_s: float = STALE_AFTER_S) -> Liveness:
    """Whether a run folder's run is still going.

    Returns:
        "finished": experiment.json records an end (finished, failed or interrupted: its `status`
        says which). "live": it says running and its owner is alive (on this host: its pid exists
        and is the same process, by its start time; elsewhere: its heartbeat is fresh). "crashed":
        it says running but its process is gone or its heartbeat is stale. "none": no run was
        ever recorded here.
    """
    run_dir = Path(run_dir)
    try:
        status = read_json(run_dir / EXPERIMENT).get("status")
    except (OSError, ValueError):
        status = None
    if status not in (None, "running"):
        return "finished"
    try:
        owner = read_json(run_dir / OWNER)
    except (OSError, ValueError):
        return "none" if status is None else "crashed"
    if owner.get("host") == socket.gethostname():
        return "live" if _same_process(owner.get("pid"), owner.get("pid_started")) else "crashed"
    beat = owner.get("heartbeat_at") or owner.get("started_at")
    try:
        age = (dt.datetime.now(dt.UTC) - dt.datetime.fromisoformat(beat)).total_seconds()
    except (TypeError, ValueError):
        return "crashed"
    return "live" if age <= stale_after_s else "crashed"


def _same_process(pid: Any, started: Any) -> bool:
    """The owner's process still runs: its pid exists and, where the claim recorded it, that pid's
    process started when the owner's did. After a crash the pid can be reused by any process, which
    then read as the live owner and blocked `hpo resume` forever; claims written before
    `pid_started` existed fall back to the pid alone."""
    if not _pid_alive(pid):
        return False
    return started is None or process_started(pid) in (None, started)


def process_started(pid: int) -> str | None:
    """When process `pid` started, as an opaque token that differs between two processes that held
    the same pid: Linux's start time in clock ticks since boot (/proc/PID/stat, field 22); None
    where it cannot be read (another OS), which makes liveness trust the pid alone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()  # after the command name, which may hold spaces
    return fields[19] if len(fields) > 19 else None


def _pid_alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def disk_full(exc: BaseException) -> bool:
    """A write failed for want of space (or quota): the machine's problem, not the run's."""
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def time_left_s(time_s: float | None, meta: dict[str, Any]) -> float | None:
    """What is left of `budget.time_s` after the sessions before the last `hpo resume` of this run
    (experiment.json's `resumes`); at least 1 s, so Tune still starts and ends at once."""
    resumes = meta.get("resumes") or []
    if time_s is None or not resumes:
        return time_s
    return max(1.0, time_s - resumes[-1]["spent_s"])


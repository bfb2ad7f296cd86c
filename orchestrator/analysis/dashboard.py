"""`hpo dashboard`: optuna-dashboard on a run's Optuna journal, on 127.0.0.1 and a free port.

- **Which journal.** A run written with `dashboard: true` has a live one, `RUN_DIR/optuna.journal`
  (orchestrator.tracking.journal), which the dashboard reads as the run appends to it, during the run
  and after. A run without one gets a snapshot exported from its Parquet
  (orchestrator.analysis.optuna_study.export_journal) into a temporary folder, removed on exit.
  A journal whose study is not this run's (its `hpo_run` user attribute names another run id: a
  file copied between folders) is refused.
- **Where it listens.** 127.0.0.1 unless `--host` says otherwise: optuna-dashboard has no
  authentication, and its API can also write (notes, deleting a study), so it is served to this
  machine alone unless asked; with another host the command says so. Without `--port`, the first
  free port from 8080 (a stable, bookmarkable address); a `--port` in use is refused, naming the next
  free one. The socket is bound before the address is printed, so the URL printed is one that works.
- **How.** optuna-dashboard's own WSGI app (`optuna_dashboard.wsgi`) under the standard library's
  threading WSGI server, in this process, quiet (the page polls every few seconds; a log line per
  request would bury the URL). optuna-dashboard is imported only here, only when asked.
- **A cluster job.** Its results folder is where `hpo submit` put it; when that is a path this
  machine sees (the cluster's shared storage, mounted here), its live journal is followed there.
  An object store only gets the run folder when the job ends (orchestrator.job_entry): the message
  says to `hpo fetch` it then.
"""

from __future__ import annotations

import errno
import ipaddress
import shutil
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from orchestrator.errors import InputError, ResultsError
from orchestrator.results import storage
from orchestrator.results.contract import EXPERIMENT, HISTORY, JOURNAL, PARTS, TRIALS
from orchestrator.results.rundir import read_json

DEFAULT_HOST = "127.0.0.1"
FIRST_PORT = 8080
PORTS_TRIED = 100
WAIT_FOR_JOURNAL_S = 10.0  # a run with `dashboard: true` that has just started writes its journal within this


@dataclass
class Journal:
    """The journal to serve: its file, the run's study in it, and whether it is the run's live one."""

    path: Path
    study_name: str
    run_id: str
    live: bool
    trials: int
    temporary: Path | None = None  # the folder of an exported snapshot, removed by `cleanup`

    def cleanup(self) -> None:
        if self.temporary is not None:
            shutil.rmtree(self.temporary, ignore_errors=True)


def journal_of(run_dir: str | Path) -> Journal:
    """The run's live journal, checked to hold this run's study; else a snapshot exported from its results."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ResultsError(f"no run folder at {run_dir}; give a run folder (results/<name>/<run id>), or a cluster "
                           f"job id with --cluster FILE")
    if not (run_dir / EXPERIMENT).is_file():
        raise ResultsError(f"{run_dir} is not a run folder (no {EXPERIMENT}); give results/<name>/<run id>")
    meta = read_json(run_dir / EXPERIMENT)
    run_id = meta.get("run_id") or run_dir.name
    path = run_dir / JOURNAL
    if (meta.get("spec") or {}).get("dashboard") and meta.get("status") == "running":
        deadline = time.monotonic() + WAIT_FOR_JOURNAL_S  # the run's journal thread opens it as Ray starts
        while not _has_study(path) and time.monotonic() < deadline:
            time.sleep(0.2)
    if path.is_file() and path.stat().st_size > 0:
        name, trials = _study_of(path, run_id)
        return Journal(path, name, run_id, live=True, trials=trials)
    if not ((run_dir / TRIALS).is_file() or (run_dir / HISTORY).is_file() or any((run_dir / PARTS).glob("*.parquet"))):
        raise ResultsError(f"{run_dir} has no results yet (no {TRIALS}, no {PARTS}/): no trial has been recorded; "
                           f"wait for the first flush, or run with `dashboard: true` (hpo run --dashboard) to watch "
                           f"it from its first trial")
    from orchestrator.analysis.optuna_study import export_journal

    folder = Path(tempfile.mkdtemp(prefix="hpo-dashboard-"))
    try:
        study = export_journal(run_dir, folder / JOURNAL)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return Journal(folder / JOURNAL, study.study_name, run_id, live=False, trials=len(study.trials), temporary=folder)


def _has_study(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 0


def _study_of(path: Path, run_id: str) -> tuple[str, int]:
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    journal = JournalStorage(JournalFileBackend(str(path)))
    studies = journal.get_all_studies()
    ours = [s for s in studies if s.user_attrs.get("hpo_run") == run_id]
    if not ours:
        other = next((s.user_attrs.get("hpo_run") for s in studies if s.user_attrs.get("hpo_run")), None)
        held = f"the study of another run ({other})" if other else "no study of an hpo run"
        raise ResultsError(f"{path} holds {held}, not of this run ({run_id}): copied from another run folder? "
                           f"Move it away (a snapshot is then exported from this run's results), or open that run")
    name = ours[0].study_name
    return name, len(journal.get_all_trials(journal.get_study_id_from_name(name), deepcopy=False))


def job_run_dir(location: str | None, job_id: str, status: str, cluster_flag: str) -> Path:
    """A cluster job's run folder on the shared storage, when this machine sees it and it holds a live
    journal; otherwise one line saying why not, and what to do."""
    fetched = f"results/<name>/{job_id}"
    if not location:
        raise ResultsError(f"job {job_id} was not submitted by hpo (its metadata names no results folder)")
    if storage.is_uri(location) and not location.startswith("file://"):
        raise ResultsError(f"job {job_id} ({status}) writes to {location}, an object store, which gets its run "
                           f"folder only when the job ends; then: hpo fetch {job_id} {cluster_flag} && "
                           f"hpo dashboard {fetched}")
    path = Path(location.removeprefix("file://"))
    if not path.is_dir():
        raise ResultsError(f"job {job_id} ({status}) writes to {path} on the cluster's shared storage, which is not "
                           f"mounted here: mount it at that path, or hpo fetch {job_id} {cluster_flag} && "
                           f"hpo dashboard {fetched}")
    if not (path / JOURNAL).is_file():
        raise ResultsError(f"job {job_id} ({status}) has no live journal in {path}: its spec has no `dashboard: true` "
                           f"(submit with --set dashboard=true), or it has not started; hpo dashboard {path} serves a "
                           f"snapshot of its results so far")
    return path


# --- the server ---------------------------------------------------------------------------------

class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Quiet(WSGIRequestHandler):
    def log_message(self, format, *args):  # the page polls every few seconds: no line per request
        pass


def is_loopback(host: str) -> bool:
    """Whether `host` serves this machine alone (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def open_server(journal: Journal, host: str | None = None, port: int | None = None):
    """optuna-dashboard on the journal, its socket bound (so the port is held) but not yet serving:
    call `serve_forever()`. Returns (server, url of the run's study page)."""
    try:
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend
        from optuna_dashboard import wsgi
    except ImportError:
        raise InputError("hpo dashboard needs optuna-dashboard, which is not installed: pip install optuna-dashboard "
                         "(pinned in requirements.lock), or pip install -e '.[dashboard]'") from None
    host = host or DEFAULT_HOST
    journal_storage = JournalStorage(JournalFileBackend(str(journal.path)))
    app = wsgi(journal_storage)
    server = _bind(app, host, port)
    study_id = journal_storage.get_study_id_from_name(journal.study_name)
    shown = f"[{host}]" if ":" in host else host
    return server, f"http://{shown}:{server.server_address[1]}/dashboard/studies/{study_id}"


def _bind(app, host: str, port: int | None) -> _Server:
    candidates = [port] if port is not None else range(FIRST_PORT, FIRST_PORT + PORTS_TRIED)
    for candidate in candidates:
        server = (_Server6 if ":" in host else _Server)((host, candidate), _Quiet, bind_and_activate=False)
        try:
            server.server_bind()
            server.server_activate()
        except OSError as exc:
            server.server_close()
            if exc.errno == errno.EADDRINUSE:
                if port is None:
                    continue
                nxt = next_free_port(host, port + 1)
                raise InputError(f"port {port} on {host} is in use; the next free one is {nxt}: --port {nxt} "
                                 f"(or leave --port out to take the first free one from {FIRST_PORT})") from None
            if exc.errno == errno.EACCES:
                raise InputError(f"port {candidate} needs privileges to bind; use a port above 1023") from None
            raise InputError(f"cannot listen on {host}:{candidate} ({exc.strerror or exc}); --host takes an address "
                             f"of this machine, e.g. {DEFAULT_HOST} (default) or 0.0.0.0 (every interface)") from None
        server.set_app(app)
        return server
    raise InputError(f"no free port on {host} from {FIRST_PORT} to {FIRST_PORT + PORTS_TRIED - 1}; "
                     f"give one with --port")


def next_free_port(host: str, start: int) -> int | None:
    """The first port from `start` that `host` can listen on now (None if none up to 65535)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for candidate in range(start, 65536):
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((host, candidate))
                return candidate
            except OSError:
                continue
    return None

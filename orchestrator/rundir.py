"""What a run folder holds and how it is written: file names, run ids, atomic writes.

Every module that names a result file or writes one imports it from here, so the layout has one
owner (results.py writes the Parquet files, runner.py `experiment.json`, jobs.py copies them
back from a cluster). Writes go to a hidden temporary file beside the target and are renamed
over it, so a reader never sees half a file, whatever kills the writer.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path
from typing import Any, Callable

EXPERIMENT = "experiment.json"
TRIALS = "trials.parquet"
HISTORY = "history.parquet"
PARTS = "history.parts"  # numbered history flushes while a run is going on
RESULT_FILES = (TRIALS, HISTORY, EXPERIMENT)


def new_run_id(spec_hash: str) -> str:
    """`<UTC time>-<spec hash>`: runs sort by start time, and runs of one spec share the suffix."""
    return f"{dt.datetime.now(dt.UTC):%Y%m%d-%H%M%S}-{spec_hash}"


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

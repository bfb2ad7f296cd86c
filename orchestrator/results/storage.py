"""Where a cluster job's results live: a local path shared by the nodes, or an object-store URI.

pyarrow's filesystems read both the same way; the job side writes through them
(orchestrator.job_entry) and `hpo fetch` reads through them (orchestrator.cluster.jobs).

What travels: the run folder's top-level files, and the folders a user takes home (`carried`):
the saved model (`model/`, `models/<trial id>/`) and the checkpoint folder a model card links
(a user trainable's). Tune's own state and the other trials' checkpoints stay behind.
"""

from __future__ import annotations

import json
import re
from pathlib import Path, PurePosixPath
from typing import Any

from orchestrator.results.contract import CARD, MODEL_DIR, MODELS_DIR
from orchestrator.results.rundir import atomic_write

_URI = re.compile(r"^[a-z][a-z0-9+.-]*://")


def is_uri(location: str) -> bool:
    return bool(_URI.match(location))


def filesystem(location: str):
    """(pyarrow filesystem, path within it) for a URI or a local path."""
    import pyarrow.fs as pafs

    if is_uri(location):
        return pafs.FileSystem.from_uri(location)
    return pafs.LocalFileSystem(), location


def download(fs, src: str, dest: Path) -> None:
    """Copies one file from `fs` to a local path, atomically."""
    dest.parent.mkdir(parents=True, exist_ok=True)

    def write(tmp: Path) -> None:
        with fs.open_input_stream(src) as fin, open(tmp, "wb") as fout:
            while chunk := fin.read(1 << 20):
                fout.write(chunk)

    atomic_write(dest, write)


def upload(local_dir: Path, location: str) -> None:
    """A run folder's top-level files and `carried` folders to `location` (Tune's own trial
    folders stay behind)."""
    import pyarrow.fs as pafs

    fs, root = filesystem(location)
    fs.create_dir(root, recursive=True)
    for path in sorted(local_dir.glob("*")):
        if path.is_file():
            pafs.copy_files(str(path), f"{root}/{path.name}", destination_filesystem=fs)
    card = local_dir / MODEL_DIR / CARD
    for rel in carried(json.loads(card.read_text()) if card.is_file() else None):
        for path in sorted((local_dir / rel).rglob("*")) if (local_dir / rel).is_dir() else ():
            if path.is_file():
                dest = f"{root}/{path.relative_to(local_dir).as_posix()}"
                fs.create_dir(dest.rsplit("/", 1)[0], recursive=True)
                pafs.copy_files(str(path), dest, destination_filesystem=fs)


def carried(card: dict[str, Any] | None) -> list[str]:
    """The folders (relative to the run folder) that travel with a run's files: the model folders,
    and the checkpoint the run's model card links, if it names one inside the run folder."""
    out = [MODEL_DIR, MODELS_DIR]
    link = card.get("checkpoint") if isinstance(card, dict) else None
    path = PurePosixPath(link) if isinstance(link, str) and link else None
    if path is not None and not path.is_absolute() and ".." not in path.parts:
        out.append(link)
    return out

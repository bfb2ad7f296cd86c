"""Where a cluster job's results live: a local path shared by the nodes, or an object-store URI.

pyarrow's filesystems read both the same way; the job side writes through them
(orchestrator.job_entry) and `hpo fetch` reads through them (orchestrator.cluster.jobs).
"""

from __future__ import annotations

import re
from pathlib import Path

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
    """A run folder's top-level files to `location` (Tune's own trial folders stay behind)."""
    import pyarrow.fs as pafs

    fs, root = filesystem(location)
    fs.create_dir(root, recursive=True)
    for path in sorted(local_dir.glob("*")):
        if path.is_file():
            pafs.copy_files(str(path), f"{root}/{path.name}", destination_filesystem=fs)

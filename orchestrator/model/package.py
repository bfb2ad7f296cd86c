"""The refit's model as files, checked, and put into a folder.

`package` runs where the refit trained (a Ray worker, which may be another node than the one
holding the run folder): it turns the kept object into its format's files, loads them back from
a scratch folder and predicts the test split, so the card can say whether the saved files
reproduce the refit's test score (`reproduced`), and hands the bytes to the driver, which writes
them (`write`). Model files are small next to what Ray moves anyway (tens of kB to a few MB for
the built-in families; docs/model.md has the sizes).

`write` makes the folder appear whole or not at all: files and card go into a hidden sibling
first, which is renamed into place, so a reader never finds model files without their card.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from orchestrator.families.metrics import score
from orchestrator.model.card import CARD
from orchestrator.model.formats import Target, Trust, get
from orchestrator.results.rundir import write_json


@dataclass(frozen=True)
class Packed:
    """A saved model on its way to the driver.

    Attributes:
        format: its entry of orchestrator.model.formats.FORMATS.
        files: file name -> bytes.
        versions: the format's libraries, as installed where it was trained.
        reproduced: the files, loaded back, score the test split exactly as the refit did.
        differs: where not, the loaded model's test metrics that differ (name -> value).
        seconds: `dump` (object -> bytes) and `check` (load back and predict the test split).
    """

    format: str
    files: dict[str, bytes]
    versions: dict[str, str]
    reproduced: bool
    differs: dict[str, float] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return sum(len(b) for b in self.files.values())


def package(format_name: str, kept: Any, X_test: np.ndarray, y_test: np.ndarray, target: Target,
            refit_test: dict[str, float]) -> Packed:
    """`kept` (what the family handed to `trial.keep`) as its format's files, checked against the
    refit's `test_*` metrics by scoring the reloaded files on the test split."""
    fmt = get(format_name)
    t0 = time.perf_counter()
    files = fmt.dump(kept)
    t1 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="hpo-model-") as tmp:
        for name, data in files.items():
            (Path(tmp) / name).write_bytes(data)
        loaded = fmt.load(Path(tmp), list(files), Trust(own=True))
        again = score(target.task, y_test, fmt.predict(loaded, X_test, target), prefix="test_")
    t2 = time.perf_counter()
    differs = {k: v for k, v in again.items() if k in refit_test and not _same(v, refit_test[k])}
    return Packed(format_name, files, versions(fmt.packages), not differs, differs,
                  {"dump": round(t1 - t0, 4), "check": round(t2 - t1, 4)})


def _same(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


def versions(packages: tuple[str, ...]) -> dict[str, str]:
    """Installed versions of `packages`, with numpy's and this package's."""
    out = {}
    for pkg in ("hpo-orchestrator", "numpy", *packages):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def write(folder: Path, files: dict[str, bytes], card: dict[str, Any], replace: bool = False) -> None:
    """Files and card into `folder`, which appears whole (see the module docstring). An existing
    folder is replaced only with `replace`; else FileExistsError."""
    folder = Path(folder)
    if folder.exists() and not replace:
        raise FileExistsError(f"{folder} exists")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        for name, data in files.items():
            (tmp / name).write_bytes(data)
        write_json(tmp / CARD, card)
        old = None
        if folder.exists():
            old = folder.with_name(f".{folder.name}.old-{os.getpid()}")
            os.replace(folder, old)
        os.replace(tmp, folder)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

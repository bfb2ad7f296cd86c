"""The Parquet side of the results contract: frames Parquet can store, atomic writes that carry the
contract's version, and history parts merged in order. Used by the writer and the reader alike."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from orchestrator.results.contract import SCHEMA_KEY, SCHEMA_VERSION
from orchestrator.results.rundir import atomic_write


def frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    return tidy(pd.DataFrame(rows))


def tidy(df: pd.DataFrame) -> pd.DataFrame:
    """A frame Parquet can store: a column mixing types (a choice of 0.5 and 'sqrt') becomes text.

    Applied to each part file and again after merging them, since one part may hold only the
    floats of such a column and another only its strings.
    """
    for col in df.columns:
        if df[col].dtype == object:
            kinds = {type(v) for v in df[col].dropna()}
            if len(kinds) > 1 and not kinds <= {int, float}:
                df[col] = df[col].map(_text)
    return df


def _text(v: Any) -> str | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else str(v)


def write(df: pd.DataFrame, path: Path) -> None:
    """Writes atomically, with the contract's version in the file's key-value metadata."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(df, preserve_index=False)
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), SCHEMA_KEY: str(SCHEMA_VERSION)})
    atomic_write(path, lambda tmp: pq.write_table(table, tmp))


def merge(parts: list[Path]) -> pd.DataFrame:
    """The parts in the order they were written: every row of every part, an iteration a trial
    reported again (a retry, a resume, PBT's exploit) included, told apart by `attempt`."""
    if not parts:
        return frame([])
    return tidy(pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True))


def part_files(run_dir: Path, parts_dir: str) -> list[Path]:
    """A run folder's history part files, in the order they were written."""
    return sorted((Path(run_dir) / parts_dir).glob("part-*.parquet"))

"""Warm start: the best configs (and their scores) of an earlier run, as a searcher's first points.

Read at validation time, so a missing file or a run that tuned another metric is a spec error.
Only parameters of the current space are kept, and a config that falls outside the current space
is dropped (a searcher would reject or silently clip it).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from orchestrator.errors import Problem
from orchestrator.results.contract import EXPERIMENT, TRIALS
from orchestrator.search.space import Param, active, contains

PATH = "searcher.warm_start.from"


def load(source: str, top_k: int, base_dir: Path, metric: str, mode: str,
         params: Mapping[str, Param]) -> tuple[list[dict[str, Any]], list[float], list[Problem]]:
    """Returns (points, scores, problems); points are best first."""
    import pandas as pd

    path = Path(source)
    if not path.is_absolute():
        path = base_dir / path if (base_dir / path).exists() else path
    trials_file = path / TRIALS if path.is_dir() else path
    if not trials_file.is_file():
        return [], [], [Problem(PATH, f"no trials.parquet at {path}; give an earlier run folder or its trials.parquet")]
    meta_file = trials_file.parent / EXPERIMENT
    if meta_file.is_file():
        earlier = json.loads(meta_file.read_text()).get("metric", {}).get("name")
        if earlier and earlier != metric:
            return [], [], [Problem(PATH, f"that run tuned {earlier!r}, this spec tunes {metric!r}: their scores "
                                          f"do not compare; warm-start from a run of the same metric")]
    trials = pd.read_parquet(trials_file)
    trials = trials[trials["score"].notna()] if "score" in trials else trials.iloc[0:0]
    if trials.empty:
        return [], [], [Problem(PATH, f"{trials_file} has no trial with a score to start from")]
    trials = trials.sort_values("score", ascending=mode == "min")
    points, scores = [], []
    for _, row in trials.iterrows():
        point = {name: _python(row[f"config.{name}"]) for name, p in params.items()
                 if not p.is_constant and f"config.{name}" in row and not _missing(row[f"config.{name}"])}
        if point and _inside(point, params) and point not in points:
            points.append(point)
            scores.append(float(row["score"]))
        if len(points) == top_k:
            break
    if not points:
        return [], [], [Problem(PATH, f"none of the configs in {trials_file} fits the current space")]
    return points, scores, []


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _python(v: Any) -> Any:
    return v.item() if hasattr(v, "item") else v  # numpy scalar -> Python


def _inside(point: Mapping[str, Any], params: Mapping[str, Param]) -> bool:
    return all(contains(params[name], value) and (not params[name].when or active(params[name], point))
               for name, value in point.items())

"""What every tracker implements (`Backend`), what it is built from (`RunInfo`), and the helpers the
trackers share: how a status reads in a tracker (`end_state`), which values are worth logging
(`is_finite_number`), and a nested spec as flat parameters (`flat_params`).

Why trackers are fed this way (by the Recorder, on a thread of their own, bounded at the end) is
in orchestrator.tracking.listener; a backend only has to keep to the calling order below.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class RunInfo:
    """The run being tracked, the same for every backend.

    Attributes:
        run_dir: the run folder; a tracker's own store goes inside it unless its options say otherwise.
        run_id: the run's id (a resumed run keeps it): MLflow's parent run name, W&B's group.
        name: the spec's name: the default MLflow experiment and W&B project.
        resolved: the resolved spec, as experiment.json holds it.
        metric: the spec's metric (its name): a tracker's best score is logged as `best_<metric>`.
    """

    run_dir: Path
    run_id: str
    name: str
    resolved: Mapping[str, Any]
    metric: str


class Backend:
    """One tracker.

    Built on the driver by `open_tracking`, from the tracker's value in `tracking:` (its options
    model, or True for a plain switch) and the `RunInfo`; the constructor must stay cheap and must
    not import the tracker's library (the run is starting Ray meanwhile).

    Every other method runs on the tracking thread, one call at a time, in this order:

    1. `open`, once, before anything else: import the library, open the store. Ray is starting on
       the driver meanwhile.
    2. Per trial, `trial_started`, then `iterations` any number of times (every row of
       history.parquet, in order, batched: what queued up since the last pass), then `trial_ended`.
       Trials interleave; a trial's rows never come before its start nor after its end.
    3. `model_saved`, at most once, after the last trial: the run's saved model folder (the refit's
       model and its model.json card; orchestrator.model), for a tracker that keeps artifacts.
    4. `close`, once, at the run's end, after every queued event; it ends whatever is still open.

    A method that raises drops its backend for the rest of the run (one warning, and one line in
    experiment.json); the other trackers and the search go on. `name` keys the tracker in those
    lines and in experiment.json's `tracking.busy_s`.
    """

    name = "tracker"

    def __init__(self, options: Any, run: RunInfo) -> None:
        self.options, self.run = options, run

    def open(self) -> None: ...

    def trial_started(self, trial_id: str, config: dict[str, Any]) -> None: ...

    def iterations(self, trial_id: str, rows: list[tuple[int, float, dict[str, float]]]) -> None:
        """rows: (iteration, unix time it was reported, metrics), in order."""

    def trial_ended(self, trial_id: str, status: str, score: float | None, score_iteration: int | None,
                    error: str | None) -> None: ...

    def model_saved(self, folder: Path) -> None: ...

    def close(self, status: str, best: Mapping[str, Any] | None) -> None: ...


def end_state(status: str) -> str:
    """A trial's or run's status (results.STATUSES, experiment.json) as MLflow's run status."""
    return {"errored": "FAILED", "failed": "FAILED", "interrupted": "KILLED"}.get(status, "FINISHED")


def is_finite_number(v: Any) -> bool:
    """A score worth logging: a real number (not a bool), neither NaN nor infinite."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def flat_params(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested spec sections as dotted keys; a list or a space entry stays one value."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v and not key.startswith("space."):
            out.update(flat_params(v, f"{key}."))
        else:
            out[key] = v
    return out

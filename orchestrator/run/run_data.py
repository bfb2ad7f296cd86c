"""The run's data, held once: in Ray's object store while the trials search, in this process again after.

The driver loads the data before Ray starts (a bad file is refused before anything runs), but only
the trials need it during the search, and the refit and the test score only after it. Holding this
process's own copy the whole time while `tune.with_parameters` put a second one in the object store
kept a 1,000,000 x 50 file's 191 MB of float32 arrays in memory twice at the run's peak
(benchmarks/data_scale.py, docs/performance.md). So the driver puts the Dataset in the store
itself, once, lets its own arrays go, and hands the trials the store's reference
(orchestrator.trial.trainable resolves it into read-only views of the one copy, as
`with_parameters` did); after the search it copies the arrays back out of the store before Ray
shuts down, since the refit, the model and the test score outlive Ray's shared memory.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable
from typing import Any

import numpy as np


class RunData:
    """The loaded Dataset (None for a family without data), moved into the object store for the
    search (`for_trials`) and back (`after_search`). `reload` reads it from its source again,
    for when the store is gone by then (Ray lost mid-run)."""

    def __init__(self, data: Any, reload: Callable[[], Any]):
        self._data, self._ref, self._reload = data, None, reload

    def for_trials(self) -> Any:
        """What the trials get: the store's reference to the Dataset, put there once; this process's
        own arrays go. Needs Ray to be up; the data itself where there is none to share."""
        if self._data is None or self._ref is not None:
            return self._ref
        import ray

        self._ref, self._data = ray.put(self._data), None
        return self._ref

    def after_search(self) -> Any:
        """The Dataset, this process's own again (writable arrays that outlive Ray's shutdown)."""
        if self._ref is not None:
            self._data, self._ref = _copied_back(self._ref, self._reload), None
        return self._data


def _copied_back(ref, reload: Callable[[], Any]) -> Any:
    import ray

    try:
        views = ray.get(ref, timeout=60)
    except Exception:  # the store went with a lost Ray: read from the source again
        try:
            return reload()
        except Exception as exc:  # the run's record still gets written; only the refit has nothing to train on
            print(f"the run's data is gone with Ray and cannot be read again ({exc}): no refit", file=sys.stderr)
            return None
    return dataclasses.replace(views, **{f.name: np.array(getattr(views, f.name))
                                         for f in dataclasses.fields(views)
                                         if isinstance(getattr(views, f.name), np.ndarray)})

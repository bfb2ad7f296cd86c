"""The Ray trainable every built-in family runs as: find the family in the worker, then train.

The driver hands it to Ray Tune with `tune.with_parameters`: the data as the object store's
reference to the one copy the driver put there (orchestrator.run.run_data; an outer fold's data
is put there by `with_parameters` itself), which a trial reads as read-only views, never a copy;
everything else arrives as one `TrialSettings`, so a worker on another node imports the family
itself.
"""

from __future__ import annotations

from orchestrator import ray_api
from orchestrator.families.registry import resolve
from orchestrator.trial.context import TrialContext
from orchestrator.trial.folds import run_trial
from orchestrator.trial.settings import TrialSettings

# Imported in the worker as Ray loads the trial's actor class, before Tune constructs it.
ray_api.trial_actors_without_ipython()


def run_family_trial(config: dict, *, settings: TrialSettings, data=None) -> None:
    family = resolve(settings.family_ref, settings.base_path)
    trial = TrialContext.current(settings, config=dict(config))
    # The evaluation protocol (holdout, k-fold) decides what data each `train` call sees.
    run_trial(family, dict(config), ray_api.resolved(data), trial, settings.evaluation)
    trial.flush()  # the iterations held back since the last report (see orchestrator.trial.context)

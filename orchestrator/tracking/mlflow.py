"""MLflow: one parent run per experiment, one child run per trial.

Where: `sqlite:///RUN_DIR/mlflow.db` unless `tracking_uri` says otherwise (MLflow 3's own default
backend is SQLite; its file store `mlruns/` now raises unless `MLFLOW_ALLOW_FILE_STORE` is set), with
the artifact root `RUN_DIR/mlartifacts` (it would otherwise default to ./mlruns under the working
directory). The parent run's params are the resolved spec without its `tracking` section (no URI
becomes a param); at the end it gets the best score and trial, and the saved model folder (the
refit's model and its model.json card) as artifacts under `model/`. A child run's params are its trial's
config; its metrics come per iteration, with `step` = the iteration and the time it was reported,
one `log_batch` per trial per pass of the tracking thread (Ray's `MLflowLoggerCallback` makes one
`log_metric` call, a database transaction with SQLite, per metric per result, inside Tune's loop);
its status is FINISHED, FAILED or KILLED.

`mlflow` is imported when the backend opens, on the tracking thread (this module's `import mlflow`
is the real MLflow: imports are absolute).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from orchestrator.tracking.backend import Backend, RunInfo, end_state, flat_params, is_finite_number
from orchestrator.tracking.spec import MlflowSpec

MLFLOW_DB = "mlflow.db"


class MlflowBackend(Backend):
    name = "mlflow"
    MAX_METRICS, MAX_PARAMS, MAX_VALUE = 1000, 100, 6000  # MLflow's log_batch limits

    def __init__(self, options: MlflowSpec, run: RunInfo):
        super().__init__(options, run)
        self.spec, self.run_dir, self.run_id, self.name_, self.metric = (options, run.run_dir, run.run_id, run.name,
                                                                          run.metric)
        self.params = flat_params({k: v for k, v in run.resolved.items() if k != "tracking"})  # no URIs as params
        self.runs: dict[str, str] = {}
        self.uri = options.tracking_uri or f"sqlite:///{(run.run_dir / MLFLOW_DB).resolve()}"

    def open(self) -> None:
        from mlflow.tracking import MlflowClient

        logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)  # "Creating initial tables"
        logging.getLogger("alembic").setLevel(logging.WARNING)
        self.client = MlflowClient(tracking_uri=self.uri)
        name = self.spec.experiment_name or self.name_
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            self.experiment_id = found.experiment_id
        else:
            # In our own store, artifacts would otherwise default to ./mlruns under the working directory.
            where = None if self.spec.tracking_uri else (self.run_dir / "mlartifacts").resolve().as_uri()
            self.experiment_id = self.client.create_experiment(name, artifact_location=where)
        self._end_crashed()
        self.parent = self.client.create_run(self.experiment_id, run_name=self.run_id,
                                             tags={"hpo.run_id": self.run_id, "hpo.run_dir": str(self.run_dir)}
                                             ).info.run_id
        self._params(self.parent, self.params)

    def _end_crashed(self) -> None:
        """`hpo resume` of a killed run: the runs it left RUNNING (its parent, its trials then running)
        are ended KILLED; the resumed stretch gets a parent run of its own, with the same name."""
        left = self.client.search_runs([self.experiment_id], f"tags.`hpo.run_id` = '{self.run_id}' "
                                                            f"and attributes.status = 'RUNNING'")
        for run in left:
            self.client.set_tag(run.info.run_id, "hpo.status", "interrupted")
            self.client.set_terminated(run.info.run_id, "KILLED")

    def _params(self, run_id: str, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(str(k)[:250], str(v)[:self.MAX_VALUE]) for k, v in params.items()]
        for i in range(0, len(items), self.MAX_PARAMS):
            self.client.log_batch(run_id, params=items[i:i + self.MAX_PARAMS])

    def trial_started(self, trial_id, config):
        run = self.client.create_run(self.experiment_id, run_name=trial_id,
                                     tags={"mlflow.parentRunId": self.parent, "hpo.trial_id": trial_id,
                                           "hpo.run_id": self.run_id})
        self.runs[trial_id] = run.info.run_id
        self._params(run.info.run_id, config)

    def iterations(self, trial_id, rows):
        from mlflow.entities import Metric

        metrics = [Metric(k, v, int(at * 1000), it) for it, at, values in rows for k, v in values.items()]
        for i in range(0, len(metrics), self.MAX_METRICS):
            self.client.log_batch(self.runs[trial_id], metrics=metrics[i:i + self.MAX_METRICS])

    def trial_ended(self, trial_id, status, score, score_iteration, error):
        run_id = self.runs.pop(trial_id)
        self.client.set_tag(run_id, "hpo.status", status)
        if error:
            self.client.set_tag(run_id, "hpo.error", error[:5000])
        if is_finite_number(score):
            self.client.log_metric(run_id, f"best_{self.metric}", score, step=score_iteration or 0)
        self.client.set_terminated(run_id, end_state(status))

    def model_saved(self, folder):
        # The folder as it is (model files and model.json) under the parent run's `model/`: MLflow
        # copies it into the run's artifact store; docs/tracking.md says how to register it.
        self.client.log_artifacts(self.parent, str(folder), artifact_path="model")
        self.client.set_tag(self.parent, "hpo.model", "model")

    def close(self, status, best):
        for trial_id in list(self.runs):  # left open by a dropped event; should not happen
            self.client.set_terminated(self.runs.pop(trial_id), "KILLED")
        self.client.set_tag(self.parent, "hpo.status", status)
        if best is not None:
            self.client.set_tag(self.parent, "hpo.best_trial", best["trial_id"])
            if is_finite_number(best.get("score")):
                self.client.log_metric(self.parent, f"best_{self.metric}", best["score"])
        self.client.set_terminated(self.parent, end_state(status))

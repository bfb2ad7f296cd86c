"""Experiment tracking from the spec's `tracking:` section: MLflow, TensorBoard, Weights & Biases.

Opt-in (no section, nothing is imported), fed by the Recorder rather than by Tune, and never on the
hot path: a listener call only queues, and one background thread does every tracker's I/O.

The modules, bottom to top:

- `spec`: the `tracking:` section (`TrackingSpec` and each tracker's options), the registry
  `TRACKERS` (one entry per tracker: its spec field, the modules it needs, the pip package that
  provides them, its backend class), and `check`, which finds a tracker that is on but not
  installed before Ray starts. Imports pydantic only, never a tracker library.
- `backend`: `Backend`, the interface each tracker implements (when each method is called, on which
  thread), `RunInfo` (what every backend is built from) and the helpers they share.
- `mlflow`, `tensorboard`, `wandb`: one backend each; the tracker's library is imported when the
  backend opens, on the tracking thread.
- `listener`: the `Tracking` thread (the Recorder's listener) and `open_tracking`, which builds the
  backends a spec turns on from the registry.

Adding a tracker: a backend module, a field of `TrackingSpec` and an entry in `TRACKERS`
(tests/test_tracking.py checks that the fields and the entries match).

No imports here, so that `import orchestrator.tracking.spec` (done by every spec load) stays cheap.
"""

"""A user's own Ray Tune function trainable, unchanged: config in, ray.tune.report per iteration.

Run it with `family: experiments/my_trainable.py:train` (see user_trainable.yaml). Nothing here
knows about hpo-orchestrator; it checkpoints and resumes the way Ray Tune documents.
"""

import json
import os
import tempfile

from ray import tune


def train(config):
    start, x = 0, 0.0
    checkpoint = tune.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as d, open(os.path.join(d, "state.json")) as f:
            start, x = json.load(f).values()
    for step in range(start, config["steps"]):
        x += config["lr"] * (3.0 - x)  # gradient steps towards x = 3
        loss = (x - 3.0) ** 2 + config["penalty"]
        with tempfile.TemporaryDirectory() as d:
            with open(os.path.join(d, "state.json"), "w") as f:
                json.dump({"step": step + 1, "x": x}, f)
            tune.report({"loss": loss, "x": x}, checkpoint=tune.Checkpoint.from_directory(d))

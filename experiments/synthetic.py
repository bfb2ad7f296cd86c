"""A cheap family with a fidelity axis, so every searcher x scheduler pair runs for real in seconds.

The objective is the Branin function (known optimum 0.397887, reached at three points). At
iteration t of a trial the reported `loss` is the true value plus a learning-curve offset and
noise, both shrinking as t grows: early iterations are cheap but misleading, later ones
converge to the truth, which is what multi-fidelity schedulers (ASHA, HyperBand, BOHB) bet on.
`regret` is the noise-free distance to the optimum, for benchmarks.
"""

from __future__ import annotations

import math
import time
import zlib

from orchestrator.families.contract import Family

KNOWN_OPTIMUM = 0.397887
OPTIMA = ((-math.pi, 12.275), (math.pi, 2.275), (9.42478, 2.475))

DEFAULT_SPACE = {
    "x1": {"uniform": [-5.0, 10.0]},
    "x2": {"uniform": [0.0, 15.0]},
    "iterations": 27,
    "noise": 2.0,
    "sleep_s": 0.0,
}


def branin(x1: float, x2: float) -> float:
    b, c, r, s, t = 5.1 / (4 * math.pi ** 2), 5 / math.pi, 6, 10, 1 / (8 * math.pi)
    return (x2 - b * x1 ** 2 + c * x1 - r) ** 2 + s * (1 - t) * math.cos(x1) + s


def observe(config: dict, t: int, seed: int) -> float:
    """The loss reported at iteration t (1-based): deterministic given config, t and seed."""
    import random

    true = branin(config["x1"], config["x2"])
    key = f"{seed}:{config['x1']:.12g}:{config['x2']:.12g}:{t}".encode()
    noise = random.Random(zlib.crc32(key)).gauss(0.0, config.get("noise", 2.0))
    return true + (5.0 + noise) / math.sqrt(t)


def train(config, data, trial):
    state = trial.restore()
    start = state["t"] if state else 0
    true = branin(config["x1"], config["x2"])
    for t in range(start + 1, int(config.get("iterations", 27)) + 1):
        if config.get("sleep_s"):
            time.sleep(config["sleep_s"])
        metrics = {"loss": observe(config, t, trial.seed), "regret": true - KNOWN_OPTIMUM}
        trial.report(metrics, state={"t": t} if trial.checkpointing else None)


FAMILY = Family(name="synthetic", train=train, default_space=DEFAULT_SPACE, iterations_param="iterations",
                checkpoints=True, metrics={"loss": "min", "regret": "min"}, needs_data=False,
                optima={"loss": KNOWN_OPTIMUM, "regret": 0.0})

"""The model-based stop (`budget.stop.regret_bound`, orchestrator.run.regret_bound): Optuna's
regret-bound and median-error evaluators, told finished trials as the Recorder tells them."""

from __future__ import annotations

import json
import time

import optuna
import pandas as pd
import pytest

from orchestrator.run.regret_bound import MIN_TRIALS, RegretBound
from orchestrator.search.space import parse_space

PARAMS, _ = parse_space({"x": {"uniform": [0.0, 1.0]}, "y": {"uniform": [0.0, 1.0]}, "n": 3})


def plateau(x: float, y: float) -> float:
    """A bowl with a flat floor: once a trial reaches the floor, nothing better exists."""
    return max(0.05, (x - 0.3) ** 2 + (y - 0.6) ** 2)


def tpe_trials(f, n: int, seed: int = 0):
    """(config, score) of n TPE trials on f, as a search would finish them."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=seed))
    for _ in range(n):
        t = study.ask()
        x, y = t.suggest_float("x", 0, 1), t.suggest_float("y", 0, 1)
        study.tell(t, f(x, y))
        yield {"x": x, "y": y, "n": 3}, f(x, y)


def test_a_search_on_a_plateau_is_stopped_with_the_numbers_that_decided():
    rule = RegretBound(PARAMS, "min", seed=0, background=False)
    for i, (config, score) in enumerate(tpe_trials(plateau, 200)):
        rule.observe(f"t{i}", config, score)
        if rule.reason():
            break
    assert MIN_TRIALS <= rule.finished < 200, rule.last
    seen, bound, threshold = rule.last
    assert seen == rule.finished and bound < threshold
    assert rule.reason().startswith(f"regret_bound: the model's bound on the best's regret ({bound:.4g}) fell below "
                                    f"the threshold ({threshold:.4g}")
    assert "best 0.05," in rule.reason()


def test_it_never_stops_before_its_minimum_and_trials_without_a_score_are_not_points():
    rule = RegretBound(PARAMS, "min", seed=0, background=False)
    for i, (config, score) in enumerate(tpe_trials(plateau, MIN_TRIALS - 1)):
        rule.observe(f"t{i}", config, score)
        rule.observe(f"e{i}", config, None)  # errored, or infeasible: counted, not modelled
    assert rule.finished == 2 * (MIN_TRIALS - 1) and rule.last is None and rule.reason() is None


def test_on_its_worker_thread_it_reaches_the_same_conclusion_without_blocking():
    trials = list(tpe_trials(plateau, 120))
    at_once = RegretBound(PARAMS, "min", seed=0, background=False)
    for i, (config, score) in enumerate(trials):
        at_once.observe(f"t{i}", config, score)
        if at_once.reason():
            break
    rule = RegretBound(PARAMS, "min", seed=0)
    for i, (config, score) in enumerate(trials):
        rule.observe(f"t{i}", config, score)
    deadline = time.monotonic() + 60
    while rule.reason() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    rule.close()
    assert rule.reason() is not None and rule.last[0] >= at_once.last[0]  # as late or later: never earlier


def test_a_model_that_cannot_be_fitted_never_ends_the_search(caplog):
    """Trials that share no parameter (an intersection space that is empty): Optuna refuses them."""
    params, _ = parse_space({"a": {"uniform": [0.0, 1.0]}, "b": {"uniform": [0.0, 1.0]}})
    rule = RegretBound(params, "max", seed=0, background=False)
    for i in range(MIN_TRIALS + 2):
        rule.observe(f"t{i}", {"a": 0.5} if i % 2 else {"b": 0.5}, float(i))
    assert rule.reason() is None and rule.last is None
    assert "regret_bound: could not evaluate" in caplog.text


@pytest.mark.parametrize("mode", ["min", "max"])
def test_the_direction_follows_the_metric(mode):
    rule = RegretBound(PARAMS, mode, seed=0, background=False)
    sign = 1 if mode == "min" else -1
    for i, (config, score) in enumerate(tpe_trials(plateau, 200)):  # the same search, its metric negated for max
        rule.observe(f"t{i}", config, sign * score)
        if rule.reason():
            break
    assert rule.reason() is not None and f"best {sign * 0.05:g}," in rule.reason()


def test_search_stop_ends_on_the_first_of_patience_and_the_regret_bound():
    """SearchStop tells both rules each finished trial; the first to give a reason ends the search."""
    from orchestrator.results.writer import TrialRecord
    from orchestrator.run.stopping import SearchStop
    from orchestrator.spec.experiment import BudgetSpec

    def finish(stop: SearchStop, n: int) -> int:
        for i, (config, score) in enumerate(tpe_trials(plateau, n)):
            stop.trial_ended(TrialRecord(f"t{i}", config, status="completed", score=score))
            if stop.reason():
                return i + 1
        return n

    def search_stop(**rules) -> SearchStop:
        budget = BudgetSpec(trials=200, stop=rules)
        bound = RegretBound(PARAMS, "min", seed=0, background=False) if "regret_bound" in rules else None
        return SearchStop(budget, "min", 1, 0, regret_bound=bound)

    alone = search_stop(regret_bound={})
    bound_at = finish(alone, 200)
    assert alone.stop_reason.startswith("regret_bound: ") and bound_at < 200
    patient = search_stop(regret_bound={}, patience=200)  # never fires first
    assert finish(patient, 200) == bound_at and patient.stop_reason == alone.stop_reason
    hasty = search_stop(regret_bound={}, patience=5)
    assert finish(hasty, 200) < bound_at and hasty.stop_reason.startswith("patience: ")


@pytest.mark.slow
def test_a_real_search_on_a_plateau_ends_by_the_regret_bound(ray_local, tmp_path, capsys):
    """A user's function trainable whose loss has a flat floor: TPE reaches it, the bound falls,
    and the search ends well before its 150 trials, `finished`, saying why."""
    from orchestrator.cli import main
    from orchestrator.results.contract import EXPERIMENT, TRIALS
    from orchestrator.run.driver import run
    from orchestrator.spec.load import validate

    (tmp_path / "floor.py").write_text(
        "from ray import tune\n\n"
        "def train(config):\n"
        "    tune.report({'loss': max(0.05, (config['x'] - 0.3) ** 2 + (config['y'] - 0.6) ** 2)})\n")
    exp = validate({"name": "floor", "family": "floor.py:train", "metric": {"name": "loss", "mode": "min"},
                    "space": {"x": {"uniform": [0.0, 1.0]}, "y": {"uniform": [0.0, 1.0]}},
                    "searcher": {"name": "optuna-tpe"}, "budget": {"trials": 150, "concurrent": 2,
                                                                   "stop": {"regret_bound": {}}}}, tmp_path)
    summary = run(exp, tmp_path / "run", quiet=True)
    meta = json.loads((summary.run_dir / EXPERIMENT).read_text())
    trials = pd.read_parquet(summary.run_dir / TRIALS)
    assert meta["status"] == "finished" and meta["stop_reason"].startswith("regret_bound: the model's bound")
    assert MIN_TRIALS <= len(trials[trials["status"] == "completed"]) and len(trials) < 150
    assert meta["best"]["score"] == pytest.approx(0.05) and summary.stop_reason == meta["stop_reason"]
    assert main(["results", str(summary.run_dir)]) == 0
    assert f"search ended early, {meta['stop_reason']}" in capsys.readouterr().out


def test_it_pickles_without_its_worker():
    """Tune pickles the Recorder's listeners into its snapshot: the worker thread's queue cannot be."""
    import pickle

    rule = RegretBound(PARAMS, "min", seed=0)
    for i, (config, score) in enumerate(tpe_trials(plateau, MIN_TRIALS)):
        rule.observe(f"t{i}", config, score)
    copy = pickle.loads(pickle.dumps(rule))
    rule.close()
    assert copy.finished == MIN_TRIALS and copy._pool is None and len(copy._study.trials) == MIN_TRIALS

"""Every searcher and scheduler: each builds from its defaults, every valid pair runs for real on
the synthetic family, and every invalid pair is refused before Ray starts."""

from __future__ import annotations

import itertools

import pandas as pd
import pytest

from orchestrator.errors import SpecError
from orchestrator.run.driver import run
from orchestrator.run.tuner import build_tune_config
from orchestrator.search.resumable import base_searcher
from orchestrator.search.schedulers import SCHEDULERS
from orchestrator.search.searchers import SEARCHERS
from orchestrator.spec.load import validate

SCHEDULER_OPTS = {
    "fifo": {},
    "asha": {"max_t": 6, "grace_period": 1, "reduction_factor": 2},
    "hyperband": {"max_t": 6},
    "bohb-hyperband": {"max_t": 6},
    "median-stopping": {"grace_period": 2, "min_samples_required": 2},
    "pbt": {"perturbation_interval": 2, "hyperparam_mutations": ["x1", "x2"]},
    "pb2": {"perturbation_interval": 2, "hyperparam_mutations": ["x1", "x2"]},
}


def synthetic(searcher: str, scheduler: str, trials: int = 3, **extra) -> dict:
    return {"name": f"{searcher}-{scheduler}", "family": "synthetic", "metric": {"name": "loss"},
            "space": {"iterations": 6}, "searcher": {"name": searcher, "seed": 0},
            "scheduler": {"name": scheduler, **SCHEDULER_OPTS[scheduler]},
            "budget": {"trials": trials, "concurrent": 2}, **extra}


def expected_valid(searcher: str, scheduler: str) -> bool:
    """The pairing rules, written out independently of the registries' own flags."""
    if (searcher == "bohb") != (scheduler == "bohb-hyperband"):
        return False
    if scheduler in ("pbt", "pb2") and searcher not in ("random", "grid"):
        return False
    return True


PAIRS = list(itertools.product(SEARCHERS, SCHEDULERS))
VALID = [p for p in PAIRS if expected_valid(*p)]
INVALID = [p for p in PAIRS if not expected_valid(*p)]


def test_the_matrix_has_both_kinds():
    assert len(VALID) >= 25 and len(INVALID) >= 15


@pytest.mark.parametrize("searcher, scheduler", INVALID, ids=lambda v: v)
def test_invalid_pairs_are_refused_with_the_fix(searcher, scheduler):
    with pytest.raises(SpecError) as info:
        validate(synthetic(searcher, scheduler))
    text = str(info.value)
    assert "only works with" in text and ("set scheduler:" in text or "got" in text)


EXPECTED_CLASSES = {
    "random": ("BasicVariantGenerator", None),
    "grid": ("BasicVariantGenerator", None),
    "optuna-tpe": ("OptunaSearch", "TPESampler"),
    "optuna-nsga2": ("OptunaSearch", "NSGAIISampler"),
    "optuna-cmaes": ("OptunaSearch", "CmaEsSampler"),
    "optuna-gp": ("OptunaSearch", "GPSampler"),
    "hyperopt-tpe": ("HyperOptSearch", None),
    "bohb": ("TuneBOHB", None),
    "smac": ("SMACSearch", None),
    "ax": ("AxSearch", None),
}
EXPECTED_SCHEDULERS = {"fifo": "PickingFIFOScheduler", "asha": "PickingASHAScheduler", "hyperband": "FinishingHyperBand",
                       "bohb-hyperband": "FinishingHyperBandForBOHB",
                       "pbt": "PopulationBasedTraining", "pb2": "PB2", "median-stopping": "ContinuingMedianStoppingRule"}


@pytest.mark.parametrize("searcher, scheduler", VALID, ids=lambda v: v)
def test_valid_pairs_build_the_right_ray_objects(searcher, scheduler):
    cfg, _ = build_tune_config(validate(synthetic(searcher, scheduler)))
    alg = base_searcher(cfg.search_alg)
    cls, sampler = EXPECTED_CLASSES[searcher]
    assert cls in [c.__name__ for c in type(alg).__mro__]  # Ray's class, or ours that extends it
    if sampler:
        assert type(alg._sampler).__name__ == sampler
    assert type(cfg.scheduler).__name__ == EXPECTED_SCHEDULERS[scheduler]
    # Concurrency has exactly one owner: the generator itself, or the limiter wrapping a Searcher.
    assert cfg.max_concurrent_trials is None
    if cls == "BasicVariantGenerator":
        assert alg.max_concurrent == 2
    else:
        assert cfg.search_alg.searcher.max_concurrent == 2


def test_the_fifo_pick_among_live_trials_is_ray_s_own():
    """Trials added, started, paused, ended and retried (Tune moves a retried trial to the end of
    its list) at random, the way Tune's controller keeps its list and its live set: at every step
    our pick among the live trials is the trial Ray's FIFO walk over the whole list picks."""
    import random

    from ray.tune.experiment import Trial
    from ray.tune.schedulers import FIFOScheduler

    from orchestrator.search.ray_schedulers import PickingFIFOScheduler

    class Stub:
        def __init__(self):
            self.status = Trial.PENDING

    class Controller:
        def __init__(self):
            self.trials, self.live = [], set()

        def get_trials(self):
            return self.trials

        def get_live_trials(self):
            return self.live

    rng, ctl, ours, picks = random.Random(7), Controller(), PickingFIFOScheduler(), set()
    for _ in range(3000):
        op, live = rng.random(), sorted(ctl.live, key=ctl.trials.index)
        if op < 0.3 or not live:
            trial = Stub()
            ctl.trials.append(trial)
            ctl.live.add(trial)
        elif op < 0.8:
            trial = rng.choice(live)
            trial.status = rng.choice([Trial.RUNNING, Trial.PAUSED, Trial.TERMINATED, Trial.ERROR])
            if trial.status in (Trial.TERMINATED, Trial.ERROR):
                ctl.live.discard(trial)
        else:  # a retried trial: PENDING again, at the end of the list
            trial = rng.choice(live)
            trial.status = Trial.PENDING
            ctl.trials.append(ctl.trials.pop(ctl.trials.index(trial)))
        expected = FIFOScheduler.choose_trial_to_run(ours, ctl)
        assert ours.choose_trial_to_run(ctl) is expected
        picks.add(expected.status)
    assert picks == {Trial.PENDING, Trial.PAUSED}  # each branch of the pick was taken
    for trial in ctl.live:
        trial.status = Trial.RUNNING
    assert ours.choose_trial_to_run(ctl) is None is FIFOScheduler.choose_trial_to_run(ours, ctl)


def test_registries_cover_the_mission():
    assert set(SEARCHERS) == set(EXPECTED_CLASSES)
    assert set(SCHEDULERS) == set(EXPECTED_SCHEDULERS)


@pytest.mark.slow
@pytest.mark.parametrize("searcher, scheduler", VALID, ids=lambda v: v)
def test_every_valid_pair_runs_for_real(ray_local, tmp_path, searcher, scheduler):
    exp = validate(synthetic(searcher, scheduler))
    summary = run(exp, tmp_path / "run", quiet=True)
    trials = pd.read_parquet(summary.run_dir / "trials.parquet")
    history = pd.read_parquet(summary.run_dir / "history.parquet")
    assert len(trials) == 3 and trials["status"].isin(["completed", "stopped"]).all()
    assert trials["score"].notna().all() and len(history) >= 3
    assert history["iteration"].max() <= 6
    assert summary.best is not None and summary.best["score"] == trials["score"].min()


# --- spaces ---------------------------------------------------------------------------------

SVM_LIKE = {
    "kernel": {"choice": ["rbf", "poly", "linear"]},
    "C": {"loguniform": [0.01, 100]},
    "gamma": {"loguniform": [1e-4, 10], "when": {"kernel": "rbf"}},
    "degree": {"randint": [2, 5], "when": {"kernel": "poly"}},
}


@pytest.mark.parametrize("searcher", ["optuna-tpe", "random", "smac"])
def test_conditional_parameters_appear_only_when_active(searcher):
    """Asks the searcher for configs directly: no trials needed to see what it proposes."""
    exp = validate({"name": "c", "family": "synthetic", "metric": {"name": "loss"},
                    "space": {**SVM_LIKE, "iterations": 2}, "searcher": {"name": searcher, "seed": 3}})
    cfg, _ = build_tune_config(exp)
    alg = base_searcher(cfg.search_alg)
    seen = set()
    for i in range(30):
        config = alg.suggest(f"t{i}")
        kernel = config["kernel"]
        seen.add(kernel)
        assert ("gamma" in config) == (kernel == "rbf"), config
        assert ("degree" in config) == (kernel == "poly"), config
        if kernel == "poly":
            assert 2 <= config["degree"] <= 5 and isinstance(config["degree"], int)
        alg.on_trial_complete(f"t{i}", {"loss": config["C"], "training_iteration": 1})
    assert seen == {"rbf", "poly", "linear"}


@pytest.mark.parametrize("searcher", ["optuna-cmaes", "optuna-gp", "hyperopt-tpe", "grid"])
def test_searchers_without_conditions_refuse_them(searcher):
    with pytest.raises(SpecError, match=rf"space\.(gamma|degree)\.when: searcher {searcher} cannot honour"):
        validate({"name": "c", "family": "synthetic", "metric": {"name": "loss"},
                  "space": {**SVM_LIKE, "iterations": 2}, "searcher": {"name": searcher}})


def test_conditions_must_name_a_choice_parameter_and_its_values():
    with pytest.raises(SpecError) as info:
        validate({"name": "c", "family": "synthetic", "metric": {"name": "loss"}, "searcher": {"name": "optuna-tpe"},
                  "space": {"kernel": {"choice": ["rbf"]}, "gamma": {"uniform": [0, 1], "when": {"kernel": "rbff"}},
                            "d": {"uniform": [0, 1], "when": {"x1": 1}}}})
    text = str(info.value)
    assert "space.gamma.when.kernel: ['rbff'] not among kernel's values ['rbf']" in text
    assert "space.d.when.x1: can only depend on a choice parameter" in text


def test_cmaes_refuses_a_space_of_only_choices():
    with pytest.raises(SpecError, match="searcher optuna-cmaes needs at least one numeric range"):
        validate({"name": "c", "family": "synthetic", "metric": {"name": "loss"}, "searcher": {"name": "optuna-cmaes"},
                  "space": {"x1": {"choice": [1.0, 2.0]}, "x2": {"choice": [3.0, 4.0]}}})


def test_randint_is_inclusive_and_quantized_kinds_keep_their_step():
    exp = validate({"name": "q", "family": "synthetic", "metric": {"name": "loss"}, "searcher": {"name": "random", "seed": 1},
                    "space": {"x1": {"quniform": [-5, 10, 0.5]}, "x2": {"qrandint": [0, 15, 5]},
                              "iterations": {"randint": [1, 2]}}})
    cfg, space = build_tune_config(exp)
    draws = [{k: d.sample() for k, d in space.items() if hasattr(d, "sample")} for _ in range(200)]
    assert {d["iterations"] for d in draws} == {1, 2}
    assert all((d["x1"] * 2).is_integer() for d in draws)
    assert {d["x2"] for d in draws} <= {0, 5, 10, 15}


# --- budget, grid, population schedulers ----------------------------------------------------

@pytest.mark.slow
def test_grid_is_enumerated_and_budget_trials_repeats_it(ray_local, tmp_path):
    exp = validate({"name": "g", "family": "synthetic", "metric": {"name": "loss"}, "searcher": {"name": "grid"},
                    "space": {"x1": {"grid": [-3.0, 3.0, 9.0]}, "x2": {"choice": [2.0, 12.0]}, "iterations": 2},
                    "budget": {"trials": 2, "concurrent": 2}})
    assert exp.total_trials == 12
    trials = pd.read_parquet(run(exp, tmp_path / "run", quiet=True).run_dir / "trials.parquet")
    counts = trials.groupby(["config.x1", "config.x2"]).size()
    assert len(counts) == 6 and (counts == 2).all()


def test_pbt_rules():
    def problems(**sched):
        raw = synthetic("random", "pbt")
        raw["scheduler"] = {"name": "pbt", **SCHEDULER_OPTS["pbt"], **sched}
        with pytest.raises(SpecError) as info:
            validate(raw)
        return str(info.value)

    assert "hyperparam_mutations[0]: 'lr' is not in the space" in problems(hyperparam_mutations=["lr"])
    assert "iterations is a constant" in problems(hyperparam_mutations=["iterations"])
    assert "perturbation_interval: 6 leaves no room" in problems(perturbation_interval=6)


def test_pb2_mutates_numeric_ranges_only():
    raw = synthetic("random", "pb2")
    raw["space"] = {"iterations": 6, "opt": {"choice": ["a", "b"]}}
    raw["scheduler"]["hyperparam_mutations"] = ["x1", "opt"]
    with pytest.raises(SpecError, match=r"hyperparam_mutations\[1\]: pb2 explores numeric ranges only"):
        validate(raw)


def test_pbt_needs_a_family_that_checkpoints(tmp_path):
    (tmp_path / "fam.py").write_text(
        "from orchestrator.families.contract import Family\n"
        "def train(config, data, trial):\n    trial.report({'loss': 1.0})\n"
        "FAMILY = Family(name='nockpt', train=train, default_space={'a': {'uniform': [0, 1]}},"
        " metrics={'loss': 'min'}, needs_data=False)\n")
    raw = {"name": "p", "family": f"{tmp_path / 'fam.py'}:FAMILY", "metric": {"name": "loss"},
           "scheduler": {"name": "pbt", "hyperparam_mutations": ["a"]}}
    with pytest.raises(SpecError, match="family nockpt does not save any; use asha or median-stopping"):
        validate(raw)


def test_max_t_above_the_family_iterations_is_refused_for_hyperband():
    raw = synthetic("random", "hyperband")
    raw["scheduler"]["max_t"] = 30
    with pytest.raises(SpecError, match=r"scheduler.max_t: 30 is above .*iterations <= 6"):
        validate(raw)


@pytest.mark.slow
def test_pbt_exploits_and_history_shows_it(ray_local, tmp_path):
    raw = synthetic("random", "pbt", trials=4)
    raw["space"]["iterations"] = 8
    raw["scheduler"]["quantile_fraction"] = 0.5
    summary = run(validate(raw), tmp_path / "run", quiet=True)
    history = pd.read_parquet(summary.run_dir / "history.parquet")
    per_trial = history.groupby("trial_id")[["config.x1", "config.x2"]].nunique()
    assert (per_trial.max(axis=1) > 1).any(), "no trial's config changed: PBT never exploited"
    # Trials load each other's checkpoints: none may go missing (Ray's num_to_keep lost them).
    assert summary.counts.get("errored", 0) == 0, pd.read_parquet(summary.run_dir / "trials.parquet")["error"]
    assert _checkpoints_per_trial(summary.run_dir) == {1}, "the latest checkpoint of each trial, no more"


def test_paused_trials_keep_only_their_latest_checkpoint(ray_local, tmp_path):
    summary = run(validate(synthetic("random", "hyperband", trials=4)), tmp_path / "run", quiet=True)
    assert summary.counts.get("errored", 0) == 0
    assert _checkpoints_per_trial(summary.run_dir) == {1}


def test_hyperband_stops_a_paused_trial_when_its_bracket_ends(ray_local, tmp_path):
    """One bracket (max_t 6). The fast trial reaches 6 while the slow one is still below it, so it is
    paused; the slow one then ends at iteration 3. Ray's own HyperBand left the paused trial waiting
    forever here (the run hung)."""
    raw = synthetic("random", "hyperband", trials=2)
    raw["space"] = {"iterations": {"choice": [3, 6]}, "sleep_s": {"choice": [0.0, 0.5]}}
    raw["searcher"]["points_to_evaluate"] = [{"iterations": 6, "sleep_s": 0.0}, {"iterations": 3, "sleep_s": 0.5}]
    summary = run(validate(raw), tmp_path / "run", quiet=True)
    trials = pd.read_parquet(summary.run_dir / "trials.parquet").set_index("config.iterations")
    assert trials.loc[6, "iterations"] == 6 and trials.loc[3, "iterations"] == 3
    assert summary.counts["errored"] == 0 and summary.counts["running"] == 0


def test_hyperband_stops_trials_under_a_concurrency_cap(ray_local, tmp_path):
    """max_t 9, eta 3: brackets of 3 (no rung), 5 (rung 3, keeps 2) and 9 (rung 1; here the last
    trial alone). With 2 trials at a time, Ray's cap counted the paused ones and the bracket of 5
    never filled: all 9 ran to 9. The 3 losers are stopped while paused, and recorded `stopped`."""
    raw = synthetic("random", "hyperband", trials=9)
    raw["space"]["iterations"] = 9
    raw["scheduler"]["max_t"] = 9
    summary = run(validate(raw), tmp_path / "run", quiet=True)
    trials = pd.read_parquet(summary.run_dir / "trials.parquet")
    assert sorted(zip(trials.status, trials.iterations)) == [("completed", 9)] * 6 + [("stopped", 3)] * 3


def _checkpoints_per_trial(run_dir) -> set[int]:
    trial_dirs = [d for d in (run_dir / "tune").iterdir() if d.is_dir() and any(d.glob("checkpoint_*"))]
    assert trial_dirs, "no trial saved a checkpoint"
    return {len(list(d.glob("checkpoint_*"))) for d in trial_dirs}


# --- seeding and warm start -------------------------------------------------------------------

@pytest.mark.parametrize("searcher", ["random", "optuna-tpe", "optuna-cmaes", "hyperopt-tpe", "bohb", "smac"])
def test_same_seed_same_first_proposals(searcher):
    def proposals(seed):
        sched = "bohb-hyperband" if searcher == "bohb" else "fifo"
        raw = synthetic(searcher, sched)
        raw["searcher"]["seed"] = seed
        cfg, space = build_tune_config(validate(raw))
        alg = base_searcher(cfg.search_alg)
        if space and hasattr(alg, "set_search_properties"):
            alg.set_search_properties("loss", "min", space)
        return [alg.suggest(f"t{i}") for i in range(3)] if searcher != "random" else \
            [sorted((k, v) for k, v in _random_draw(space, alg)) for _ in range(1)]

    assert proposals(7) == proposals(7)
    assert proposals(7) != proposals(8)


def _random_draw(space, alg):
    from ray.tune.search.variant_generator import generate_variants

    _, config = next(generate_variants({"config": space}, random_state=alg._random_state))
    return config["config"].items()


def _earlier_run(tmp_path, scores: dict[tuple[float, float], float]):
    run_dir = tmp_path / "earlier"
    run_dir.mkdir()
    rows = [{"trial_id": f"t{i}", "score": s, "config.x1": x1, "config.x2": x2, "config.iterations": 6}
            for i, ((x1, x2), s) in enumerate(scores.items())]
    pd.DataFrame(rows).to_parquet(run_dir / "trials.parquet")
    (run_dir / "experiment.json").write_text('{"metric": {"name": "loss", "mode": "min"}}')
    return run_dir


def test_warm_start_takes_the_best_configs_that_fit_the_space(tmp_path):
    earlier = _earlier_run(tmp_path, {(1.0, 2.0): 5.0, (3.0, 2.0): 0.5, (2.0, 2.0): 1.5, (50.0, 2.0): 0.1})
    raw = synthetic("random", "fifo")
    raw["searcher"]["warm_start"] = {"from": str(earlier), "top_k": 2}
    exp = validate(raw)
    # (50, 2) scored best but lies outside x1's range [-5, 10]: dropped, not clipped.
    assert exp.warm_points == ({"x1": 3.0, "x2": 2.0}, {"x1": 2.0, "x2": 2.0})
    assert exp.warm_scores == (0.5, 1.5)
    cfg, space = build_tune_config(exp)
    assert base_searcher(cfg.search_alg)._points_to_evaluate[:2] == list(exp.warm_points)


def test_warm_start_feeds_scores_to_optuna(tmp_path):
    earlier = _earlier_run(tmp_path, {(1.0, 2.0): 5.0, (3.0, 2.0): 0.5, (2.0, 2.0): 1.5})
    raw = synthetic("optuna-tpe", "fifo")
    raw["searcher"]["warm_start"] = {"from": str(earlier / "trials.parquet"), "top_k": 3}
    cfg, _ = build_tune_config(validate(raw))
    study = base_searcher(cfg.search_alg)._ot_study
    assert sorted(t.value for t in study.trials) == [0.5, 1.5, 5.0]
    assert study.best_trial.params == {"x1": 3.0, "x2": 2.0}


def test_warm_start_refuses_another_metric_and_missing_files(tmp_path):
    earlier = _earlier_run(tmp_path, {(1.0, 2.0): 5.0})
    (earlier / "experiment.json").write_text('{"metric": {"name": "regret", "mode": "min"}}')
    raw = synthetic("random", "fifo")
    raw["searcher"]["warm_start"] = {"from": str(earlier)}
    with pytest.raises(SpecError, match="that run tuned 'regret', this spec tunes 'loss'"):
        validate(raw)
    raw["searcher"]["warm_start"] = {"from": str(tmp_path / "nowhere")}
    with pytest.raises(SpecError, match="searcher.warm_start.from: no trials.parquet at"):
        validate(raw)


@pytest.mark.slow
@pytest.mark.parametrize("searcher, scheduler", [("random", "median-stopping"), ("random", "hyperband"),
                                                 ("bohb", "bohb-hyperband"), ("smac", "hyperband")])
def test_no_trial_repeats_an_iteration(ray_local, tmp_path, searcher, scheduler):
    """Schedulers that pause trials must resume them where they were, not from iteration 1."""
    raw = synthetic(searcher, scheduler, trials=6)
    raw["budget"]["concurrent"] = 2
    history = pd.read_parquet(run(validate(raw), tmp_path / "run", quiet=True).run_dir / "history.parquet")
    assert not history.duplicated(["trial_id", "iteration"]).any()
    assert (history.groupby("trial_id")["iteration"].apply(lambda s: list(s) == list(range(1, len(s) + 1)))).all()

"""Bad input is refused before Ray starts, with the field's path and a fix in the message."""

from __future__ import annotations

import pytest

from orchestrator.errors import SpecError
from orchestrator.spec.load import load_spec, parse_yaml, validate
from tests.conftest import EXPERIMENTS

BASE = {
    "name": "t",
    "family": "xgboost",
    "data": {"source": "sklearn", "name": "digits"},
    "metric": {"name": "val_error", "mode": "min"},
    "space": {"n_estimators": 10, "learning_rate": {"loguniform": [0.01, 0.3]}},
    "searcher": {"name": "random", "seed": 0},
    "scheduler": {"name": "asha", "max_t": 10, "grace_period": 2},
    "budget": {"trials": 4, "concurrent": 2},
}


def spec(**changes):
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in BASE.items()}
    for dotted, value in changes.items():
        *parents, leaf = dotted.split("__")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        if value is DELETE:
            node.pop(leaf, None)
        else:
            node[leaf] = value
    return out


DELETE = object()


def problems(raw) -> list[str]:
    with pytest.raises(SpecError) as info:
        validate(raw)
    return [str(p) for p in info.value.problems]


@pytest.mark.parametrize("path", sorted(EXPERIMENTS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_example_spec_validates(path):
    exp = load_spec(path)
    assert exp.params, "an example with an empty space tunes nothing"


def test_valid_spec_resolves_family_space_and_mode():
    raw = spec(metric={"name": "val_accuracy"})
    exp = validate(raw)
    assert exp.mode == "max"  # inferred from the metric vocabulary
    assert "max_depth" in exp.params  # from the family's default space
    assert exp.params["learning_rate"].args == (0.01, 0.3)  # the spec's entry wins
    assert exp.max_t == 10


def test_malformed_yaml_reports_line():
    with pytest.raises(SpecError) as info:
        parse_yaml("name: x\nspace:\n  lr: {loguniform: [0.1, 0.3]\nfamily: xgboost\n")
    assert "line 4" in str(info.value) or "line 3" in str(info.value)


def test_duplicate_keys_are_refused():
    with pytest.raises(SpecError, match="duplicate key 'name'"):
        parse_yaml("name: a\nname: b\n")


def test_non_mapping_spec_is_refused():
    with pytest.raises(SpecError, match="must be a YAML mapping"):
        parse_yaml("- a\n- b\n")


def test_unknown_family_lists_builtins():
    (msg,) = problems(spec(family="xgbost"))
    assert msg.startswith("family: unknown family 'xgbost'") and "xgboost" in msg


def test_unknown_searcher_lists_known_names():
    (msg,) = problems(spec(searcher={"name": "tpe"}))
    assert msg.startswith("searcher.name: unknown searcher 'tpe'") and "optuna-tpe" in msg and "random" in msg


def test_unknown_scheduler_lists_known_names():
    (msg,) = problems(spec(scheduler={"name": "hyperbandd"}))
    assert msg.startswith("scheduler.name: unknown scheduler") and "asha" in msg


@pytest.mark.parametrize("entry, expected", [
    ({"loguniform": [0, 0.3]}, "loguniform needs 0 < low < high, got [0, 0.3]"),
    ({"uniform": [1.0, 0.5]}, "uniform needs low < high, got [1.0, 0.5]"),
    ({"randint": [1.5, 4]}, "randint needs integers"),
    ({"uniform": [0, "a"]}, "needs finite numbers"),
    ({"quniform": [0, 1, 0]}, "needs q > 0"),
    ({"choice": []}, "choice needs a list"),
    ({"choice": [1, 1]}, "must be distinct"),
    ({"normal": [0, 1]}, "unknown distribution 'normal'; use one of: uniform"),
    ([1, 2, 3], "a bare list is ambiguous"),
])
def test_bad_distributions_name_the_parameter(entry, expected):
    msgs = problems(spec(space={"n_estimators": 10, "learning_rate": entry}))
    assert any(m.startswith("space.learning_rate: ") and expected in m for m in msgs), msgs


def test_metric_mode_must_be_min_or_max():
    (msg,) = problems(spec(metric={"name": "val_error", "mode": "minimize"}))
    assert msg.startswith("metric.mode:") and "'min' or 'max'" in msg and "'minimize'" in msg


def test_metric_mode_contradicting_the_metric_is_refused():
    (msg,) = problems(spec(metric={"name": "val_accuracy", "mode": "min"}))
    assert "use mode: max" in msg


def test_metric_the_family_never_reports_is_refused():
    (msg,) = problems(spec(metric={"name": "val_eror", "mode": "min"}))
    assert msg.startswith("metric.name:") and "did you mean 'val_error'" in msg


@pytest.mark.parametrize("field, value", [("trials", 0), ("trials", -3), ("concurrent", 0), ("time_s", 0)])
def test_budget_must_be_positive(field, value):
    (msg,) = problems(spec(**{f"budget__{field}": value}))
    assert msg.startswith(f"budget.{field}:")


def test_concurrent_above_trials_is_refused():
    (msg,) = problems(spec(budget={"trials": 2, "concurrent": 4}))
    assert msg.startswith("budget.concurrent: 4 is above the 2 trials") and "lower concurrent or raise trials" in msg


def test_unknown_top_level_key_suggests_the_right_one():
    (msg,) = problems(spec(sercher={"name": "random"}))
    assert msg.startswith("sercher: unknown key; did you mean 'searcher'?")


def test_unknown_nested_key_lists_valid_keys():
    (msg,) = problems(spec(scheduler={"name": "asha", "max_t": 10, "grace": 2}))
    assert msg.startswith("scheduler.grace: unknown key; did you mean 'grace_period'?")
    assert "reduction_factor" in msg


def test_grace_period_above_max_t_says_how_to_fix():
    (msg,) = problems(spec(scheduler={"name": "asha", "max_t": 5, "grace_period": 8}))
    assert msg.startswith("scheduler:") and "lower grace_period or raise max_t" in msg


def test_max_t_above_what_the_family_reports_is_refused():
    (msg,) = problems(spec(scheduler={"name": "asha", "max_t": 50}))
    assert msg.startswith("scheduler.max_t: 50 is above") and "n_estimators <= 10" in msg


def test_grid_entries_with_a_model_based_searcher_are_refused():
    msgs = problems(spec(searcher={"name": "optuna-tpe"}, space={"n_estimators": 10, "max_depth": {"grid": [2, 4]}}))
    assert any(m.startswith("space.max_depth:") and "use choice" in m for m in msgs)


def test_points_to_evaluate_must_name_space_parameters():
    (msg,) = problems(spec(searcher={"name": "random", "points_to_evaluate": [{"lr": 0.1}]}))
    assert msg.startswith("searcher.points_to_evaluate[0]:") and "'lr'" in msg


def test_all_problems_are_reported_at_once():
    msgs = problems(spec(budget={"trials": 0}, metric={"name": "val_error", "mode": "up"}))
    assert len(msgs) == 2


def test_gpu_fraction_above_one_is_refused():
    (msg,) = problems(spec(resources={"cpu": 1, "gpu": 1.5}))
    assert msg.startswith("resources:") and "whole number" in msg


def test_user_trainable_needs_mode_and_space(tmp_path):
    (tmp_path / "t.py").write_text("def train(config):\n    pass\n")
    msgs = problems({"name": "u", "family": str(tmp_path / "t.py") + ":train", "metric": {"name": "loss"}})
    assert any(m.startswith("metric.mode:") for m in msgs)
    assert any(m.startswith("space:") for m in msgs)


def test_user_trainable_missing_function_lists_callables(tmp_path):
    (tmp_path / "t.py").write_text("def fit(config):\n    pass\n")
    (msg,) = problems({"name": "u", "family": f"{tmp_path / 't.py'}:train", "metric": {"name": "l", "mode": "min"},
                       "space": {"a": 1}})
    assert "has no 'train'" in msg and "fit" in msg


def test_set_overrides_are_parsed_as_yaml(write_spec):
    path = write_spec("name: a\nfamily: xgboost\nmetric: {name: val_error}\nspace: {n_estimators: 10}\n"
                      "scheduler: {name: asha, max_t: 10}\n")
    exp = load_spec(path, ["budget.trials=3", "searcher.name=optuna-tpe", "space.max_depth={randint: [2, 3]}"])
    assert exp.spec.budget.trials == 3
    assert exp.spec.searcher.name == "optuna-tpe"
    assert exp.params["max_depth"].args == (2, 3)


def test_missing_file_is_a_spec_error(tmp_path):
    with pytest.raises(SpecError, match="cannot read spec"):
        load_spec(tmp_path / "nope.yaml")


@pytest.mark.parametrize("path", sorted(EXPERIMENTS.glob("*.yaml")), ids=lambda p: p.name)
def test_a_resolved_spec_validates_again_to_itself(path):
    """experiment.json stores the resolved spec; `hpo resume` and a repeat run validate it again."""
    exp = load_spec(path)
    again = validate(exp.resolved(), base_dir=exp.base_dir)
    assert again.resolved() == exp.resolved() and again.spec_hash == exp.spec_hash

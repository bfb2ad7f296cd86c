"""Faults at random and faults on purpose, on real runs: benchmarks/chaos.py's checks (module docstring
there), each through real `hpo run` / `hpo resume` processes with their own Ray."""

from __future__ import annotations

import random
import sys

import pytest

from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import chaos  # a benchmark script, importable for its checks

pytestmark = pytest.mark.slow


def _ok(out: chaos.Outcome) -> None:
    assert not out.failed and out.lost == 0, (out.failed, out.lost, out.faults)


@pytest.mark.parametrize("setup, faults, trials", [
    ("nsga2 (2 metrics)", ["kill"], 10),
    ("smac", ["kill"], 10),
    ("bohb+hyperband", ["kill"], 10),
    ("pbt", ["kill", "kill"], 10),
    # two faults on short trials: enough trials that the second still finds work left to cut off
    ("tpe+asha", ["int", "term"], 20),
])
def test_a_resumed_run_ends_at_exactly_its_budget_and_loses_nothing(setup, faults, trials, tmp_path):
    """kill -9 (and OOM, power loss), Ctrl-C, SIGTERM (`hpo stop`): each then `hpo resume`, to the end."""
    out = chaos.one_setup(setup, trials=trials, faults=faults, rng=random.Random(0), root=tmp_path, timeout_s=180)
    _ok(out)
    assert out.faults == faults and out.sessions == len(faults) + 1 and out.finished == trials and out.surplus == 0


def test_pbt_history_holds_every_report_and_its_curves_draw(tmp_path):
    """Every result PBT's trials reported (counted by the trainable itself) is in history.parquet, and each
    trial's curve, following its final lineage through the exploits, draws."""
    import matplotlib

    matplotlib.use("Agg")
    from orchestrator.analysis import plots, runs

    out = chaos.one_setup("pbt", trials=8, faults=[], rng=random.Random(0), root=tmp_path, timeout_s=180)
    _ok(out)
    loaded = runs.load_runs(tmp_path / "pbt" / "run")
    assert loaded.history["restored_from"].notna().any(), "PBT never exploited"
    curves = runs.learning_curves(loaded)
    assert curves.groupby("trial_id")["iteration"].apply(lambda s: list(s) == list(range(1, len(s) + 1))).all()
    assert plots.learning_curves(curves) is not None


def test_chaos_short(tmp_path):
    """The benchmark's short version: two setups, faults drawn at random."""
    outcomes = chaos.main(["--short", "--seed", "3", "--keep", str(tmp_path)])
    for out in outcomes:
        _ok(out)

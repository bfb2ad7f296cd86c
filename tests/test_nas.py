"""Architecture as hyperparameters (torch_mlp per-layer widths, torch_cnn per-block filters, kernel
and pooling): the nets built from a config, the spec checks, and a real conditional search."""

from __future__ import annotations

import pickle

import pandas as pd
import pytest

from experiments.torch_nets import build_cnn, build_mlp, conv_filters, layer_widths
from orchestrator.errors import SpecError
from orchestrator.run.driver import run
from orchestrator.spec.load import load_spec
from tests.conftest import EXPERIMENTS

NAS = EXPERIMENTS / "torch_nas_digits.yaml"


def linear_sizes(net) -> list[tuple[int, int]]:
    import torch.nn as nn

    return [(m.in_features, m.out_features) for m in net if isinstance(m, nn.Linear)]


def test_each_mlp_layer_takes_its_own_width_else_the_shared_one():
    assert linear_sizes(build_mlp({"depth": 3, "width_1": 16, "width_2": 256, "width_3": 32}, 64, 10)) == \
        [(64, 16), (16, 256), (256, 32), (32, 10)]
    # An existing spec (one width for all) builds the same net as before.
    assert linear_sizes(build_mlp({"depth": 2, "width": 32}, 64, 10)) == [(64, 32), (32, 32), (32, 10)]
    # A layer without its own width takes `width`; a width for a layer the net does not have is unused.
    assert layer_widths({"depth": 3, "width": 8, "width_2": 64, "width_4": 512}) == [8, 64, 8]
    assert linear_sizes(build_mlp({"depth": 0}, 64, 10)) == [(64, 10)]


def test_each_cnn_block_takes_its_own_filters_kernel_and_pooling():
    import torch
    import torch.nn as nn

    net = build_cnn({"conv_layers": 2, "filters_1": 32, "filters_2": 8, "kernel_size": 5, "pooling": "avg",
                     "width": 16}, 64, 10)
    convs = [m for m in net if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [(1, 32, (5, 5)), (32, 8, (5, 5))]
    assert sum(isinstance(m, nn.AvgPool2d) for m in net) == 2 and not any(isinstance(m, nn.MaxPool2d) for m in net)
    assert linear_sizes(net)[0] == (8 * 2 * 2, 16)  # 8x8 pooled twice
    assert net(torch.zeros(3, 64)).shape == (3, 10)
    # Without per-block filters: `filters` doubled per block, as before; no pooling keeps 8x8.
    assert conv_filters({"conv_layers": 3, "filters": 8}) == [8, 16, 32]
    flat = build_cnn({"conv_layers": 1, "filters": 4, "pooling": "none", "kernel_size": 3, "width": 16}, 64, 10)
    assert linear_sizes(flat)[0] == (4 * 8 * 8, 16)


def test_the_nas_spec_checks_names_and_searchers():
    exp = load_spec(NAS)
    assert exp.params["width_3"].when == {"depth": (3, 4)} and exp.params["depth"].kind == "choice"
    assert "width" not in exp.params
    with pytest.raises(SpecError, match=r"space.width_5: family torch_mlp has no parameter 'width_5'; did you mean"):
        load_spec(NAS, ["space.width_5={choice: [16, 32]}"])
    with pytest.raises(SpecError, match="hyperopt-tpe cannot honour conditional parameters"):
        load_spec(NAS, ["searcher={name: hyperopt-tpe}"])
    with pytest.raises(SpecError, match=r"space.filters_4: family torch_cnn has no parameter"):
        load_spec(EXPERIMENTS / "torch_cnn_digits.yaml", ["space.filters_4=8"])


def test_a_conditional_search_samples_only_the_widths_a_net_has_and_builds_them(ray_local, tmp_path):
    """optuna-tpe on the example: a width is in a trial's config exactly when its layer exists, and
    the net each worker trained (its checkpointed weights: HyperBand makes every trial checkpoint)
    has those widths."""
    exp = load_spec(NAS, ["budget.trials=6", "space.epochs=2", "scheduler={name: hyperband, max_t: 2}",
                          "searcher.n_startup_trials=3"])
    summary = run(exp, tmp_path / "run", quiet=True)
    trials = pd.read_parquet(summary.run_dir / "trials.parquet").set_index("trial_id")
    assert len(trials) == 6 and summary.counts["errored"] == 0
    assert trials["config.depth"].nunique() > 1, trials["config.depth"]  # seeded: depths 1 to 4 were tried
    for tid, row in trials.iterrows():
        depth = int(row["config.depth"])
        for i in range(1, 5):
            assert pd.isna(row[f"config.width_{i}"]) == (i > depth), (tid, depth, i)
    assert "config.width" not in trials
    checked = 0
    for tid, row in trials.iterrows():
        states = sorted((summary.run_dir / "tune").glob(f"{tid}/checkpoint_*/state.pkl"))
        if not states:
            continue
        saved = pickle.loads(states[-1].read_bytes())
        state = getattr(saved, "state", saved)  # the family's state inside orchestrator.trial.context._Saved
        weights = [w for name, w in state["model"].items() if name.endswith("weight") and w.ndim == 2]
        widths = [int(row[f"config.width_{i}"]) for i in range(1, int(row["config.depth"]) + 1)]
        assert [w.shape[0] for w in weights] == [*widths, 10], (tid, widths)
        assert weights[0].shape[1] == 64
        checked += 1
    assert checked >= 3  # the pruner keeps each trial's latest checkpoint


@pytest.mark.parametrize("override, message", [
    ("space.width_3={choice: [16, 32]}",
     r"space.width_3: layer 3 exists only when depth >= 3, but depth can be 1: add `when: \{depth: \[3, 4\]\}`"),
    ("space.width_3={choice: [16, 32], when: {depth: [2, 3, 4]}}", r"space.width_3: layer 3 exists only when"),
    ("space.depth={choice: [1, 2]}", r"space.width_3: no net has layer 3: depth is at most 2"),
    ("space.depth={randint: [1, 4]}\nspace.width_2={choice: [16, 32]}",
     r"space.width_2: layer 2 exists only .* \(depth must then be a choice: \{choice: \[1, 2, 3, 4\]\}\)"),
])
def test_a_layer_size_is_sampled_only_for_nets_that_have_the_layer(override, message):
    with pytest.raises(SpecError, match=message):
        load_spec(NAS, override.split("\n"))


def test_layer_sizes_need_no_condition_where_every_net_has_the_layer():
    exp = load_spec(EXPERIMENTS / "torch_mlp_digits.yaml", ["space.width_2={choice: [16, 32]}", "space.width_1=8"])
    assert exp.params["width_2"].kind == "choice" and not exp.params["width_2"].when  # depth: 2 in that spec
    load_spec(NAS, ["space.width_4=64"])  # a constant is never sampled

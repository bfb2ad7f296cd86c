"""Every notebook runs top to bottom in a real Jupyter kernel against real runs, and shows what it
should: the tables hold the runs' trials, the figures are written. Outputs stay static (HPO_STATIC),
so nothing here needs a browser."""

from __future__ import annotations

import json
import os
from pathlib import Path

import nbformat
import pandas as pd
import pytest

from tests.analysis_runs import BENCH_SETUPS, at, write_run
from tests.conftest import ROOT

NOTEBOOKS = ROOT / "notebooks"
PNG = b"\x89PNG\r\n\x1a\n"


def execute(name: str, results: list[Path], figures: Path, monkeypatch) -> nbformat.NotebookNode:
    """Runs notebooks/<name>.ipynb in a fresh kernel, as `jupyter nbconvert --execute` would."""
    from nbclient import NotebookClient

    monkeypatch.setenv("HPO_RESULTS", os.pathsep.join(map(str, results)))
    monkeypatch.setenv("HPO_FIGURES", str(figures))
    monkeypatch.setenv("HPO_STATIC", "1")
    # The kernel imports this checkout's orchestrator, installed or not.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    book = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    NotebookClient(book, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    return book


def shown(book, tag: str) -> str:
    """Everything the cell tagged `tag` displayed, as text (tables as their HTML and plain text)."""
    cell = next(c for c in book.cells if tag in c.metadata.get("tags", []))
    parts = []
    for out in cell.outputs:
        parts.append(out.get("text", ""))
        parts += [out.get("data", {}).get(kind, "") for kind in ("text/plain", "text/html")]
    return "\n".join(parts)


def pngs(folder: Path) -> set[str]:
    return {p.stem for p in folder.glob("*.png") if p.read_bytes().startswith(PNG) and p.stat().st_size > 5000}


def test_notebooks_are_committed_without_outputs():
    books = sorted(NOTEBOOKS.glob("*.ipynb"))
    assert {b.stem for b in books} >= {"analyse_run", "compare_strategies", "cluster_usage"}
    for path in books:
        book = nbformat.read(path, as_version=4)
        nbformat.validate(book)
        for cell in book.cells:
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None, f"{path.name} has outputs"


@pytest.mark.slow
@pytest.mark.parametrize("which", ["bench/optuna-tpe-asha-seed0", "svm/run"])
def test_analyse_run_notebook(which, analysis_results, tmp_path, monkeypatch):
    run = analysis_results / which
    book = execute("analyse_run", [run], tmp_path, monkeypatch)
    meta = json.loads((run / "experiment.json").read_text())
    trials = pd.read_parquet(run / "trials.parquet")
    assert f"run {meta['run_id']}" in shown(book, "setup")
    html = next(out.data["text/html"] for c in book.cells if "top-trials" in c.metadata.get("tags", [])
                for out in c.outputs if "text/html" in out.get("data", {}))
    best_first = trials.sort_values("score", ascending=meta["metric"]["mode"] == "min")["trial_id"].head(10)
    assert best_first.iloc[0] == meta["best"]["trial_id"]
    positions = [html.find(f"<td>{t}</td>") for t in best_first]
    assert -1 not in positions and positions == sorted(positions)  # the ten best, best first
    expected = {"learning_curves", "parallel_coordinates"}
    if (trials["status"] == "completed").sum() >= 2:  # Optuna's evaluators need two completed trials
        expected |= {"importance_fanova", "importance_ped-anova"}
        assert "fANOVA (Optuna's FanovaImportanceEvaluator, seed 0)" in shown(book, "importance")
    if meta.get("model", {}).get("path"):  # the SVM run saved its model: predicted vs true on the test split
        expected.add("predicted_vs_true")
        test = meta["evaluation"]
        assert f"{test['test_metric']}={test['test_score']:.6g} on the test split" in shown(book, "model")
    else:
        assert "no model to show: " in shown(book, "model")
    assert pngs(tmp_path) == expected
    assert f"{len(trials)} trials" in shown(book, "optuna")


@pytest.mark.slow
def test_compare_strategies_notebook(analysis_results, tmp_path, monkeypatch):
    book = execute("compare_strategies", [analysis_results / "bench"], tmp_path, monkeypatch)
    assert "4 runs of loss (min), optimum 0.397887" in shown(book, "setup")
    table = shown(book, "compare-table")
    assert all(setup in table for setup in BENCH_SETUPS) and "regret_median" in table
    assert pngs(tmp_path) == {"anytime", "ranks"}


@pytest.mark.slow
def test_cluster_usage_notebook(analysis_results, tmp_path, monkeypatch):
    gpu = write_run(tmp_path / "runs" / "gpu-run", [
        {"trial_id": t, "status": "completed", "score": 1.0, "node_ip": node, "cpus": 1.0, "gpus": 1.0, "gpu_ids": ids,
         "started_at": at(start), "ended_at": at(start + 60), "wall_s": 60.0}
        for t, node, ids, start in (("a", "10.0.0.1", "0", 0), ("b", "10.0.0.1", "1", 0), ("c", "10.0.0.2", "0", 30))])
    cpu = analysis_results / "bench" / "random-fifo-seed0"
    book = execute("cluster_usage", [cpu, gpu], tmp_path / "figures", monkeypatch)
    cpu_id = json.loads((cpu / "experiment.json").read_text())["run_id"]
    assert cpu_id in shown(book, "usage-runs") and "gpu-run" in shown(book, "usage-runs")
    assert "10.0.0.2" in shown(book, "usage-nodes")
    assert pngs(tmp_path / "figures") == {f"timeline_{cpu_id}", "timeline_gpu-run", "gpu_hours"}

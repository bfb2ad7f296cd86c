"""The saved model (orchestrator.model, orchestrator.run.take_home): every format reproduces the refit's
test score exactly, also from a fresh process with the library's own loader; `load_model` and
`hpo predict` refuse what does not fit in one line; `hpo refit --trial` saves a chosen trial;
saving never fails a run; the model folder travels with a cluster job's results.

Unit tests train a family directly (no Ray). The `family_runs` fixture makes one real run per
built-in family on the session's local Ray (2 trials each, a few iterations: about 40 s on 2
cores); the checks against them read what the runs wrote.
"""

from __future__ import annotations

import datetime
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from orchestrator import cli
from orchestrator.errors import ModelError
from orchestrator.families.registry import BUILTIN_FAMILIES, resolve
from orchestrator.model import card as cards
from orchestrator.model.formats import FORMATS, Target, Trust, get
from orchestrator.model.load import load_model, load_test_split
from orchestrator.model.package import package, write
from orchestrator.spec.data import DataSpec, load
from orchestrator.spec.evaluation import refit_data
from tests.conftest import ROOT
from tests.test_families import REGRESSOR, SMALL, Probe

FAMILIES = ["xgboost", "lightgbm", "torch_mlp", "torch_cnn", "random_forest", "svm", "sklearn"]


def kept(name: str, data):
    """The family trained as the refit trains it (train+valid, scored on test): (model, test metrics)."""
    config = dict(REGRESSOR.get(name, SMALL[name]) if data.task == "regression" else SMALL[name])
    probe = Probe(checkpointing=False)
    resolve(name).train(config, refit_data(data), probe)
    test = {f"test_{k.removeprefix('val_')}": v for k, v in probe.reports[-1].items()}
    return probe.kept, test


def saved(folder: Path, name: str, dataset: str) -> tuple[Path, dict]:
    """A family's model packaged and written with a minimal card; returns the folder and the test metrics."""
    data = load(DataSpec(name=dataset))
    model, test = kept(name, data)
    fmt = resolve(name).model_format
    packed = package(fmt, model, data.X_test, data.y_test, Target(data.task, data.n_classes), test)
    assert packed.reproduced, packed.differs
    card = cards.build(family=name, format=fmt, files=packed.files, trial_id="t1", config={},
                       training={"method": "last-config"}, metric={"name": "val_error", "mode": "min"},
                       valid_score=None, run={}, versions=packed.versions, created_at="now", task=data.task,
                       target=data.target, classes=list(data.classes),
                       features=[c.describe() for c in data.columns], test=test,
                       data={"source": DataSpec(name=dataset).model_dump(mode="json")})
    write(folder, packed.files, card)
    return folder, test


CASES = [(n, d) for n in FAMILIES for d in ("digits", "breast_cancer", "diabetes")
         if not (n == "torch_cnn" and d != "digits")]


# --- formats ------------------------------------------------------------------------------------

def test_every_built_in_family_that_trains_on_data_names_a_known_format():
    for name in BUILTIN_FAMILIES:
        family = resolve(name)
        assert (family.model_format in FORMATS) == family.needs_data, name


@pytest.mark.parametrize("name, dataset", CASES, ids=lambda v: v)
def test_a_saved_model_loads_and_scores_the_test_split_exactly_as_the_refit(name, dataset, tmp_path):
    """Multiclass, binary (P(class 1) alone for the boosters) and regression, every format."""
    folder, test = saved(tmp_path / "model", name, dataset)
    model = load_model(folder)
    X, y = load_test_split(folder)
    assert model.score(X, y) == test
    if model.task == "classification":
        proba = model.predict_proba(X)
        assert list(proba.columns) == model.classes and proba.index.equals(X.index)
        labels = model.predict(X)
        assert 1.0 - (labels.to_numpy() == y.to_numpy()).mean() == test["test_error"]
    else:
        assert np.sqrt(((model.predict(X) - y) ** 2).mean()) == pytest.approx(test["test_rmse"], rel=1e-12)


def test_a_torch_net_is_saved_as_weights_and_layers_that_plain_torch_rebuilds(tmp_path):
    import torch

    folder, _ = saved(tmp_path / "m", "torch_cnn", "digits")
    arch = json.loads((folder / "architecture.json").read_text())
    assert [layer["type"] for layer in arch["layers"]][:3] == ["Unflatten", "Conv2d", "ReLU"]
    net = torch.nn.Sequential(*[getattr(torch.nn, layer["type"])(**layer["args"]) for layer in arch["layers"]])
    net.load_state_dict(torch.load(folder / "model.pt", weights_only=True)["state_dict"])  # no pickled code


def test_skops_builds_only_scikit_learns_classes_unless_told_and_joblib_needs_trust(tmp_path):
    import skops.io as sio
    from sklearn.linear_model import LogisticRegression

    X, y = np.random.default_rng(0).normal(size=(40, 3)), np.arange(40) % 2
    model = LogisticRegression().fit(X, y)
    model.extra = datetime.date(2026, 1, 1)  # a type outside scikit-learn (and skops' defaults)
    (tmp_path / "model.skops").write_bytes(sio.dumps(model))
    fmt = get("sklearn")
    with pytest.raises(Exception, match=r"names types outside scikit-learn: datetime.date; if you trust them"):
        fmt.load(tmp_path, ["model.skops"], Trust())
    assert fmt.load(tmp_path, ["model.skops"], Trust(types=("datetime.date",))).predict(X).tolist() == model.predict(X).tolist()
    import joblib

    joblib.dump(model, tmp_path / "model.joblib")
    with pytest.raises(Exception, match="is a pickle: loading it runs any code it holds"):
        fmt.load(tmp_path, ["model.joblib"], Trust())
    assert fmt.load(tmp_path, ["model.joblib"], Trust(pickle=True)).predict(X).tolist() == model.predict(X).tolist()


def test_an_estimator_skops_cannot_save_falls_back_to_joblib():
    files = get("sklearn").dump(_Unskopsable())
    assert list(files) == ["model.joblib"]


class _Unskopsable:
    """Picklable, but skops 0.16 cannot save a complex number in an object's state."""

    def __init__(self):
        self.scale = complex(1, 2)


# --- the folder and the card --------------------------------------------------------------------

def test_write_puts_the_folder_in_place_whole_and_never_over_another(tmp_path):
    write(tmp_path / "model", {"a.bin": b"1"}, {"card_version": 1})
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == ["a.bin", "model.json"]
    with pytest.raises(FileExistsError):
        write(tmp_path / "model", {"b.bin": b"2"}, {"card_version": 1})
    write(tmp_path / "model", {"b.bin": b"2"}, {"card_version": 1}, replace=True)
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == ["b.bin", "model.json"]
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no temporary folder left


@pytest.fixture(scope="module")
def xgb_folder(tmp_path_factory):
    return saved(tmp_path_factory.mktemp("xgb") / "model", "xgboost", "digits")[0]


def copy_of(folder: Path, tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(folder, tmp_path / "copy"))


def test_a_newer_card_a_missing_or_truncated_file_are_one_line_each(xgb_folder, tmp_path):
    folder = copy_of(xgb_folder, tmp_path)
    card = json.loads((folder / "model.json").read_text())
    (folder / "model.json").write_text(json.dumps({**card, "card_version": cards.CARD_VERSION + 1}))
    with pytest.raises(ModelError, match=rf"card_version {cards.CARD_VERSION + 1} is newer than this "
                                         rf"hpo-orchestrator reads \({cards.CARD_VERSION}\); upgrade"):
        load_model(folder)
    (folder / "model.json").write_text(json.dumps(card))
    data = (folder / "model.ubj").read_bytes()
    (folder / "model.ubj").write_bytes(data[: len(data) // 3])
    with pytest.raises(ModelError, match=r"model.ubj is not the file that was saved \(its SHA-256 differs from "
                                         r"model.json's\): damaged or truncated; save the model again with `hpo refit"):
        load_model(folder)
    # A card without checksums (edited by hand): XGBoost's own error, in one line.
    (folder / "model.json").write_text(json.dumps({k: v for k, v in card.items() if k != "sha256"}))
    with pytest.raises(ModelError, match=r"cannot load .*model.ubj \(xgboost format: XGBoostError: .*damaged or "
                                         r"truncated; save the model again with `hpo refit") as exc:
        load_model(folder)
    assert "\n" not in str(exc.value) and "[bt]" not in str(exc.value)
    (folder / "model.ubj").unlink()
    with pytest.raises(ModelError, match=r"model.ubj is missing \(model.json lists it\)"):
        load_model(folder)
    with pytest.raises(ModelError, match="holds no saved model"):
        load_model(tmp_path / "nowhere")


@pytest.mark.parametrize("name", ["lightgbm", "torch_mlp", "random_forest"])
def test_a_truncated_file_of_each_other_format_is_one_line(name, tmp_path):
    folder, _ = saved(tmp_path / "m", name, "breast_cancer")
    main = next(f for f in json.loads((folder / "model.json").read_text())["files"] if f != "architecture.json")
    data = (folder / main).read_bytes()
    (folder / main).write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match=rf"{main} is not the file that was saved .*damaged or truncated") as exc:
        load_model(folder)  # never reaches the library: LightGBM aborts the process on a truncated model
    assert "\n" not in str(exc.value)


# --- rows that do not fit ---------------------------------------------------------------------------

def test_rows_that_do_not_fit_the_model_are_refused_naming_the_columns_and_the_fix(xgb_folder):
    model = load_model(xgb_folder)
    X, y = load_test_split(xgb_folder)
    bad = {
        "missing 'pixel_0_3'": X.drop(columns=["pixel_0_3"]),
        "extra 'id'": X.assign(id=1),
        "column 2 is 'pixel_0_2', expected 'pixel_0_1'": X[[X.columns[0], X.columns[2], X.columns[1], *X.columns[3:]]],
        "column 'pixel_3_3' holds text \\('abc' in row": X.astype({"pixel_3_3": object}).assign(
            pixel_3_3=lambda f: f["pixel_3_3"].where(f.index != f.index[4], "abc")),
        "not a ndarray": X.to_numpy(),
    }
    for message, frame in bad.items():
        with pytest.raises(ModelError, match=message):
            model.predict(frame)
    with pytest.raises(ModelError, match=r"target column 'target' holds labels the model never saw: 11 \(row"):
        model.score(X, y.where(y.index != y.index[0], 11))
    # Integers where floats were trained, and text that reads as numbers, mean the same: accepted.
    same = model.predict(X.round().astype(int)).equals(model.predict(X.round()))
    assert same and model.predict(X.astype(str)).equals(model.predict(X))


def test_a_text_column_is_one_hot_as_in_training_and_an_unseen_category_is_refused(tmp_path):
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"size": rng.normal(size=200), "colour": rng.choice(["red", "green", "blue"], 200),
                          "count": rng.integers(0, 5, 200)})
    frame["label"] = np.where((frame["colour"] == "red") | (frame["size"] > 1), "yes", "no")
    frame.to_csv(tmp_path / "d.csv", index=False)
    spec = DataSpec(source="file", path=str(tmp_path / "d.csv"), target="label", task="classification")
    data = load(spec)
    model_, test = kept("random_forest", data)
    packed = package("sklearn", model_, data.X_test, data.y_test, Target(data.task, data.n_classes), test)
    card = cards.build(family="random_forest", format="sklearn", files=packed.files, trial_id="t",
                       config={}, training={}, metric={}, valid_score=None, run={}, versions={}, created_at="now",
                       task=data.task, target=data.target, classes=list(data.classes),
                       features=[c.describe() for c in data.columns], data={"source": spec.model_dump(mode="json")})
    write(tmp_path / "m", packed.files, card)
    model = load_model(tmp_path / "m")
    X, y = load_test_split(tmp_path / "m")
    assert model.classes == ["no", "yes"] and model.score(X, y) == test
    assert set(model.predict(X)) <= {"no", "yes"}
    with pytest.raises(ModelError, match=r"column 'colour' holds values the model never saw: 'purple' \(row"):
        model.predict(X.assign(colour="purple"))


@pytest.mark.parametrize("rows_at_once", [7, None])  # blocks of 7 rows, the last one short; one block
def test_a_file_table_becomes_the_float32_matrix_of_its_numbers_then_its_one_hot_text(tmp_path, monkeypatch,
                                                                                      rows_at_once):
    """Filled column by column, a block of rows at a time (orchestrator.spec.data.encode), it is what
    pandas' own float64 matrix rounded to float32 would be: huge integers, NaN, booleans and
    missing text included."""
    from orchestrator.spec import data as data_module

    if rows_at_once:
        monkeypatch.setattr(data_module, "ROWS_AT_ONCE", rows_at_once)
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"big": rng.integers(-2**40, 2**40, 300), "x": np.where(rng.random(300) < 0.1, np.nan,
                                                                                 rng.normal(size=300) * 1e9),
                          "flag": rng.random(300) > 0.5, "colour": rng.choice(["red", "blue", None], 300),
                          "label": rng.integers(0, 2, 300)})
    frame.to_parquet(tmp_path / "d.parquet")
    data = load(DataSpec(source="file", path=str(tmp_path / "d.parquet"), target="label", task="classification"))
    expected = pd.get_dummies(frame.drop(columns="label"), columns=["colour"]).to_numpy(dtype=float)
    rows = np.concatenate([data.X_train, data.X_valid, data.X_test])
    assert rows.dtype == np.float32 and all(a.flags.c_contiguous for a in (data.X_train, data.X_valid, data.X_test))
    assert len(rows) == 300 and data.feature_names == ("big", "x", "flag", "colour")
    found = {tuple(np.nan_to_num(r, nan=-7.0)) for r in rows}  # the splits shuffle rows; NaN compared as a value
    assert found == {tuple(np.nan_to_num(r, nan=-7.0)) for r in expected.astype(np.float32)}


# --- hpo refit and saving after a run ----------------------------------------------------------------

def test_saving_the_model_never_raises_and_says_why_in_one_line(monkeypatch, tmp_path):
    from orchestrator.run import refit, summary, take_home
    from orchestrator.spec.load import validate

    exp = validate({"name": "x", "family": "svm", "metric": {"name": "val_error"}, "space": {"C": 1.0,
                    "kernel": "linear", "gamma": None, "degree": None}, "data": {"name": "breast_cancer"}})
    data = load(exp.spec.data)
    ev = refit.conclude(exp, data, refit.Best({"C": 1.0, "kernel": "linear"}, 0.1, "t1"), None, tmp_path, keep=True)
    assert ev.kept.packed.reproduced

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(take_home, "write", full)
    entry = take_home.save_run_model(tmp_path, exp, data, {"run_id": "r"}, None, ev)
    assert entry == {"error": "saving the model failed: OSError: [Errno 28] No space left on device"}
    assert summary.model_lines(entry, tmp_path) == [f"model: not saved: {entry['error']}"]
    failed = refit.Concluded(ev.evaluation, refit.Kept(error="saving it as sklearn failed: TypeError: x"))
    assert take_home.save_run_model(tmp_path, exp, data, {}, None, failed) == {
        "error": "saving it as sklearn failed: TypeError: x"}
    assert not (tmp_path / "model").exists()


def test_the_model_folders_and_a_linked_checkpoint_travel_with_a_jobs_results(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from orchestrator.cluster import jobs
    from orchestrator.results import storage

    run = tmp_path / "run"
    (run / "model").mkdir(parents=True)
    (run / "model" / "model.json").write_text(json.dumps({"card_version": 1, "checkpoint": "tune/t1/checkpoint_2"}))
    (run / "models" / "t3").mkdir(parents=True)
    (run / "models" / "t3" / "model.ubj").write_bytes(b"x")
    for name in ("checkpoint_2", "checkpoint_1"):
        (run / "tune" / "t1" / name).mkdir(parents=True)
        (run / "tune" / "t1" / name / "state.json").write_text("{}")
    (run / "experiment.json").write_text("{}")
    storage.upload(run, str(tmp_path / "store"))
    copied = sorted(str(p.relative_to(tmp_path / "store")) for p in (tmp_path / "store").rglob("*") if p.is_file())
    assert copied == ["experiment.json", "model/model.json", "models/t3/model.ubj",
                      "tune/t1/checkpoint_2/state.json"]
    assert storage.carried({"checkpoint": "../../etc"}) == ["model", "models"]

    details = SimpleNamespace(metadata={jobs.META_RESULTS: str(tmp_path / "store"), jobs.META_NAME: "x"},
                              status="SUCCEEDED")
    monkeypatch.setattr(jobs, "info", lambda cluster, job: details)
    dest = jobs.fetch(None, "job", tmp_path / "fetched")
    fetched = sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file())
    assert fetched == copied


# --- real runs, one per family ----------------------------------------------------------------------

RUNS = {  # family -> (data, space): 2 trials each, a few iterations
    "xgboost": ("digits", {"n_estimators": 5, "max_depth": 3, "learning_rate": {"uniform": [0.1, 0.3]}}),
    "lightgbm": ("diabetes", {"n_estimators": 5, "num_leaves": 8, "learning_rate": {"uniform": [0.1, 0.3]}}),
    "torch_mlp": ("breast_cancer", {"epochs": 2, "width": 32, "depth": 1, "batch_size": 64}),
    "torch_cnn": ("digits", {"epochs": 2, "filters": 8, "conv_layers": 1, "width": 32, "batch_size": 64}),
    "random_forest": ("wine", {"n_estimators": 4}),
    "svm": ("breast_cancer", {}),
    "sklearn": ("iris", {"estimator": "sklearn.linear_model.LogisticRegression", "max_iter": 300,
                         "C": {"loguniform": [0.1, 10.0]}}),
}


@pytest.fixture(scope="module")
def family_runs(ray_local, tmp_path_factory):
    from orchestrator.run.driver import run
    from orchestrator.spec.load import validate

    root = tmp_path_factory.mktemp("families")
    out = {}
    for family, (dataset, space) in RUNS.items():
        raw = {"name": family, "family": family, "data": {"name": dataset}, "space": space,
               "metric": {"name": "val_rmse" if dataset == "diabetes" else "val_error"},
               "searcher": {"name": "random", "seed": 0}, "budget": {"trials": 2, "concurrent": 2}}
        if family == "sklearn":
            raw["tracking"] = {"mlflow": True}
        out[family] = run(validate(raw), root / family, quiet=True)
    return out


LOAD_IN_A_FRESH_PROCESS = textwrap.dedent("""
    import json, sys
    from pathlib import Path

    import numpy as np

    def metric_of(run):
        return json.loads((run / "experiment.json").read_text())["evaluation"]["test_metric"]

    def native(folder, fmt, X):
        # Each library's own loader, as the card's `loader` says: no orchestrator.model involved.
        if fmt == "xgboost":
            import xgboost
            return xgboost.Booster(model_file=str(folder / "model.ubj")).predict(xgboost.DMatrix(X))
        if fmt == "lightgbm":
            import lightgbm
            return lightgbm.Booster(model_file=str(folder / "model.txt")).predict(X)
        if fmt == "torch":
            import torch
            arch = json.loads((folder / "architecture.json").read_text())
            net = torch.nn.Sequential(*[getattr(torch.nn, l["type"])(**l["args"]) for l in arch["layers"]])
            saved = torch.load(folder / "model.pt", weights_only=True)
            net.load_state_dict(saved["state_dict"])
            with torch.no_grad():
                out = net.eval()(torch.tensor((X - saved["x_mean"].numpy()) / saved["x_std"].numpy()))
            if arch["y_std"] == 1.0 and arch["y_mean"] == 0.0:
                return torch.softmax(out, dim=1).numpy().astype(np.float64)
            return out.squeeze(-1).numpy().astype(np.float64) * arch["y_std"] + arch["y_mean"]
        import skops.io
        path = folder / "model.skops"
        model = skops.io.load(path, trusted=skops.io.get_untrusted_types(file=path))
        return model.predict_proba(X) if hasattr(model, "predict_proba") else model.predict(X)

    from orchestrator.families.metrics import score
    from orchestrator.spec.data import DataSpec, load

    out = {}
    for run in map(Path, sys.argv[1:]):
        meta = json.loads((run / "experiment.json").read_text())
        card = json.loads((run / "model" / "model.json").read_text())
        data = load(DataSpec(**card["data"]["source"]))  # the test split's rows, as the family saw them
        by_library = score(data.task, data.y_test, native(run / "model", card["format"], data.X_test), prefix="test_")
        metric = meta["evaluation"]["test_metric"]
        out[run.name] = [meta["evaluation"]["test_score"], by_library[metric]]
    assert "orchestrator.model" not in sys.modules

    import orchestrator
    from orchestrator.model.load import load_test_split
    for run in map(Path, sys.argv[1:]):
        X, y = load_test_split(run)
        out[run.name].append(orchestrator.load_model(run).score(X, y)[metric_of(run)])
    print(json.dumps(out))
""")


@pytest.mark.slow
def test_every_familys_saved_model_predicts_the_test_split_to_the_recorded_score_in_a_fresh_process(family_runs):
    for family, summary in family_runs.items():
        meta = json.loads((summary.run_dir / "experiment.json").read_text())
        model = meta["model"]
        assert meta["status"] == "finished" and model["reproduced"] is True, (family, model)
        assert model["format"] == resolve(family).model_format and model["bytes"] > 0
        card = json.loads((summary.run_dir / "model" / "model.json").read_text())
        assert card["test_score"] == meta["evaluation"]["test_score"] and card["trial_id"] == meta["best"]["trial_id"]
        assert card["training"] == {"method": "last-config"} and card["config"] == meta["evaluation"]["config"]
    runs = [str(s.run_dir) for s in family_runs.values()]
    out = subprocess.run([sys.executable, "-c", LOAD_IN_A_FRESH_PROCESS, *runs], capture_output=True, text=True,
                         cwd=ROOT)
    assert out.returncode == 0, out.stderr
    scores = json.loads(out.stdout.strip().splitlines()[-1])
    assert set(scores) == set(RUNS)
    for family, (recorded, by_library, by_load_model) in scores.items():
        assert recorded == by_library == by_load_model, family


@pytest.mark.slow
def test_the_card_says_what_the_model_expects_and_docs_describe_every_key(family_runs):
    run_dir = family_runs["sklearn"].run_dir
    card = json.loads((run_dir / "model" / "model.json").read_text())
    assert card["card_version"] == cards.CARD_VERSION and card["family"] == "sklearn" and card["format"] == "sklearn"
    assert card["task"] == "classification" and card["target"] == "target" and card["classes"] == [0, 1, 2]
    assert [f["name"] for f in card["features"]][:2] == ["sepal length (cm)", "sepal width (cm)"]
    assert card["data"]["rows"] == {"train": 90, "valid": 30, "test": 30} and len(card["data"]["sha256"]) == 64
    assert {"scikit-learn", "skops", "numpy", "python"} <= set(card["versions"])
    doc = (ROOT / "docs" / "model.md").read_text()
    keys = set(card) | {f"{k}.{sub}" for k in ("data", "metric") for sub in card[k]}
    assert not sorted(k for k in keys if f"`{k}`" not in doc), "docs/model.md does not describe them"
    meta = json.loads((run_dir / "experiment.json").read_text())
    results = (ROOT / "docs" / "results.md").read_text()
    assert not sorted(k for k in meta["model"] if f"`model.{k}`" not in results)


@pytest.mark.slow
def test_mlflow_keeps_the_model_folder_as_the_parent_runs_artifacts_and_it_registers(family_runs, tmp_path):
    import mlflow
    from mlflow.tracking import MlflowClient

    run_dir = family_runs["sklearn"].run_dir
    uri = f"sqlite:///{run_dir / 'mlflow.db'}"
    client = MlflowClient(uri)
    parent = next(r for r in client.search_runs([client.get_experiment_by_name("sklearn").experiment_id])
                  if "mlflow.parentRunId" not in r.data.tags)
    assert parent.info.status == "FINISHED" and parent.data.tags["hpo.model"] == "model"
    assert sorted(a.path for a in client.list_artifacts(parent.info.run_id, "model")) == [
        "model/model.json", "model/model.skops"]
    # Registering it, as docs/tracking.md says, and loading the registered version back.
    client.create_registered_model("iris")
    client.create_model_version("iris", f"runs:/{parent.info.run_id}/model", run_id=parent.info.run_id)
    mlflow.set_tracking_uri(uri)
    folder = mlflow.artifacts.download_artifacts("models:/iris/1", dst_path=str(tmp_path / "dl"))
    X, y = load_test_split(run_dir)
    assert load_model(folder).score(X, y)["test_error"] == json.loads(
        (run_dir / "experiment.json").read_text())["evaluation"]["test_score"]


# --- hpo predict and hpo refit on a real run ----------------------------------------------------------

def hpo(*args, capsys) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.slow
def test_hpo_predict_writes_predictions_keeping_the_index_and_scores_with_the_target(family_runs, tmp_path, capsys):
    run_dir = family_runs["xgboost"].run_dir
    test_score = json.loads((run_dir / "experiment.json").read_text())["evaluation"]["test_score"]
    X, y = load_test_split(run_dir)
    X.assign(target=y).to_csv(tmp_path / "with_target.csv", index=False)
    X.to_parquet(tmp_path / "no_target.parquet")  # keeps the test split's own row numbers as its index
    code, out, _ = hpo("predict", run_dir, tmp_path / "with_target.csv", "--output", tmp_path / "p.parquet",
                       capsys=capsys)
    assert code == 0 and f"test_error={test_score:.6g} on " in out and "wrote 360 predictions" in out
    code, out, err = hpo("predict", run_dir, tmp_path / "no_target.parquet", "--output", tmp_path / "p.parquet",
                         capsys=capsys)
    assert code == 2 and "exists; pass --force" in err and err.count("\n") == 1
    code, out, _ = hpo("predict", run_dir, tmp_path / "no_target.parquet", "--output", tmp_path / "p.parquet",
                       "--force", capsys=capsys)
    assert code == 0 and "test_error" not in out
    pred = pd.read_parquet(tmp_path / "p.parquet")
    assert pred.index.equals(X.index) and list(pred.columns) == ["prediction", *(f"proba_{c}" for c in range(10))]
    assert 1.0 - (pred["prediction"] == y).mean() == test_score
    code, _, _ = hpo("predict", run_dir, tmp_path / "with_target.csv", "--output", tmp_path / "p.csv", capsys=capsys)
    assert code == 0 and pd.read_csv(tmp_path / "p.csv", index_col=0)["prediction"].tolist() == pred[
        "prediction"].tolist()


@pytest.mark.slow
def test_hpo_predict_refuses_bad_input_in_one_line_with_exit_2(family_runs, tmp_path, capsys):
    import shutil

    run_dir = Path(shutil.copytree(family_runs["lightgbm"].run_dir, tmp_path / "run"))
    X, y = load_test_split(run_dir)
    X.drop(columns=["bmi"]).to_csv(tmp_path / "missing.csv", index=False)
    X.assign(bmi="high").to_csv(tmp_path / "text.csv", index=False)
    X.assign(target=y.astype(object).where(y.index != y.index[0], "abc")).to_csv(tmp_path / "bad_target.csv",
                                                                                   index=False)
    (tmp_path / "x.txt").write_text("a,b\n")
    cases = {"missing.csv": "its columns are not the model's: missing 'bmi'",
             "text.csv": "column 'bmi' holds text ('high' in row 0) where the model was trained on numbers",
             "bad_target.csv": "target column 'target' holds text ('abc' in row 0)",
             "x.txt": "x.txt: give a .csv or .parquet file",
             "nope.csv": "nope.csv: no such file"}
    for name, message in cases.items():
        code, _, err = hpo("predict", run_dir, tmp_path / name, "--output", tmp_path / "o.parquet", capsys=capsys)
        assert code == 2 and message in err and err.count("\n") == 1 and "Traceback" not in err, (name, err)
    (run_dir / "model" / "model.txt").write_text((run_dir / "model" / "model.txt").read_text()[:500])
    X.to_csv(tmp_path / "ok.csv", index=False)
    code, _, err = hpo("predict", run_dir, tmp_path / "ok.csv", "--output", tmp_path / "o.parquet", capsys=capsys)
    assert code == 2 and "model.txt is not the file that was saved" in err and "damaged or truncated" in err
    assert err.count("\n") == 1 and not (tmp_path / "o.parquet").exists()


@pytest.mark.slow
def test_hpo_refit_saves_a_chosen_trial_and_the_best_one_reproduces_the_runs_model(family_runs, capsys):
    run_dir = family_runs["random_forest"].run_dir
    meta = json.loads((run_dir / "experiment.json").read_text())
    trials = pd.read_parquet(run_dir / "trials.parquet")
    code, _, err = hpo("refit", run_dir, "--trial", "nope", capsys=capsys)
    assert code == 2 and f"--trial: no trial 'nope' in {run_dir}; its trials: " in err
    assert all(t in err for t in trials["trial_id"])
    other = next(t for t in trials["trial_id"] if t != meta["best"]["trial_id"])
    for trial in (meta["best"]["trial_id"], other):
        code, out, _ = hpo("refit", run_dir, "--trial", trial, capsys=capsys)
        assert code == 0 and f"model: {run_dir}/models/{trial}/" in out
        card = json.loads((run_dir / "models" / trial / "model.json").read_text())
        assert card["trial_id"] == trial and card["reproduced"] is True
    best = json.loads((run_dir / "models" / meta["best"]["trial_id"] / "model.json").read_text())
    assert best["test"] == meta["evaluation"]["test"]  # the same refit, in this process instead of a Ray task
    code, _, err = hpo("refit", run_dir, "--trial", other, capsys=capsys)
    assert code == 2 and "pass --force" in err
    assert hpo("refit", run_dir, "--trial", other, "--force", capsys=capsys)[0] == 0

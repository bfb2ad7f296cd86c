"""How each library's model is saved, loaded and asked for predictions: one entry per library.

A family names its entry (`Family.model_format`) and hands the entry's object to `trial.keep(...)`
after its last iteration. Each entry saves in the library's own format, so the files load without
this package (`loader`, also written into the card), and predicts with exactly the call the
family scored with, so a loaded model reproduces the refit's test score to the bit (checked at
every save: orchestrator.model.package). Libraries are imported only inside the methods.

- `xgboost` takes an `xgboost.Booster`: model.ubj, loaded by `xgboost.Booster(model_file=...)`;
- `lightgbm` takes a `lightgbm.Booster`: model.txt, loaded by `lightgbm.Booster(model_file=...)`;
- `torch` takes `{"net": nn.Sequential, "x_mean", "x_std", "y_mean", "y_std"}` (the net, and what
  maps raw rows into it and its output back): model.pt and architecture.json;
- `sklearn` takes a fitted estimator: model.skops (else model.joblib), loaded by
  `skops.io.load(..., trusted=[...])` (`joblib.load`: a pickle).

A PyTorch net is saved as its weights (a `state_dict`, which `weights_only=True` loads without
running code) plus its layers as data (`architecture.json`: each layer's torch.nn class and
constructor arguments), not as a pickled module, which would need the class's code to load.

scikit-learn models go through skops, whose loader builds only the types it is told to trust:
`load` trusts scikit-learn's own classes and refuses any other type the file names unless the
caller lists it (`Trust.types`). An estimator skops cannot save falls back to joblib, a pickle:
loading one runs whatever code the file holds, so `load` refuses it unless `Trust.pickle`.
"""

from __future__ import annotations

import importlib
import inspect
import io
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Target:
    """What a prediction is of: the task, and for classification the number of classes (the
    columns of the probabilities, class codes 0..k-1)."""

    task: str
    n_classes: int = 0


@dataclass(frozen=True)
class Trust:
    """What loading may construct beyond a library's plain model files.

    Attributes:
        types: fully qualified names skops may build besides scikit-learn's own classes.
        pickle: load a joblib/pickle file, which runs any code it holds: only for files you made.
        own: the files were written by this process a moment ago (the check after saving): trust all.
    """

    types: tuple[str, ...] = ()
    pickle: bool = False
    own: bool = False


class Format:
    """One library's entry. `dump` runs where the refit trained (a Ray worker); `load` and `predict`
    wherever the model is used.

    Attributes:
        name: the key in FORMATS, which a family's `model_format` and a card's `format` name.
        packages: pip distributions whose versions the card records.
        loader: Python that loads the files without this package (`{folder}` is the model folder).
    """

    name = ""
    packages: tuple[str, ...] = ()
    loader = ""

    def dump(self, model: Any) -> dict[str, bytes]:
        """The kept object as files: name -> bytes."""
        raise NotImplementedError

    def load(self, folder: Path, files: list[str], trust: Trust) -> Any:
        """The library's own object back from the files (raises the library's error on a bad file)."""
        raise NotImplementedError

    def predict(self, model: Any, X: np.ndarray, target: Target) -> np.ndarray:
        """What the family scored: class probabilities (n, k), or P(class 1) alone for a binary
        model that gives only that, or values (n,) for regression."""
        raise NotImplementedError


class XGBoostFormat(Format):
    name, packages = "xgboost", ("xgboost",)
    loader = ("import xgboost\nbooster = xgboost.Booster(model_file='{folder}/model.ubj')\n"
              "booster.predict(xgboost.DMatrix(X))  # X: float32 rows, columns as model.json's features")

    def dump(self, model):
        return {"model.ubj": bytes(model.save_raw(raw_format="ubj"))}

    def load(self, folder, files, trust):
        import xgboost as xgb

        return xgb.Booster(model_file=str(folder / "model.ubj"))

    def predict(self, model, X, target):
        import xgboost as xgb

        return model.predict(xgb.DMatrix(X))


class LightGBMFormat(Format):
    name, packages = "lightgbm", ("lightgbm",)
    loader = "import lightgbm\nbooster = lightgbm.Booster(model_file='{folder}/model.txt')\nbooster.predict(X)"

    def dump(self, model):
        return {"model.txt": model.model_to_string().encode()}

    def load(self, folder, files, trust):
        import lightgbm as lgb

        return lgb.Booster(model_file=str(folder / "model.txt"))

    def predict(self, model, X, target):
        return model.predict(X)


class TorchFormat(Format):
    name, packages = "torch", ("torch",)
    loader = ("import json, torch\narch = json.load(open('{folder}/architecture.json'))\n"
              "net = torch.nn.Sequential(*[getattr(torch.nn, l['type'])(**l['args']) for l in arch['layers']])\n"
              "saved = torch.load('{folder}/model.pt', weights_only=True)\nnet.load_state_dict(saved['state_dict'])\n"
              "net.eval()(torch.tensor((X - saved['x_mean'].numpy()) / saved['x_std'].numpy()))"
              "  # then softmax (classification) or * y_std + y_mean")
    SKIP = {"device", "dtype"}  # constructor arguments that are not architecture

    def dump(self, model):
        import torch

        net = model["net"]
        layers = [self._layer(layer) for layer in self._sequential(net)]
        buf = io.BytesIO()
        torch.save({"state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()},
                    "x_mean": torch.from_numpy(np.asarray(model["x_mean"], dtype=np.float32).copy()),
                    "x_std": torch.from_numpy(np.asarray(model["x_std"], dtype=np.float32).copy())}, buf)
        arch = {"layers": layers, "y_mean": float(model["y_mean"]), "y_std": float(model["y_std"])}
        return {"model.pt": buf.getvalue(), "architecture.json": (json.dumps(arch, indent=1) + "\n").encode()}

    def _sequential(self, net):
        import torch.nn as nn

        if not isinstance(net, nn.Sequential):
            raise TypeError(f"the torch format saves an nn.Sequential of torch.nn layers, got {type(net).__name__}")
        return list(net)

    def _layer(self, layer) -> dict[str, Any]:
        """A torch.nn layer as data: its class name and the constructor arguments that rebuild it."""
        import torch.nn as nn

        cls = type(layer)
        if getattr(nn, cls.__name__, None) is not cls:
            raise TypeError(f"layer {cls.__name__} is not a torch.nn class; the torch format rebuilds layers "
                            f"by name from torch.nn only")
        args = {}
        for name, p in inspect.signature(cls).parameters.items():
            if name in self.SKIP or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or not hasattr(layer, name):
                continue
            value = getattr(layer, name)
            args[name] = (value is not None) if name == "bias" else list(value) if isinstance(value, tuple) else value
        return {"type": cls.__name__, "args": args}

    def load(self, folder, files, trust):
        import torch

        arch = json.loads((folder / "architecture.json").read_text())
        net = torch.nn.Sequential(*[getattr(torch.nn, layer["type"])(**layer["args"]) for layer in arch["layers"]])
        saved = torch.load(folder / "model.pt", weights_only=True, map_location="cpu")
        net.load_state_dict(saved["state_dict"])
        return {"net": net.eval(), "x_mean": saved["x_mean"].numpy(), "x_std": saved["x_std"].numpy(),
                "y_mean": arch["y_mean"], "y_std": arch["y_std"]}

    def predict(self, model, X, target, chunk: int = 4096):
        # experiments/torch_nets.py's _predict, on the rows standardised as in training.
        import torch

        net = model["net"]
        device = next(net.parameters()).device
        Xs = torch.tensor((X - model["x_mean"]) / model["x_std"], dtype=torch.float32, device=device)
        net.eval()
        with torch.no_grad():
            out = torch.cat([net(Xs[i:i + chunk]) for i in range(0, Xs.shape[0], chunk)])
        if target.task == "classification":
            return np.asarray(torch.softmax(out, dim=1).cpu().numpy(), dtype=np.float64)
        pred = np.asarray(out.squeeze(-1).cpu().numpy(), dtype=np.float64)
        return pred * model["y_std"] + model["y_mean"]


class SklearnFormat(Format):
    name, packages = "sklearn", ("scikit-learn", "skops")
    loader = ("import skops.io\nmodel = skops.io.load('{folder}/model.skops', "
              "trusted=skops.io.get_untrusted_types(file='{folder}/model.skops'))  # read that list first\n"
              "model.predict_proba(X)  # or model.predict(X)")

    def dump(self, model):
        try:
            import skops.io as sio

            return {"model.skops": sio.dumps(model)}
        except Exception:  # skops missing, or an estimator it cannot save: a pickle (see the module docstring)
            import joblib

            buf = io.BytesIO()
            joblib.dump(model, buf)
            return {"model.joblib": buf.getvalue()}

    def load(self, folder, files, trust):
        if "model.joblib" in files:
            if not (trust.pickle or trust.own):
                raise UntrustedError("model.joblib is a pickle: loading it runs any code it holds. Load only a file "
                                     "you made: load_model(path, trust_pickle=True), or hpo predict --trust-pickle")
            import joblib

            return joblib.load(folder / "model.joblib")
        import skops.io as sio

        path = folder / "model.skops"
        untrusted = sio.get_untrusted_types(file=path)
        refused = [] if trust.own else [t for t in untrusted if t not in trust.types and not _sklearn_class(t)]
        if refused:
            raise UntrustedError(f"model.skops names types outside scikit-learn: {', '.join(refused)}; if you trust "
                                 f"them, pass load_model(path, trusted=[...]) (hpo predict --trust TYPE)")
        return sio.load(path, trusted=untrusted)

    def predict(self, model, X, target):
        # experiments/sklearn_models.py's _predictions: one probability column per class code.
        if target.task == "regression":
            return model.predict(X)
        out = np.zeros((len(X), target.n_classes))
        classes = np.asarray(model.classes_, dtype=int)
        if hasattr(model, "predict_proba"):
            out[:, classes] = model.predict_proba(X)
        else:
            out[np.arange(len(X)), model.predict(X).astype(int)] = 1.0
        return out


class UntrustedError(Exception):
    """The file would construct something the caller has not trusted."""


def _sklearn_class(name: str) -> bool:
    """Whether `name` is a class defined in scikit-learn (its estimators, trees, calibrators)."""
    module, _, attr = name.rpartition(".")
    if not (module == "sklearn" or module.startswith("sklearn.")):
        return False
    try:
        obj = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError):
        return False
    return inspect.isclass(obj) and (obj.__module__ or "").startswith("sklearn")


FORMATS: Mapping[str, Format] = {f.name: f for f in (XGBoostFormat(), LightGBMFormat(), TorchFormat(), SklearnFormat())}


def get(name: str) -> Format:
    if name not in FORMATS:
        raise KeyError(f"unknown model format {name!r}; known: {', '.join(FORMATS)}")
    return FORMATS[name]

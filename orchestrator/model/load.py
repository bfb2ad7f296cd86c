"""`load_model(path)`: a saved model back, ready to predict on a table.

`path` is a run folder (its own refit's model, `RUN_DIR/model/`) or a model folder itself (e.g.
`RUN_DIR/models/<trial id>/`, from `hpo refit --trial`). What can go wrong is the user's to fix
and says so in one line (ModelError): no model saved, a card newer than this package reads, a
model file missing or damaged, a file that would run code or build types no one trusted, and
rows that do not fit the model (orchestrator.model.inputs).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from orchestrator.errors import ModelError
from orchestrator.families.metrics import probabilities, score
from orchestrator.model import card as cards
from orchestrator.model import inputs
from orchestrator.model.formats import FORMATS, Format, Target, Trust, UntrustedError
from orchestrator.results.contract import CARD, MODEL_DIR, MODELS_DIR


def model_folder(path: str | Path) -> Path:
    """The model folder `path` names: itself if it holds a card, else a run folder's `model/`."""
    path = Path(path)
    if (path / CARD).is_file() or not (path / "experiment.json").is_file():
        return path
    return path / MODEL_DIR


def load_model(path: str | Path, trusted: list[str] | tuple[str, ...] = (), trust_pickle: bool = False) -> Model:
    """The model saved in `path` (a run folder or a model folder).

    Args:
        trusted: types a scikit-learn model file may build beyond scikit-learn's own classes (skops).
        trust_pickle: load a joblib file (an estimator skops could not save), which runs any code it
            holds: only for files you made.

    Raises:
        ModelError: nothing saved there, a newer card, a missing or damaged file, an untrusted file.
    """
    folder = model_folder(path)
    if not folder.is_dir():
        raise ModelError(f"{path} holds no saved model (no {MODEL_DIR}/{CARD}); see experiment.json's "
                         f"`model` for why, and save one with `hpo refit {path} --trial ID`")
    card = cards.read(folder)
    if card.format is None:
        where = f": {card.checkpoint}" if card.checkpoint else ""
        raise ModelError(f"{folder / CARD} describes a checkpoint of your own trainable ({card.family}){where}; "
                         f"hpo does not know its format: load it with your own code")
    if card.format not in FORMATS:
        raise ModelError(f"{folder / CARD}: format {card.format!r} is not one this hpo-orchestrator knows "
                         f"({', '.join(FORMATS)}); upgrade hpo-orchestrator")
    fmt = FORMATS[card.format]
    fix = f"save the model again with `hpo refit {_run_dir(folder)} --trial {card.trial_id}`"
    for name in card.files:
        if not (folder / name).is_file():
            raise ModelError(f"{folder / name} is missing (model.json lists it); {fix}")
        # Checked before any library reads it: LightGBM aborts the process on a truncated model.
        if name in card.sha256 and _sha256(folder / name) != card.sha256[name]:
            raise ModelError(f"{folder / name} is not the file that was saved (its SHA-256 differs from model.json's): "
                             f"damaged or truncated; {fix}")
    try:
        native = fmt.load(folder, list(card.files), Trust(tuple(trusted), trust_pickle))
    except UntrustedError as exc:
        raise ModelError(f"{folder}: {exc}") from None
    except ImportError as exc:
        raise ModelError(f"{folder}: loading a {card.format} model needs {exc.name or 'its library'} "
                         f"({', '.join(fmt.packages)}); pip install it") from None
    except Exception as exc:  # the library's own error: a truncated or foreign file
        files = ", ".join(str(folder / f) for f in card.files)
        raise ModelError(f"cannot load {files} ({card.format} format: {type(exc).__name__}: {_reason(exc)}): the file "
                         f"is damaged or truncated; {fix}") from None
    return Model(card, folder, fmt, native)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _reason(exc: BaseException) -> str:
    """A library error's message in one line: without C++ stack traces, source paths and times."""
    lines = []
    for line in str(exc).splitlines():
        if line.strip().startswith(("Stack trace", "[bt]")):
            break
        lines.append(re.sub(r"^\[[\d:]+\]\s+\S+:\d+:\s*", "", line.strip()))
    text = " ".join(ln for ln in lines if ln)
    return text[:200] or "no message"


def _run_dir(folder: Path) -> Path:
    """The run folder a model folder belongs to (`model/`, or `models/<trial id>/`)."""
    return folder.parent.parent if folder.parent.name == MODELS_DIR else folder.parent


@dataclass(frozen=True)
class Model:
    """A loaded model and its card.

    Attributes:
        card: model.json (orchestrator.model.card.Card): family, config, scores, data, versions.
        folder: where it was loaded from.
        native: the library's own object (an `xgboost.Booster`, a scikit-learn estimator, ...).
    """

    card: cards.Card
    folder: Path
    format: Format
    native: Any

    @property
    def feature_names(self) -> list[str]:
        """The columns `predict` takes, in this order."""
        return self.card.feature_names

    @property
    def classes(self) -> list[Any]:
        """The class labels, in the order of `predict_proba`'s columns; empty for regression."""
        return list(self.card.classes)

    @property
    def task(self) -> str:
        return self.card.task or "classification"

    def _output(self, frame: Any, source: str) -> np.ndarray:
        X = inputs.matrix(frame, self.card, source)
        return self.format.predict(self.native, X, Target(self.task, len(self.card.classes)))

    def predict(self, frame: Any, source: str = "data"):
        """A Series of predicted labels (classification) or values, with `frame`'s index."""
        import pandas as pd

        out = self._output(frame, source)
        if self.task == "classification":
            labels = np.asarray(self.card.classes, dtype=object)[probabilities(out).argmax(axis=1)]
            return pd.Series(list(labels), index=frame.index, name="prediction")
        return pd.Series(np.asarray(out, dtype=float), index=frame.index, name="prediction")

    def predict_proba(self, frame: Any, source: str = "data"):
        """A DataFrame of class probabilities, one column per class (`classes`), `frame`'s index."""
        import pandas as pd

        if self.task != "classification":
            raise ModelError(f"{self.folder}: a regression model has no class probabilities; use predict")
        return pd.DataFrame(probabilities(self._output(frame, source)), index=frame.index, columns=self.classes)

    def score(self, frame: Any, target: Any, source: str = "data") -> dict[str, float]:
        """Every metric of the task on (`frame`, `target`), named as the card's `test` metrics
        (`test_error`, ...): on the run's test split, exactly the card's."""
        y = inputs.codes(target, self.card, source)
        return score(self.task, y, self._output(frame, source), prefix="test_")


def load_test_split(path: str | Path):
    """The run's test split as (feature table, target with its labels), made again from the card's
    data section (orchestrator.spec.data.heldout_frame): what the card's test score was measured on."""
    from orchestrator.spec.data import DataError, DataSpec, heldout_frame

    folder = model_folder(path)
    card = cards.read(folder)
    data = getattr(card, "data", None) or {}
    if "source" not in data:
        raise ModelError(f"{folder / CARD} names no data (a user trainable reads its own)")
    base = data.get("base_dir")
    try:
        return heldout_frame(DataSpec(**data["source"]), Path(base) if base else None)
    except DataError as exc:
        raise ModelError(f"{folder / CARD}: data.{exc.field.removeprefix('data.')}: {exc}") from None

"""model.json, the card beside a saved model: what it is, what it expects, how well it did, and how
it was trained, readable by any tool (plain JSON) and by `load_model`.

The card has its own version (`card_version`), apart from the results contract's: it goes up when
a key is renamed, removed or changes meaning, and new keys keep it, as in orchestrator.results.contract.
A reader refuses a card newer than it knows (`read`) rather than misreading it. Every key is
described in docs/model.md (tests/test_model.py checks that against a real card).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from orchestrator.errors import ModelError
from orchestrator.results.contract import CARD

CARD_VERSION = 1


class Feature(BaseModel):
    """One input column (orchestrator.spec.data.Column)."""

    model_config = ConfigDict(frozen=True, extra="allow")

    name: str
    dtype: str
    kind: str  # number | text
    categories: list[str] | None = None


class Card(BaseModel):
    """model.json as read back. Unknown keys (from a newer card of the same version) are kept."""

    model_config = ConfigDict(frozen=True, extra="allow")

    card_version: int
    family: str
    format: str | None  # an entry of orchestrator.model.formats.FORMATS; None: a user trainable's checkpoint
    files: list[str] = []
    sha256: dict[str, str] = {}
    task: str | None = None
    target: str | None = None
    classes: list[Any] = []
    features: list[Feature] = []
    trial_id: str
    config: dict[str, Any]
    training: dict[str, Any]
    metric: dict[str, Any]
    valid_score: float | None = None
    test_metric: str | None = None
    test_score: float | None = None
    test: dict[str, float] = {}
    reproduced: bool | None = None
    checkpoint: str | None = None

    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.features]


def read(folder: Path) -> Card:
    """The card in `folder`; a missing, unreadable or newer one is a ModelError naming the fix."""
    path = Path(folder) / CARD
    if not path.is_file():
        raise ModelError(f"{folder} holds no saved model (no {CARD}); `hpo refit RUN_DIR --trial ID` saves one")
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise ModelError(f"{path}: not a readable model card ({_first_line(exc)}); save the model again with "
                         f"`hpo refit RUN_DIR --trial ID`") from None
    version = raw.get("card_version") if isinstance(raw, dict) else None
    if not isinstance(version, int) or isinstance(version, bool):
        raise ModelError(f"{path}: no card_version; it is not a model card written by hpo")
    if version > CARD_VERSION:
        raise ModelError(f"{path}: card_version {version} is newer than this hpo-orchestrator reads ({CARD_VERSION}); "
                         f"upgrade hpo-orchestrator to load this model")
    try:
        return Card.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise ModelError(f"{path}: {where}: {err['msg']}; the card is damaged: save the model again with "
                         f"`hpo refit RUN_DIR --trial ID`") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc)
    return text.splitlines()[0] if text else type(exc).__name__


def build(*, family: str, format: str | None, files: dict[str, bytes], trial_id: str, config: dict[str, Any],
          training: dict[str, Any], metric: dict[str, Any], valid_score: float | None, run: dict[str, Any],
          versions: dict[str, str], created_at: str, task: str | None = None, target: str | None = None,
          classes: list[Any] | None = None, features: list[dict[str, Any]] | None = None,
          test_metric: str | None = None, test_score: float | None = None, test: dict[str, float] | None = None,
          reproduced: bool | None = None, nested: dict[str, Any] | None = None, data: dict[str, Any] | None = None,
          loader: str | None = None, checkpoint: str | None = None) -> dict[str, Any]:
    """A card as written to model.json (keys in docs/model.md); absent parts are left out. `files`
    are the model's files (name -> bytes): the card lists them with their SHA-256."""
    card = {"card_version": CARD_VERSION, "created_at": created_at, "family": family, "format": format,
            "files": sorted(files), "sha256": {n: hashlib.sha256(b).hexdigest() for n, b in sorted(files.items())},
            "task": task, "target": target, "classes": list(classes or []),
            "features": list(features or []), "trial_id": trial_id, "config": config, "training": training,
            "metric": metric, "valid_score": valid_score, "test_metric": test_metric, "test_score": test_score,
            "test": dict(test or {}), "reproduced": reproduced, "nested": nested, "data": data,
            "versions": versions, "run": run, "loader": loader, "checkpoint": checkpoint}
    return {k: v for k, v in card.items() if v is not None or k == "format"}  # format: null says "not ours"

"""The `tracking:` section of a spec, and the registry of trackers it can turn on.

The spec side only: pydantic and the standard library, never a tracker library, so a spec with a
`tracking:` section validates (and a run without one starts) on a machine without MLflow, W&B or
tensorboardX. This module sits below `spec`, `trial`, `results` and `run`, and imports none of them.

**The registry.** `TRACKERS` is the one list of trackers: each entry owns its facts (the
`TrackingSpec` field that turns it on, the modules it needs, the pip package that provides them,
and its backend class as a "module:Class" string, imported only when the tracker is on).
`open_tracking` (orchestrator.tracking.listener) builds the backends from it, and `check` finds a
tracker that is on but not installed. Before the registry, adding a tracker meant five edits in one
file, and a missing package showed up only as "open failed" on the tracking thread, after Ray had
started; `check` says so before anything starts, as one spec problem with its path and the fix.
tests/test_tracking.py checks that the entries and `TrackingSpec`'s fields match, one to one.

**Secrets.** Nothing in the tracking package reads or writes an API key or token: W&B and MLflow
take theirs from their own environment variables or files, which are never logged. A
`tracking_uri` carrying a credential (user info before '@', or a query key that names one) is
refused at validation, without echoing it: the URI is written to experiment.json.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import sys
from dataclasses import dataclass
from typing import Literal
from urllib.parse import parse_qsl, urlsplit

from pydantic import Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from orchestrator.base import SECRET_INPUT, StrictModel
from orchestrator.errors import Problem

# Query keys that name a credential (`?token=`, `?api_key=`, `?sig=`...): refused in a tracking URI.
_SECRET_KEY = re.compile(r"token|key|secret|passw|auth|sig|cred", re.IGNORECASE)


class MlflowSpec(StrictModel):
    tracking_uri: str | None = Field(None, description="default: sqlite:///RUN_DIR/mlflow.db")
    experiment_name: str | None = Field(None, description="default: the spec's name")

    @field_validator("tracking_uri")
    @classmethod
    def _no_secret(cls, uri):
        """A URI is written to experiment.json and the logs: it must not carry a credential."""
        if uri is None:
            return uri
        parts = urlsplit(uri)
        secret_keys = [k for k, _ in parse_qsl(parts.query) if _SECRET_KEY.search(k)]
        if parts.username or parts.password or secret_keys:
            what = "user info before '@'" if parts.username or parts.password else f"query key {secret_keys[0]!r}"
            raise PydanticCustomError(SECRET_INPUT, f"carries a credential ({what}), which would be written "
                                      f"to experiment.json; give it in MLFLOW_TRACKING_USERNAME/"
                                      f"MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) instead")
        return uri


class WandbSpec(StrictModel):
    project: str | None = Field(None, description="default: the spec's name")
    entity: str | None = None
    mode: Literal["offline", "online"] = Field("offline", description="offline: no account, no network; "
                                               "`wandb sync RUN_DIR/wandb/offline-run-*` uploads later")


class TrackingSpec(StrictModel):
    """`tracking:`; one field per tracker (an entry of `TRACKERS`), off unless given.

    A tracker with options (`mlflow`, `wandb`) also takes `true` for its defaults and `false` for off.
    """

    mlflow: MlflowSpec | None = None
    tensorboard: bool = False
    wandb: WandbSpec | None = None

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data):
        if isinstance(data, dict):
            data = dict(data)
            for key, field in cls.model_fields.items():
                if field.annotation is bool:  # a plain switch: true and false are its values
                    continue
                if data.get(key) is True:
                    data[key] = {}
                elif data.get(key) is False:
                    data[key] = None
        return data

    @property
    def enabled(self) -> bool:
        return any(getattr(self, key) for key in type(self).model_fields)


# -- the registry ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Tracker:
    """One tracker's facts.

    Attributes:
        field: the `TrackingSpec` field (the key under `tracking:`) that turns it on; its value is
            what the backend is built from.
        modules: the top-level modules its backend imports when it opens.
        pip: the package that provides them, as `pip install` takes it (and requirements.lock pins it).
        backend: its `Backend` subclass as "module:Class"; the module is imported by `load`, when the
            tracker is on, and imports the tracker's library only when the backend opens.
    """

    field: str
    modules: tuple[str, ...]
    pip: str
    backend: str

    def missing(self) -> list[str]:
        """The modules that are not installed (looked up, not imported)."""
        return [m for m in self.modules if not _installed(m)]

    def problem(self) -> Problem | None:
        """The spec problem if the tracker's package is not installed, else None."""
        if not self.missing():
            return None
        return Problem(f"tracking.{self.field}", f"needs {self.pip}, which is not installed: pip install {self.pip} "
                                                 f"(pinned in requirements.lock), or remove tracking.{self.field}")

    def load(self) -> type:
        """The backend class (imports its module, not the tracker's library)."""
        module, _, name = self.backend.partition(":")
        return getattr(importlib.import_module(module), name)


TRACKERS: dict[str, Tracker] = {
    "mlflow": Tracker("mlflow", ("mlflow",), "mlflow-skinny", "orchestrator.tracking.mlflow:MlflowBackend"),
    "tensorboard": Tracker("tensorboard", ("tensorboardX",), "tensorboardX",
                           "orchestrator.tracking.tensorboard:TensorboardBackend"),
    "wandb": Tracker("wandb", ("wandb",), "wandb", "orchestrator.tracking.wandb:WandbBackend"),
}


def check(spec: TrackingSpec) -> list[Problem]:
    """One problem per tracker the spec turns on whose package is not installed.

    Meant for spec validation, so that a missing package stops the run before Ray starts instead of
    dropping the tracker on the tracking thread. Looks the modules up (`importlib.util.find_spec`)
    without importing them: MLflow and W&B take about a second each to import.
    """
    return [p for t in TRACKERS.values() if getattr(spec, t.field) and (p := t.problem()) is not None]


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a dotted name whose parent is missing
        return False
    except ValueError:  # in sys.modules without a __spec__ (set by hand, as some tests do): it is there
        return module in sys.modules

"""The one pydantic base every spec object shares: unknown keys are errors, objects are immutable,
and a boolean is never a number (pydantic would take `trials: true` as 1).

The boolean check is one model validator, not a `field_validator("*")`: a validator on every field
also wraps the `name` literal that the searcher/scheduler unions are discriminated by, and pydantic
then refuses to build the union. A model validator's error is located at the section, so it names
the key in its context (`BOOLEAN_FOR_NUMBER`), and `error_path` puts it back into the path (the spec's
and the cluster file's problems alike).
"""

import types
import typing

from pydantic import BaseModel, ConfigDict, model_validator
from pydantic_core import PydanticCustomError

BOOLEAN_FOR_NUMBER = "boolean_for_number"  # the error type; its context names the field
SECRET_INPUT = "secret_input"  # an error whose input holds a credential: reported without echoing it


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _no_booleans_for_numbers(cls, data):
        if isinstance(data, dict):
            for key, value in data.items():
                field = cls.model_fields.get(key)
                if isinstance(value, bool) and field is not None and (kind := _number_kind(field.annotation)):
                    raise PydanticCustomError(BOOLEAN_FOR_NUMBER, "expected {kind}, got {value} (a boolean); "
                                              "write {kind}", {"field": key, "kind": kind, "value": str(value).lower()})
        return data


def _number_kind(annotation) -> str | None:
    """'a whole number' (int), 'a number' (float), or None for a field that is no number or that
    also takes booleans; an optional number counts."""
    union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
    args = set(typing.get_args(annotation) if union else (annotation,))
    if bool in args:
        return None
    return "a number" if float in args else "a whole number" if int in args else None


def error_path(err: dict) -> list:
    """Where a pydantic error points, as YAML path parts: a boolean given for a number is raised for
    its whole section (see the module docstring), so its field is put back from the error's context."""
    loc = list(err["loc"])
    if err["type"] == BOOLEAN_FOR_NUMBER:
        loc.append(err["ctx"]["field"])
    return loc

"""The one pydantic base every spec object shares: unknown keys are errors, objects are immutable,
and a boolean is never a number (pydantic would take `trials: true` as 1).

The boolean check is one model validator, not a `field_validator("*")`: a validator on every field
also wraps the `name` literal that the searcher/scheduler unions are discriminated by, and pydantic
then refuses to build the union. A model validator's error is located at the section, so it names
the key in its context (`BOOLEAN_FOR_NUMBER`) and orchestrator.spec.experiment puts it back into the path.
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
                if isinstance(value, bool) and field is not None and _is_number(field.annotation):
                    raise PydanticCustomError(BOOLEAN_FOR_NUMBER, "expected a number, got {value} (a boolean); "
                                              "write a number", {"field": key, "value": str(value).lower()})
        return data


def _is_number(annotation) -> bool:
    """int or float (or an optional one), but not a field that also takes booleans."""
    union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
    args = typing.get_args(annotation) if union else (annotation,)
    return bool(set(args) & {int, float}) and bool not in args

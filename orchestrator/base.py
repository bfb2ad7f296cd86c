"""The one pydantic base every spec object shares: unknown keys are errors, objects are immutable,
and a boolean is never a number (pydantic would take `trials: true` as 1)."""

import types
import typing

from pydantic import BaseModel, ConfigDict, model_validator


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _no_booleans_for_numbers(cls, data):
        if isinstance(data, dict):
            for key, value in data.items():
                field = cls.model_fields.get(key)
                if isinstance(value, bool) and field is not None and _is_number(field.annotation):
                    raise ValueError(f"{key}: expected a number, got {str(value).lower()} (a boolean); write a number")
        return data


def _is_number(annotation) -> bool:
    """int or float (or an optional one), but not a field that also takes booleans."""
    args = typing.get_args(annotation) if typing.get_origin(annotation) in (typing.Union, types.UnionType) else (annotation,)
    return bool(set(args) & {int, float}) and bool not in args

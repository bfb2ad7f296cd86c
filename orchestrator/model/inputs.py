"""Rows to predict on, checked against the card and encoded as the family's training rows were.

A model silently predicts garbage from columns in another order or a number column read as
text, so everything that would change the meaning of a column is refused, all of it in one line
naming the columns and the fix (ModelError, exit 2): missing or extra columns, another order, text
where numbers were trained, a category or a class label the model never saw. What cannot change
the meaning is accepted: integers where floats were trained (or booleans), a text column whose
values read as numbers. Encoding then goes through orchestrator.spec.data.encode, the function
that made the training matrix, and to float32 as the split did.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from orchestrator.errors import ModelError
from orchestrator.model.card import Card
from orchestrator.spec.data import Column, encode

SHOWN = 5  # names or values listed in a message before "and N more"


def matrix(frame: Any, card: Card, source: str) -> np.ndarray:
    """`frame`'s rows as the float32 matrix the model predicts on; `source` names the data in errors."""
    import pandas as pd

    if not isinstance(frame, pd.DataFrame):
        raise ModelError(f"{source}: give a pandas DataFrame with the model's {len(card.features)} columns "
                         f"(model.feature_names: {_names(card.feature_names)}), not a {type(frame).__name__}: "
                         f"a bare array cannot be checked column by column")
    _check_columns(list(frame.columns), card.feature_names, source)
    problems = [p for f in card.features if (p := _check_values(frame[f.name], f))]
    if problems:
        raise ModelError(f"{source}: " + "; ".join(problems))
    columns = tuple(Column(f.name, f.dtype, tuple(f.categories) if f.kind == "text" else None)
                    for f in card.features)
    frame = frame.assign(**{f.name: pd.to_numeric(frame[f.name]) for f in card.features
                            if f.kind == "number" and not _numeric(frame[f.name])})
    return encode(frame, columns)  # float32, what the model was trained on


def _check_columns(given: list[Any], expected: list[str], source: str) -> None:
    missing = [c for c in expected if c not in given]
    extra = [c for c in given if c not in expected]
    if missing or extra:
        parts = ([f"missing {_names(missing)}"] if missing else []) + ([f"extra {_names(extra)}"] if extra else [])
        raise ModelError(f"{source}: its columns are not the model's: {'; '.join(parts)}; give exactly the "
                         f"{len(expected)} columns it was trained on (model.json features)")
    if len(set(given)) != len(given):
        raise ModelError(f"{source}: column names repeat ({_names(sorted({c for c in given if given.count(c) > 1}))});"
                         f" give each of the model's columns once")
    if given != expected:
        i = next(i for i, (g, e) in enumerate(zip(given, expected)) if g != e)
        raise ModelError(f"{source}: its columns are in another order than the model was trained on: column {i + 1} "
                         f"is {given[i]!r}, expected {expected[i]!r}; reorder them as model.json's features "
                         f"(in pandas: frame[model.feature_names])")


def _numeric(col) -> bool:
    from pandas.api.types import is_bool_dtype, is_numeric_dtype

    return is_numeric_dtype(col.dtype) or is_bool_dtype(col.dtype)


def _check_values(col, feature) -> str | None:
    import pandas as pd

    if feature.kind == "number":
        if _numeric(col):
            return None
        parsed = pd.to_numeric(col, errors="coerce")
        bad = col[parsed.isna() & col.notna()]
        if bad.empty:
            return None  # text that reads as numbers
        return (f"column {feature.name!r} holds text ({bad.iloc[0]!r} in row {bad.index[0]!r}) where the model was "
                f"trained on numbers ({feature.dtype}); make it numeric (a missing value may stay empty)")
    known = set(feature.categories or ())
    text = col.dropna().astype(str)
    unseen = text[~text.isin(known)]
    if unseen.empty:
        return None
    return (f"column {feature.name!r} holds values the model never saw: {_values(unseen)}; it knows "
            f"{_names(sorted(known))}: map them to one of those, or leave them empty")


def codes(y: Any, card: Card, source: str) -> np.ndarray:
    """The target column as the model's codes (classification: 0..k-1 in the card's class order)
    or numbers; a label the model never saw is refused."""
    import pandas as pd

    y = pd.Series(y)
    if card.task != "classification":
        values = pd.to_numeric(y, errors="coerce")
        if (bad := y[values.isna() & y.notna()]).size:
            raise ModelError(f"{source}: target column {card.target!r} holds text ({bad.iloc[0]!r} in row "
                             f"{bad.index[0]!r}); a regression target must be numbers")
        return values.to_numpy(dtype=float)
    index = {_plain(c): i for i, c in enumerate(card.classes)}
    mapped = y.map(lambda v: index.get(_plain(v), -1))
    unseen = y[mapped < 0]
    if not unseen.empty:
        raise ModelError(f"{source}: target column {card.target!r} holds labels the model never saw: "
                         f"{_values(unseen)}; it knows {_names(card.classes)}: drop those rows, or drop the "
                         f"target column to predict without scoring")
    return mapped.to_numpy(dtype=int)


def _plain(v: Any) -> Any:
    return v.item() if hasattr(v, "item") else v


def _names(names: list[Any]) -> str:
    shown = ", ".join(repr(n) for n in list(names)[:SHOWN])
    return shown + (f" and {len(names) - SHOWN} more" if len(names) > SHOWN else "")


def _values(values) -> str:
    """The first few unseen values, each with the row it is in."""
    firsts = values[~values.astype(str).duplicated()]
    shown = ", ".join(f"{v!r} (row {i!r})" for i, v in firsts.head(SHOWN).items())
    more = len(firsts) - SHOWN
    return shown + (f" and {more} more" if more > 0 else "")

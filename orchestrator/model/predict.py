"""`hpo predict MODEL DATA --output PRED`: a table file in, predictions out, through `load_model`.

The output keeps the input's rows and index (a Parquet file's own index; a CSV's row numbers) and
holds `prediction` and, for a classifier, `proba_<class>` per class in the card's order. A target
column in the input (the card's `target`) is left out of the features and scores the predictions
of the rows that have a value in it.
An existing output is replaced only with `force`, and always atomically (written beside, then
renamed), so a failed or interrupted write never leaves half a file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.errors import InputError
from orchestrator.model.load import Model, load_model
from orchestrator.results.rundir import atomic_write

READERS = {".csv": "read_csv", ".parquet": "read_parquet"}


@dataclass(frozen=True)
class Predicted:
    """What `predict_file` wrote: rows, the output's columns, and the scores when the input held
    the target (else None)."""

    rows: int
    output: Path
    columns: list[str]
    scores: dict[str, float] | None
    model: Model


def predict_file(model_path: str | Path, data: str | Path, output: str | Path, force: bool = False,
                 trusted: tuple[str, ...] = (), trust_pickle: bool = False) -> Predicted:
    """Predicts every row of `data` (.csv or .parquet) with the model in `model_path` (a run folder
    or a model folder) into `output` (.parquet or .csv)."""
    import pandas as pd

    data, output = Path(data), Path(output)
    if output.suffix not in READERS:
        raise InputError(f"--output {output}: write .parquet or .csv")
    if output.exists() and not force:
        raise InputError(f"--output {output} exists; pass --force to replace it (predictions are never overwritten "
                         f"otherwise)")
    frame = read_table(data)
    model = load_model(model_path, trusted=trusted, trust_pickle=trust_pickle)
    target = model.card.target
    features = frame.drop(columns=[target]) if target in frame.columns else frame
    out = pd.DataFrame({"prediction": model.predict(features, source=str(data))})
    if model.task == "classification":
        proba = model.predict_proba(features, source=str(data))
        out = out.join(proba.rename(columns=lambda c: f"proba_{c}"))
    scores = None
    if target in frame.columns and (labelled := frame[target].notna()).any():  # rows without a target: not scored
        scores = model.score(features[labelled], frame[target][labelled], source=str(data))
    output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(output, lambda tmp: out.to_parquet(tmp) if output.suffix == ".parquet" else out.to_csv(tmp))
    return Predicted(len(out), output, list(out.columns), scores, model)


def read_table(path: Path) -> Any:
    """A .csv or .parquet file as a DataFrame; anything else, or an unreadable file, is an InputError."""
    import pandas as pd

    if path.suffix not in READERS:
        raise InputError(f"{path}: give a .csv or .parquet file")
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    try:
        return getattr(pd, READERS[path.suffix])(path)
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        text = str(exc).strip().splitlines()
        raise InputError(f"{path}: cannot read it as {path.suffix[1:].upper()}: "
                         f"{text[0] if text else type(exc).__name__}") from None

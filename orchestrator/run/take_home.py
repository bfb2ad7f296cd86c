"""What a user takes home from a run: the refit's model saved into the run folder with its card,
and `hpo refit RUN_DIR --trial ID` for any other trial (a point of a Pareto front, say).

After a finished search the refit (orchestrator.run.refit) trains the chosen config on
train+valid, hands the family's model over as files (orchestrator.model.package, where the refit
ran: the driver after a local CPU-only run, else a Ray task) and `save_run_model` writes them, with
a card, to `RUN_DIR/model/` on the driver, which holds the run folder (a cluster job's entry point
too; its upload copies the folder). What it did
becomes experiment.json's `model` entry: where the model is, or why there is none (`skipped`,
`error`). Saving can never fail a run that otherwise finished: any failure is that entry's `error`,
and the summary prints it in one line.

A user's own trainable is never refitted (hpo cannot call it outside Tune, nor read what it
saves): its best trial's latest checkpoint folder is linked from a card as it is.
"""

from __future__ import annotations

import hashlib
import platform
import re
import time
from pathlib import Path
from typing import Any

from orchestrator.errors import HpoError, InputError, Problem, SpecError
from orchestrator.families.contract import Family
from orchestrator.families.registry import UserTrainable
from orchestrator.model import card as cards
from orchestrator.model.formats import get
from orchestrator.model.package import Packed, versions, write
from orchestrator.results import rundir
from orchestrator.results.contract import EXPERIMENT, MODEL_DIR, MODELS_DIR, TRIALS
from orchestrator.run import refit
from orchestrator.run.tuner import TUNE_DIR
from orchestrator.spec.data import Dataset
from orchestrator.spec.experiment import Experiment

SEVERAL = ("several objectives: no single best config is refitted; save a point of the Pareto front with "
           "`hpo refit RUN_DIR --trial ID`")
_CHECKPOINT = re.compile(r"checkpoint_(\d+)$")


def save_run_model(run_dir: Path, exp: Experiment, data: Dataset | None, meta: dict[str, Any], best: Any,
                   concluded: refit.Concluded | None) -> dict[str, Any]:
    """Saves the finished run's model (or links a user trainable's checkpoint); returns
    experiment.json's `model` entry. Never raises."""
    try:
        if exp.multi_objective:
            return {"skipped": SEVERAL}
        if isinstance(exp.family, UserTrainable):
            return link_checkpoint(run_dir, exp, meta, best)
        if concluded is None:
            why = f"family {exp.family.name} trains on no data" if isinstance(exp.family, Family) and \
                not exp.family.needs_data else "no trial to refit"
            return {"skipped": f"{why}: no model to save"}
        kept = concluded.kept
        if kept is None or kept.packed is None:
            return {"error": (kept.error if kept else None) or "the refit kept no model"}
        ev, started = concluded.evaluation, time.perf_counter()
        card = model_card(exp, data, meta, kept.packed, trial_id=ev["trial_id"], config=ev["config"],
                          training=ev["refit"], valid=ev.get("valid"), test=ev.get("test") or {},
                          nested=_nested(ev.get("nested")))
        return _write(run_dir / MODEL_DIR, kept.packed, card, run_dir, started=started)
    except Exception as exc:  # a full disk, a bug: the run's results stand without the model
        text = str(exc).strip().splitlines()
        return {"error": f"saving the model failed: {type(exc).__name__}: {text[0] if text else ''}"}


def _write(folder: Path, packed: Packed, card: dict[str, Any], run_dir: Path, replace: bool = False,
           started: float | None = None) -> dict[str, Any]:
    """Writes the folder; returns experiment.json's `model` entry, its `seconds` being the worker's
    `dump` and `check` and the driver's `write` (card, fingerprint and files) since `started`."""
    t0 = started if started is not None else time.perf_counter()
    write(folder, packed.files, card, replace=replace)
    seconds = {**packed.seconds, "write": round(time.perf_counter() - t0, 4)}
    entry = {"path": str(folder.relative_to(run_dir)), "format": packed.format,
             "files": {name: len(data) for name, data in packed.files.items()}, "bytes": packed.size,
             "reproduced": packed.reproduced, "card_version": cards.CARD_VERSION, "seconds": seconds}
    if packed.differs:
        entry["differs"] = packed.differs
    return entry


def model_card(exp: Experiment, data: Dataset, meta: dict[str, Any], packed: Packed, *, trial_id: str,
               config: dict[str, Any], training: dict[str, Any], valid: float | None, test: dict[str, float],
               nested: dict[str, Any] | None = None, last: dict[str, Any] | None = None) -> dict[str, Any]:
    """The card of a refitted built-in family's model (keys: docs/model.md)."""
    test_metric = refit.as_test_metric(exp.metric)
    metric: dict[str, Any] = {"name": exp.metric, "mode": exp.mode}
    if exp.multi_objective:  # each objective with the trial's last value (what its Pareto front rank used)
        metric["objectives"] = [{"name": n, "mode": m, "valid": (last or {}).get(n)} for n, m in exp.objectives]
    return cards.build(
        family=exp.spec.family, format=packed.format, files=packed.files, trial_id=trial_id,
        config=_plain(config), training=_plain(training), metric=_plain(metric), valid_score=valid,
        test_metric=test_metric, test_score=test.get(test_metric), test=test,
        reproduced=packed.reproduced, nested=nested, task=data.task, target=data.target,
        classes=list(data.classes), features=[c.describe() for c in data.columns], data=_data(exp, data),
        versions={"python": platform.python_version(), **packed.versions}, run=_run(meta),
        loader=get(packed.format).loader.replace("{folder}", "MODEL_DIR"), created_at=rundir.now())


def _run(meta: dict[str, Any]) -> dict[str, Any]:
    return {k: meta.get(k) for k in ("run_id", "name", "spec_hash")}


def _data(exp: Experiment, data: Dataset) -> dict[str, Any]:
    """Where the rows came from and a fingerprint of them: SHA-256 over the train, valid and test
    matrices (float32, as the family saw them) and targets, in that order."""
    digest = hashlib.sha256()
    for part in (data.X_train, data.X_valid, data.X_test, data.y_train, data.y_valid, data.y_test):
        digest.update(part.tobytes())
    return {"source": exp.spec.data.model_dump(mode="json"), "base_dir": str(exp.base_dir),
            "rows": {"train": len(data.y_train), "valid": len(data.y_valid), "test": len(data.y_test)},
            "columns": len(data.columns), "encoded_columns": int(data.X_train.shape[1]), "sha256": digest.hexdigest()}


def _nested(nested: dict[str, Any] | None) -> dict[str, Any] | None:
    """Nested evaluation's estimate, beside the final model (which is the refit of the config the
    search over all rows chose, not any outer fold's)."""
    if not nested:
        return None
    return {k: nested.get(k) for k in ("outer_folds", "inner", "mean", "std", "mean_valid")} | {
        "folds": [{k: f.get(k) for k in ("fold", "test", "valid", "error") if k in f} for f in nested.get("folds", [])]}


def _plain(value: Any) -> Any:
    """numpy scalars (a config read back from Parquet) as plain JSON values."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value.item() if hasattr(value, "item") else value


# --- a user's own trainable: its checkpoint, linked ------------------------------------------------

def link_checkpoint(run_dir: Path, exp: Experiment, meta: dict[str, Any], best: Any) -> dict[str, Any]:
    """A card in `RUN_DIR/model/` that links the best trial's latest checkpoint folder as Tune left it."""
    trial_dir = run_dir / TUNE_DIR / best.trial_id
    found = sorted((int(m.group(1)), p) for p in (trial_dir.iterdir() if trial_dir.is_dir() else ())
                   if (m := _CHECKPOINT.match(p.name)) and p.is_dir())
    if not found:
        return {"error": f"trial {best.trial_id} saved no checkpoint (tune.report(..., checkpoint=...)): nothing to "
                         f"link; your trainable's own files are all there is"}
    link = str(found[-1][1].relative_to(run_dir))
    card = cards.build(family=exp.spec.family, format=None, files={}, trial_id=best.trial_id,
                       config=_plain(dict(best.config)), training={"method": "checkpoint"},
                       metric={"name": exp.metric, "mode": exp.mode}, valid_score=best.score, run=_run(meta),
                       versions=versions(("ray",)) | {"python": platform.python_version()},
                       created_at=rundir.now(), checkpoint=link)
    write(run_dir / MODEL_DIR, {}, card)
    return {"path": MODEL_DIR, "checkpoint": link, "card_version": cards.CARD_VERSION}


# --- hpo refit RUN_DIR --trial ID ---------------------------------------------------------------

def refit_trial(run_dir: str | Path, trial_id: str, force: bool = False) -> tuple[Path, dict[str, Any]]:
    """Refits one trial's config (or replays its PBT schedule) on train+valid in this process, with
    the spec's threads, scores it on test and saves it to `RUN_DIR/models/<trial id>/`. Returns the
    folder and its card.

    Raises:
        InputError: not a run folder, an unknown trial, nothing to refit, a folder already there.
        HpoError: the refit trained but its model could not be saved.
    """
    from orchestrator.results.reader import load
    from orchestrator.results.writer import trial_from_row
    from orchestrator.spec import data as data_mod
    from orchestrator.spec.load import validate

    run_dir = Path(run_dir)
    if not (run_dir / EXPERIMENT).is_file():
        raise InputError(f"{run_dir} is not a run folder (no {EXPERIMENT}); give the folder `hpo run` printed")
    meta = rundir.read_json(run_dir / EXPERIMENT)
    exp = validate(meta["spec"], base_dir=Path(meta.get("base_dir") or "."), source=str(run_dir / EXPERIMENT))
    if isinstance(exp.family, UserTrainable):
        raise InputError(f"family {exp.spec.family} is your own trainable: hpo cannot refit it; its checkpoints "
                         f"are under {run_dir / TUNE_DIR}/<trial id>/")
    if not exp.family.needs_data or exp.family.model_format is None:
        raise InputError(f"family {exp.family.name} keeps no model to save (it trains on no data or names no "
                         f"model_format)")
    trials = load(run_dir)[0] if (run_dir / TRIALS).exists() else None
    known = [] if trials is None else list(trials["trial_id"])
    if trial_id not in known:
        shown = ", ".join(known[:20]) + (f" and {len(known) - 20} more" if len(known) > 20 else "")
        raise InputError(f"--trial: no trial {trial_id!r} in {run_dir}; its trials: {shown or 'none'}")
    folder = run_dir / MODELS_DIR / trial_id
    if folder.exists() and not force:
        raise InputError(f"{folder} exists: trial {trial_id} was saved before; pass --force to refit and replace it")
    rec = trial_from_row(trials[trials["trial_id"] == trial_id].iloc[0].to_dict())
    best = refit.Best(rec.config, rec.score, rec.trial_id, rec.schedule)
    plan = refit.refit_plan(exp, best)
    try:
        data = data_mod.load(exp.spec.data, exp.base_dir)
    except data_mod.DataError as exc:
        raise SpecError(Problem(exc.field, str(exc)), str(run_dir / EXPERIMENT)) from None
    done = refit.run_refit(exp, best.config, data, plan.get("schedule"), keep=True)
    if done.trained:
        plan["trained"] = done.trained
    if done.kept is None or done.kept.packed is None:
        raise HpoError(f"trial {trial_id} was refitted (test {done.test}) but not saved: "
                       f"{done.kept.error if done.kept else 'no model'}")
    started = time.perf_counter()
    card = model_card(exp, data, meta, done.kept.packed, trial_id=trial_id, config=dict(best.config), training=plan,
                      valid=rec.score, test=done.test, last=rec.last)
    _write(folder, done.kept.packed, card, run_dir, replace=force, started=started)
    return folder, card

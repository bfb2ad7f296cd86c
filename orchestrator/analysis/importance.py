"""Which hyperparameters mattered in a run: Optuna's own importance evaluators, on the run's study.

The study is `orchestrator.analysis.optuna_study.to_study`'s (the spec's distributions, trial states), so
the numbers are those Optuna would give had it run the search. Two evaluators:

- `fanova` (the default, as in Optuna): fANOVA (Hutter et al., ICML 2014), the share of the
  objective's variance each parameter explains in a random forest fitted to the trials. The forest
  is random: `seed` fixes it, so the same run gives the same numbers.
- `ped-anova`: PED-ANOVA (Watanabe et al., IJCAI 2023), how much a parameter's distribution among
  the best trials (top 10%) differs from all trials. No model and no randomness (no seed); cheap
  enough for thousands of trials, and it asks "what do good configs share" rather than "what
  explains the variance".

Optuna's evaluators read COMPLETE trials only: under an early-stopping scheduler most trials are
PRUNED, so the ranking rests on fewer trials than ran. `Importance` says how many it used and
which trials and parameters (conditional ones: set in only some trials) were left out.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from orchestrator.analysis.optuna_study import to_study
from orchestrator.analysis.runs import Runs
from orchestrator.errors import ResultsError


def _fanova(seed: int):
    from optuna.importance import FanovaImportanceEvaluator

    return FanovaImportanceEvaluator(seed=seed)


def _ped_anova(seed: int):
    from optuna.importance import PedAnovaImportanceEvaluator

    return PedAnovaImportanceEvaluator()


# name -> (factory taking the seed, how to say what ran)
EVALUATORS: dict[str, tuple[Callable[[int], object], Callable[[int], str]]] = {
    "fanova": (_fanova, lambda seed: f"fANOVA (Optuna's FanovaImportanceEvaluator, seed {seed})"),
    "ped-anova": (_ped_anova, lambda seed: "PED-ANOVA (Optuna's PedAnovaImportanceEvaluator, deterministic)"),
}


@dataclass(frozen=True)
class Importance:
    table: pd.DataFrame  # param, importance (shares summing to 1), most important first
    evaluator: str  # what ran, in words
    trials: int  # COMPLETE trials the ranking rests on
    left_out: dict[str, int] = field(default_factory=dict)  # trial status -> how many were not used
    params_left_out: tuple[str, ...] = ()

    def describe(self) -> list[str]:
        """Lines for `hpo importance`: what ran on what, then the table."""
        head = f"{self.evaluator} over {self.trials} completed trials"
        if self.left_out:
            head += (" (left out, as Optuna's evaluators use completed trials only: "
                     + ", ".join(f"{n} {s}" for s, n in self.left_out.items()) + ")")
        lines = [head]
        if self.params_left_out:
            lines.append(f"not ranked (set in only some trials): {', '.join(self.params_left_out)}")
        lines += self.table.to_string(index=False, float_format=lambda v: f"{v:.3f}").splitlines()
        return lines


def importance(run: Runs | str | Path, evaluator: str = "fanova", seed: int = 0) -> Importance:
    """Importance of each sampled hyperparameter of one run (a one-run `Runs` or a run folder)."""
    if evaluator not in EVALUATORS:
        raise ResultsError(f"unknown importance evaluator {evaluator!r}; use one of: {', '.join(EVALUATORS)}")
    import optuna
    from optuna.trial import TrialState

    study = to_study(run)
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(complete) < 2:
        raise ResultsError(f"importance needs at least 2 completed trials with a score, the run has "
                           f"{len(complete)}; run more trials or a scheduler that lets more finish")
    everywhere = set.intersection(*(set(t.params) for t in complete))
    anywhere = set().union(*(set(t.params) for t in complete))
    if not everywhere:
        raise ResultsError("no hyperparameter was sampled in every completed trial: nothing to rank")
    factory, words = EVALUATORS[evaluator]
    scores = optuna.importance.get_param_importances(study, evaluator=factory(seed), params=sorted(everywhere))
    table = pd.DataFrame({"param": list(scores), "importance": [float(v) for v in scores.values()]})
    hpo_status = pd.Series([t.user_attrs.get("hpo_status") for t in study.trials if t.state != TrialState.COMPLETE],
                           dtype=object)
    return Importance(table.sort_values("importance", ascending=False, ignore_index=True), words(seed),
                      len(complete), {str(k): int(v) for k, v in hpo_status.value_counts().items()},
                      tuple(sorted(anywhere - everywhere)))

"""Run folders -> frames and figures, for notebooks and `hpo results/compare/importance/export`. Reads
the results contract alone (no Ray, no family code): `runs` (load one run or many, best trials,
learning curves), `anytime` (best-so-far curves, ranks, regret), `usage` (where trials ran,
GPU-hours), `importance`, `optuna_study` (a run as an Optuna study), `plots`."""

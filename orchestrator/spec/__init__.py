"""The experiment spec: YAML in, a validated `Experiment` out, before Ray starts. `experiment` holds the
typed sections and the resolved Experiment; `load` reads YAML, applies `--set` and checks the rules
that span sections; `data` and `evaluation` are the data and evaluation-protocol sections with what
they do (load a dataset; split it for k-fold, nested evaluation and the refit)."""

"""What a user takes home from a run: the refitted model, saved in its library's own format, with a
model card, and the means to load it and predict with it.

- `formats`: one entry per library (XGBoost, LightGBM, PyTorch, scikit-learn): how the object a
  family hands to `trial.keep(...)` becomes files, how they load back, and how they predict exactly
  as the family scored;
- `card`: model.json, the card beside the files (its own `card_version`), and how it is read;
- `inputs`: a table checked against the card's columns and encoded as the family trained;
- `package`: the kept model as files, checked to reproduce the refit's test score (in the refit's
  worker), and `write`, which puts files and card into a folder at once;
- `load`: `load_model(path)` -> a `Model` with `predict` and `predict_proba`; `predict`: `hpo predict`.

This package sits between `trial` and `cluster`: it reads the data spec (to encode rows as the
family did), never Ray or the run's lifecycle, so loading a model needs neither.
"""

# Two commands do all set-up on a fresh machine (Python 3.11 and network to the package index):
#   make run    creates .venv, installs the pinned dependencies, runs an example experiment
#   make test   same set-up if needed, then the whole test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
SPEC   ?= experiments/xgboost_digits.yaml

.PHONY: run test quick-test clean

$(STAMP): requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.lock
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $@

run: $(STAMP)
	$(BIN)/hpo run $(SPEC)

# Lint first (ruff's config is in pyproject.toml): seconds, and a red lint fails before the suite starts.
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

quick-test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -m "not slow and not cluster"

clean:
	rm -rf $(VENV) results .pytest_cache

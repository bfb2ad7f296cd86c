# Two commands do all set-up on a fresh machine (Python 3.11 and network to the package index):
#   make run    creates .venv, installs the pinned dependencies, runs an example experiment
#   make test   same set-up if needed, then the whole test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
SPEC   ?= experiments/xgboost_digits.yaml

.PHONY: run test quick-test clean browser

$(STAMP): requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.lock
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $@

run: $(STAMP)
	$(BIN)/hpo run $(SPEC)

# Debian's Chromium for the headless browser test (tests/test_dashboard.py), installed with apt-get
# where this runs as root and apt is there (a minute, once); elsewhere that test skips and says why.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	    chromium >/dev/null; } || echo "note: apt-get could not install chromium; the browser test will skip"; \
	else echo "note: no chromium, and no apt-get as root to install it; the browser test will skip"; fi

# Lint first (ruff's config is in pyproject.toml): seconds, and a red lint fails before the suite starts.
test: $(STAMP) browser
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

quick-test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -m "not slow and not cluster"

clean:
	rm -rf $(VENV) results .pytest_cache

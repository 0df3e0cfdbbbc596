# Developer entry points.  `make demo` and `make test` are the two Quick start
# commands; both create the virtualenv on first use.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: all install demo test lint typecheck pytest faults pki clean

all: test

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip==25.3
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/dkgw demo

pki: $(STAMP)
	$(BIN)/python certs-example/make-pki

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/python -m pytest

test: lint typecheck pytest

# Fault tests with larger counts: kills, PostgreSQL restarts, misbehaving partners
# (tests/faults; `make test` runs them at scale 1).  DKGW_FAULTS_SEED replays a run.
DKGW_FAULTS_SCALE ?= 5
faults: $(STAMP)
	DKGW_FAULTS_SCALE=$(DKGW_FAULTS_SCALE) $(BIN)/python -m pytest tests/faults -s -q

clean:
	rm -rf $(VENV) var certs-example/out .pytest_cache .mypy_cache .ruff_cache

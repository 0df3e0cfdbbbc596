# Developer entry points.  `make demo` and `make test` are the two Quick start
# commands; both create the virtualenv on first use.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# pytest-xdist workers.  Most tests wait on subprocesses, sockets and fsync, so more
# workers than the two cores pays; PYTEST_WORKERS=0 runs in one process.  loadgroup
# keeps tests marked xdist_group("name") on one worker.
PYTEST_WORKERS ?= 4
PYTEST_ARGS    ?=

.PHONY: all install demo test test-full lint typecheck pytest pki clean

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

# Without DKGW_TEST_PG_DSN the suite starts a throwaway PostgreSQL itself (tests/pgserver.py).
# `make` fails on any pytest exit code other than 0, so "no tests collected" (5) fails too.
pytest: $(STAMP)
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist loadgroup --durations=20 $(PYTEST_ARGS)

test: lint typecheck pytest

# The same with the acceptance sizes the default run scales down for time: 1,000 files
# through the file drop across a kill and a restart, 100 schemathesis examples per
# operation (docs/decisions.md, "Test suite time").
test-full: export DKGW_TEST_FILEDROP_FILES = 1000
test-full: export DKGW_FUZZ_EXAMPLES = 100
test-full: test

clean:
	rm -rf $(VENV) var certs-example/out .pytest_cache .mypy_cache .ruff_cache

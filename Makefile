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

.PHONY: all install demo test test-full lint typecheck pytest pki clean fuzz fuzz-wire faults soak

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

# lint-imports checks the layers (xmlsafe/wsdl < cpa < gateway < adapters, the protocol
# core free of store, edges, config and Twisted): the contracts in pyproject.toml.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

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

# The long fuzz runs (docs/fuzzing.md).  FUZZ_SECONDS is spread over the targets;
# FUZZ_JOBS targets run at once.  WIRE_MUTATIONS mutated messages go to a gateway.
FUZZ_SECONDS   ?= 600
FUZZ_JOBS      ?= 1
WIRE_MUTATIONS ?= 20000

fuzz: $(STAMP)
	nice $(BIN)/python -m tests.fuzz.run all --seconds $(FUZZ_SECONDS) --jobs $(FUZZ_JOBS)

fuzz-wire: $(STAMP)
	nice $(BIN)/python -m tests.fuzz.wire --mutations $(WIRE_MUTATIONS)

# Fault tests at full strength (tests/faults/; `make test` runs them at scale 1):
# SIGKILLs, PostgreSQL restarts and misbehaving partners at DKGW_FAULTS_SCALE times
# their counts (DKGW_FAULTS_SEED replays a run), and DKGW_RESTARTS SIGKILLed
# restarts of `dkgw serve` with deliveries due at every start; the schema race in
# 2,000 fresh processes, and its control without the lock.  Takes a while.
DKGW_FAULTS_SCALE ?= 5
DKGW_RESTARTS     ?= 300
faults: $(STAMP)
	DKGW_FAULTS_SCALE=$(DKGW_FAULTS_SCALE) DKGW_RESTARTS=$(DKGW_RESTARTS) \
		DKGW_SCHEMA_RACE_CONTROL=1 DKGW_SCHEMA_RACE_RUNS=2000 \
		$(BIN)/python -m pytest tests/faults tests/test_xmlschemas.py -s -q

# Two `dkgw serve` processes under pings, business and hostile traffic, with a
# report per minute (bench/README.md, "Soak").  SOAK_MINUTES=10 by default.
SOAK_MINUTES ?= 10
soak: $(STAMP)
	$(BIN)/python bench/soak.py --minutes $(SOAK_MINUTES)

clean:
	rm -rf $(VENV) var certs-example/out .pytest_cache .mypy_cache .ruff_cache

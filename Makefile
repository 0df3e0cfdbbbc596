# Developer entry points.  `make demo` and `make test` are the two Quick start
# commands; both create the virtualenv on first use.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: all install demo test lint typecheck pytest pki clean fuzz fuzz-wire

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

# The long fuzz runs (docs/fuzzing.md).  FUZZ_SECONDS is spread over the targets;
# FUZZ_JOBS targets run at once.  WIRE_MUTATIONS mutated messages go to a gateway.
FUZZ_SECONDS   ?= 600
FUZZ_JOBS      ?= 1
WIRE_MUTATIONS ?= 20000

fuzz: $(STAMP)
	nice $(BIN)/python -m tests.fuzz.run all --seconds $(FUZZ_SECONDS) --jobs $(FUZZ_JOBS)

fuzz-wire: $(STAMP)
	nice $(BIN)/python -m tests.fuzz.wire --mutations $(WIRE_MUTATIONS)

clean:
	rm -rf $(VENV) var certs-example/out .pytest_cache .mypy_cache .ruff_cache

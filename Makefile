# chronik — every target bootstraps .venv itself on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test check lint types format bench bench-full soak clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

demo: $(STAMP)  ## the seed's bank account, end to end, on ./chronik-demo.db
	$(BIN)/python examples/bank_account.py --store sqlite:///chronik-demo.db --fresh
	$(BIN)/chronik --store sqlite:///chronik-demo.db streams
	$(BIN)/chronik --store sqlite:///chronik-demo.db events account-alice

test: $(STAMP)  ## the whole suite (PostgreSQL suites need 127.0.0.1:5432; CI=true makes them mandatory)
	$(BIN)/pytest -q -m "not soak"

lint: $(STAMP)
	$(BIN)/ruff check src tests examples benchmarks
	$(BIN)/ruff format --check src tests examples benchmarks

types: $(STAMP)
	$(BIN)/mypy

check: lint types test

format: $(STAMP)
	$(BIN)/ruff format src tests examples benchmarks
	$(BIN)/ruff check --fix src tests examples benchmarks

BENCH_STAMP := $(VENV)/.bench-installed
$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet 'eventsourcing[postgres]>=9.5,<9.6'
	@touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)  ## a few minutes: chronik vs eventsourcing vs raw driver
	$(BIN)/python -m benchmarks.run --quick

bench-full: $(BENCH_STAMP)
	$(BIN)/python -m benchmarks.run --full

soak: $(STAMP)  ## long concurrency runs, not part of make test
	$(BIN)/pytest -q -m soak

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis chronik-demo.db*

# chronik — every target bootstraps .venv itself on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test check lint types format bench bench-full soak clean conformance

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

demo: $(STAMP)  ## the seed's bank account, end to end, on ./chronik-demo.db
	$(BIN)/python examples/bank_account.py --store sqlite:///chronik-demo.db --fresh
	$(BIN)/chronik --store sqlite:///chronik-demo.db streams
	$(BIN)/chronik --store sqlite:///chronik-demo.db events account-alice

# The console's browser tests drive Debian's Chromium (Playwright cannot download its own
# browser here): installed with apt-get when missing, else make test stops and says why.
CHROMIUM ?= /usr/bin/chromium
$(CHROMIUM):
	@echo "installing Debian's chromium for the console's browser tests (tests/server/test_console.py)"
	@if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	elif command -v apt-get >/dev/null 2>&1 && command -v sudo >/dev/null 2>&1; then \
		sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	fi
	@test -x $(CHROMIUM) || { echo "error: $(CHROMIUM) is missing and could not be installed;" \
		"install Debian's chromium (apt-get install chromium) or set CHROMIUM=/path/to/chromium"; exit 1; }

test: $(STAMP) $(CHROMIUM)  ## the whole suite (PostgreSQL suites need 127.0.0.1:5432; CI=true makes them mandatory)
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

conformance: $(STAMP)  ## KurrentDB protocol features (tests/kurrent): passed/failed per feature
	@rm -f $(VENV)/conformance.jsonl
	-CHRONIK_CONFORMANCE_OUT=$(CURDIR)/$(VENV)/conformance.jsonl $(BIN)/pytest -q -p no:cacheprovider tests/kurrent
	$(BIN)/python -m tests.kurrent.conformance $(VENV)/conformance.jsonl

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis chronik-demo.db*

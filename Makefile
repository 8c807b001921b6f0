# SuperIMAP: `make run` starts everything on SQLite; `make test` runs the whole suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 8000
# Test processes: the suite mostly waits on real servers, so three share two cores well.
TEST_WORKERS ?= 3

.PHONY: run test lint bench bench-engine bench-delivery bench-e2e bench-fairness system-deps clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

# exec: make's child is superimap itself, so a SIGTERM to make (`kill %1` of `make run &`,
# also outside an interactive shell) reaches it and everything stops.
run: $(STAMP)
	HOST=$(HOST) PORT=$(PORT) exec $(BIN)/superimap up

system-deps:
	bash scripts/install-system-deps.sh

test: $(STAMP) system-deps
	$(BIN)/ruff check superimap devtools tests
	$(BIN)/lint-imports
	$(BIN)/mypy
	SUPERIMAP_ENV=test $(BIN)/python -m pytest -n $(TEST_WORKERS) $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check superimap devtools tests
	$(BIN)/lint-imports
	$(BIN)/mypy

bench: bench-engine bench-delivery

bench-engine: $(STAMP)
	$(BIN)/python -m devtools.bench.engine --out bench-results/engine.json

bench-delivery: $(STAMP)
	$(BIN)/python -m devtools.bench.delivery --out bench-results/delivery.json

clean:
	rm -rf $(VENV) var bench-results .pytest_cache .mypy_cache .import_linter_cache .grimp_cache

# End-to-end: chaos IMAP server -> engine -> worker -> verifying receiver, each its own process.
# RATE, MAILBOXES, DURATION, MODE (separate|up), BACKEND (sqlite|postgres).
RATE ?= 100
MAILBOXES ?= 1000
DURATION ?= 20
MODE ?= separate
BACKEND ?= sqlite
# Engine processes of the engine service (1: one process, as before issue 20; 0: one per core).
ENGINES ?= 1

bench-e2e: $(STAMP)
	$(BIN)/python -m devtools.bench.e2e --out bench-results/e2e.json --rate $(RATE) \
		--mailboxes $(MAILBOXES) --duration $(DURATION) --mode $(MODE) --backend $(BACKEND) \
		--engines $(ENGINES)

# Partner B's push -> webhook latency while partner A's endpoint hangs (and without A).
bench-fairness: $(STAMP)
	$(BIN)/python -m devtools.bench.fairness --out bench-results/fairness.json \
		--scenario without_a --runs 3
	$(BIN)/python -m devtools.bench.fairness --out bench-results/fairness.json \
		--scenario with_a --runs 3

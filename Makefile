# Two entry points: `make run` (serve on the embedded default) and `make test`.
# Both create .venv on first use and install the project from pyproject.toml.
PYTHON ?= $(shell for p in python3.13 python3.12 python3.11 python3; do \
	command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null && { echo $$p; break; }; done)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DATA_DIR ?= ./data

.PHONY: run test lint pytest bench clean

$(STAMP): pyproject.toml
	@test -n "$(PYTHON)" || { echo "Python 3.11 or newer is required"; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,dev]'
	@touch $@

run: $(STAMP)
	$(BIN)/davserver init --data-dir $(DATA_DIR) --create-admin admin
	$(BIN)/davserver serve --data-dir $(DATA_DIR)

lint: $(STAMP)
	$(BIN)/ruff check storage davserver sync_ext webcommon tests bench
	$(BIN)/mypy storage davserver sync_ext webcommon
	$(BIN)/lint-imports

# pytest-xdist workers for `make test` (0: one process). Each worker starts its own PostgreSQL,
# Redis and SeaweedFS when a test first needs one; a test file stays on one worker, so a module's
# shared server starts once.
TEST_WORKERS ?= 2

pytest: $(STAMP)
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadfile

test: lint pytest

bench: $(STAMP)
	$(BIN)/python -m bench.storage_throughput

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

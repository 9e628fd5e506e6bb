# `make run`: set up (runtime dependencies only) and start callrec on its embedded defaults.
# `make test`: add the test extras and the Debian packages the tests use, and run every test.
# `make test-fast`: the same setup, then every test not marked slow (the edit-and-test loop).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# two stamps: `make run` installs the runtime dependencies only; `make test` adds the test extras on top
RUN_STAMP := $(VENV)/.run-stamp
TEST_STAMP := $(VENV)/.test-stamp
DATA ?= ./data

.PHONY: run test test-fast lint bench-mix bench-pipeline system-deps services clean

# the virtualenv is made once; a newer pyproject.toml installs again (into the same virtualenv)
$(RUN_STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e .
	touch $@

$(TEST_STAMP): $(RUN_STAMP)
	$(BIN)/pip install -q -e '.[test]'
	touch $@

system-deps:
	bash scripts/system-deps.sh

# the PostgreSQL and Redis servers of the distributed tests, started when installed but down
services:
	bash scripts/services.sh

# the whole system on embedded defaults: SQLite, SqliteHuey and local storage under $(DATA)
run: $(RUN_STAMP)
	$(BIN)/callrec serve --data $(DATA)

test: $(TEST_STAMP) system-deps services
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy
	$(BIN)/pytest -n 2 -q

# no real processes, namespaces, sipp/rtpengine/Chromium, PostgreSQL/Redis or over a second each: see the
# `slow` marker in tests/. pytest's exit code 5 (no test collected) fails this target as it fails `make test`.
test-fast: $(TEST_STAMP) system-deps services
	$(BIN)/pytest -n 2 -q -m "not slow"

lint: $(TEST_STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy

bench-mix: $(TEST_STAMP) system-deps
	$(BIN)/python bench/mix.py

bench-pipeline: $(TEST_STAMP) system-deps
	$(BIN)/python bench/pipeline.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache

# `make run`: set up and start callrec on its embedded defaults.  `make test`: set up and run every test.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
DATA ?= ./data

.PHONY: run test lint bench-mix bench-pipeline system-deps services clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

system-deps:
	bash scripts/system-deps.sh

# the PostgreSQL and Redis servers of the distributed tests, started when installed but down
services:
	bash scripts/services.sh

# the whole system on embedded defaults: SQLite, SqliteHuey and local storage under $(DATA)
run: $(STAMP)
	$(BIN)/callrec serve --data $(DATA)

test: $(STAMP) system-deps services
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy
	$(BIN)/pytest -n 2 -q

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy

bench-mix: $(STAMP) system-deps
	$(BIN)/python bench/mix.py

bench-pipeline: $(STAMP) system-deps
	$(BIN)/python bench/pipeline.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache

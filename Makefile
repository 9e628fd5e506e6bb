# `make run`: set up and start callrec on its embedded defaults.  `make test`: set up and run every test.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
DATA ?= ./data

.PHONY: run test lint bench-mix system-deps clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

system-deps:
	bash scripts/system-deps.sh

# Until the recording service exists, `run` mixes the bundled sample capture and says where the file went.
run: $(STAMP)
	@mkdir -p $(DATA)/recordings
	$(BIN)/callrec mix samples/sample-call.pcap -o $(DATA)/recordings/
	@echo "recording written to $(DATA)/recordings/ — play it, or mix your own: $(BIN)/callrec mix CAPTURE.pcap -o OUT/"

test: $(STAMP) system-deps
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy
	$(BIN)/pytest -n 2 -q

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy

bench-mix: $(STAMP) system-deps
	$(BIN)/python bench/mix.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache

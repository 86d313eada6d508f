# SendFlowr: two commands on a fresh machine (Python 3.11, Java 17, Maven):
#   make demo   install, start the embedded stack, run every asset, start the API
#   make test   install and run the whole test suite (starts its own broker and engine)
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install kafka-jars demo up down status test lint bench-ingest bench-connectors bench-timing clean-state

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else "SendFlowr needs Python 3.11; set PYTHON=/path/to/python3.11")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $@

kafka-jars: install
	$(BIN)/sendflowr kafka fetch

demo: install kafka-jars
	$(BIN)/sendflowr up

up: demo

down:
	$(BIN)/sendflowr down

status: install
	-$(BIN)/sendflowr kafka status
	-$(BIN)/sendflowr clickhouse status

test: install kafka-jars
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check sendflowr sendflowr_assets sendflowr_api sendflowr_webhooks tests bench

bench-ingest: install kafka-jars
	$(BIN)/python bench/ingest.py

bench-connectors: install kafka-jars
	$(BIN)/python bench/connectors.py

bench-timing: install
	$(BIN)/python bench/timing.py

clean-state: down
	rm -rf .sendflowr

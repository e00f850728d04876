# Two commands on a fresh machine: `make demo` and `make test`. Each bootstraps .venv from
# pyproject.toml (once, and again whenever pyproject.toml changes) and then runs.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

export PREFECT_SERVER_ANALYTICS_ENABLED ?= false

DEMO_SHEET_TITLE := qwbatch demo: manifests/demo.parquet + manifests/edit-demo.parquet

.PHONY: setup demo docs cli-docs api-docs test lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/qwbatch demo --out out
	$(BIN)/qwbatch contact-sheet out -o out/contact-sheet.png --title "$(DEMO_SHEET_TITLE)"
	$(BIN)/qwbatch report out --html out/report.html

# The README's contact sheet: what `make demo` draws, copied into docs/; and the CLI and API
# references.
docs: demo cli-docs api-docs
	cp out/contact-sheet.png docs/contact-sheet.png
	cp out/compare/compare.png docs/compare-sheet.png

# docs/cli-reference.md, from the commands' own --help (a test fails when it is stale).
cli-docs: $(STAMP)
	$(BIN)/python tools/cli_reference.py

# docs/api.md, from the Python API's docstrings (a test fails when it is stale).
api-docs: $(STAMP)
	$(BIN)/python tools/api_docs.py

test: $(STAMP)
	$(BIN)/pytest

LINTED := qwbatch flows tests bench manifests tools

# What a reviewer checks: style, formatting, types, and the house's layers (pyproject's
# [tool.importlinter]) with no import cycle anywhere, deferred imports included.
lint: $(STAMP)
	$(BIN)/ruff check $(LINTED)
	$(BIN)/ruff format --check $(LINTED)
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/python tools/import_cycles.py

bench: $(STAMP)
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) out .pytest_cache .mypy_cache .ruff_cache *.egg-info

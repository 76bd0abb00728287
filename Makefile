# The README's two commands are `make serve` and `make test`; both create .venv if needed.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: serve test lint typecheck unit venv clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	# pip compiles site-packages but not the editable source: without bytecode every start
	# compiles ember again (~75 ms of a CPU start, where PYTHONDONTWRITEBYTECODE is set).
	$(BIN)/python -m compileall -q src >/dev/null
	touch $(STAMP)

venv: $(STAMP)

serve: $(STAMP)
	$(BIN)/ember serve

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

test: lint typecheck
	$(BIN)/pytest

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache

# The two commands: `make demo` (the whole system on embedded SQLite) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.omniq-installed

.PHONY: demo test lint bench install clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev,bench,web,postgres,metrics,otel]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m omniq demo

# Three pytest processes (pytest-xdist; each has its own PostgreSQL databases; three
# keep two cores busy while tests wait on subprocesses and polls), then
# the `serial` tests alone: a real PostgreSQL restart must not cut other tests off.
TEST_PROCESSES ?= 3

test: $(STAMP)
	$(PY) -m pytest -n $(TEST_PROCESSES) -m "not serial"
	$(PY) -m pytest -m serial

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy --strict omniq

bench: $(STAMP)
	$(PY) bench/run.py

clean:
	rm -rf $(VENV) omniq_data .pytest_cache .mypy_cache .ruff_cache .hypothesis build dist *.egg-info

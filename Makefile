# make install: .venv with the project and its dev tools; make quickstart: the whole pipeline on
# the embedded glyphs benchmark; make test: lint + the test suite; make test-fast: lint + the
# unit tests (no job tests: no Ray clusters, no torchrun).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install quickstart test test-fast lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

quickstart: install
	$(VENV)/bin/hyperflow pipeline --config quickstart --out runs/quickstart

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# two pytest-xdist workers, a test file each at a time (30 -> 23 min measured when added); the
# cores are then 95-99% busy, so a third worker only adds contention (17:59 vs 14:53 measured).
# tests/conftest.py gives every process of the run one intra-op thread. --durations lists the
# slowest tests, where the suite's time goes.
test: install lint
	$(PY) -m pytest -q -n 2 --dist loadfile --durations 15 tests

test-fast: install lint
	$(PY) -m pytest -q -m "not slow" tests

bench: install
	$(VENV)/bin/hyperflow bench simulate --json

clean:
	rm -rf runs .pytest_cache .ruff_cache

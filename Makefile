PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install serve test test-fast lint bench bench-scale clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,postgres,lint]'
	touch $(STAMP)

install: $(STAMP)

serve: $(STAMP)
	$(VENV)/bin/imaging-commons demo --serve

# pytest-xdist workers (each serves its own copy of the demo archive: ~3 GB each at peak)
TEST_WORKERS ?= 2

test: $(STAMP)
	$(PY) -m pytest -q -n $(TEST_WORKERS)

# the suite without the tests marked slow, for the edit-test loop
test-fast: $(STAMP)
	$(PY) -m pytest -q -n $(TEST_WORKERS) -m "not slow"

# ruff (the rules are in pyproject.toml) and mypy with check_untyped_defs
lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/mypy

bench: $(STAMP)
	for b in bench/bench_*.py; do [ $$b = bench/bench_scale.py ] || $(PY) $$b || exit 1; done

# The archive at IDC's instance scale: hours at its default of 58.8M synthetic instances;
# e.g. make bench-scale BENCH_SCALE_ARGS="--instances 1000000"
bench-scale: $(STAMP)
	$(PY) bench/bench_scale.py $(BENCH_SCALE_ARGS)

clean:
	rm -rf $(VENV) archive

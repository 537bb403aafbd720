# The README's commands. Each target sets up .venv on its own, so a fresh clone needs nothing else.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup test demo bench bench-scale lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

lint: $(STAMP)
	$(PY) -m ruff check .

test: lint
	OMP_NUM_THREADS=1 $(PY) -m pytest -q

demo: $(STAMP)
	$(PY) demo/run_demo.py

bench: $(STAMP)
	$(PY) benchmarks/run_all.py

bench-scale: $(STAMP)
	$(PY) benchmarks/run_all.py --scale

clean:
	rm -rf $(VENV) demo/data benchmarks/.cache

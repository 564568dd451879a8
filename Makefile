# `make test` and `make demo` work from a clean clone: both create (or reuse) .venv and install first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install test demo clean

install: $(STAMP)

# TEST_WORKERS: pytest-xdist processes (one torch thread each); 2 suits the 2-core CI machine.
TEST_WORKERS ?= 2

$(STAMP): requirements.txt requirements-test.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -r requirements-test.txt
	touch $(STAMP)

test: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n $(TEST_WORKERS) --dist worksteal tests

demo: $(STAMP)
	PYTHON=$(PY) bash scripts/demo.sh

clean:
	rm -rf output .pytest_cache

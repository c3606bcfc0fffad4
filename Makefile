# Two set-up commands for a fresh machine (see README.md):
#   make demo   - creates .venv, runs examples/quickstart.py on offline MNIST-5k
#   make test   - creates .venv, runs the test suite
VENV ?= .venv
PY := $(VENV)/bin/python
export TF_CPP_MIN_LOG_LEVEL ?= 2
export PYTHONUNBUFFERED = 1

.PHONY: demo test test-fast bench venv clean

venv: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,examples]'
	touch $@

demo: venv
	$(PY) examples/quickstart.py

test: venv
	$(PY) -m pytest -q -n 2 --durations=15

test-fast: venv
	$(PY) -m pytest -q -n 2 -m "not slow"

bench: venv
	$(PY) benchmarks/search_overhead.py

clean:
	rm -rf $(VENV) build *.egg-info

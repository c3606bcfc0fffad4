# Two set-up commands for a fresh machine (see README.md):
#   make demo   - creates .venv, runs examples/quickstart.py on offline MNIST-5k
#   make test   - creates .venv, runs the test suite
VENV ?= .venv
PY := $(VENV)/bin/python
export TF_CPP_MIN_LOG_LEVEL ?= 2
export PYTHONUNBUFFERED = 1

.PHONY: demo test test-fast bench pareto venv clean firmware-size latency-calibration bazel-test

venv: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,examples]'
	# the tfmot baseline of benchmarks/pareto.py (tf_keras, own process); its absl-py~=1.2 pin is stale
	$(PY) -m pip install -q --no-deps tensorflow-model-optimization==0.8.1
	touch $@

demo: venv
	$(PY) examples/quickstart.py

test: venv
	$(PY) -m pytest -q -n 2 --durations=15

test-fast: venv
	$(PY) -m pytest -q -n 2 -m "not slow"

bench: venv
	$(PY) benchmarks/search_overhead.py

# Joint search vs uniform QAT, L1 channel pruning and tfmot, measured in TFLM (benchmarks/RESULTS.md)
pareto: venv
	$(PY) benchmarks/pareto.py

clean:
	rm -rf $(VENV) build *.egg-info

# Cortex-M4 build of the generated model_data.cc: installs Debian's gcc-arm-none-eabi when missing,
# cross-compiles (-mcpu=cortex-m4 -mthumb -Os) and compares the real .rodata of the model array with
# the flatbuffer. FW_DIR: a folder written by tflm_export.convert(..., out_dir=...); without one, the
# zoo's DS-CNN is exported to build/firmware-size first.
FW_DIR ?= build/firmware-size
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
firmware-size: venv
	@command -v arm-none-eabi-g++ >/dev/null 2>&1 || { $(SUDO) apt-get update -qq && \
		$(SUDO) apt-get install -y --no-install-recommends gcc-arm-none-eabi binutils-arm-none-eabi; }
	@test -f $(FW_DIR)/model_data.cc || $(PY) -c "import numpy as np, tflm_export; from tfjpq import zoo; \
		x = np.random.default_rng(0).uniform(0, 1, (64, 28, 28, 1)).astype('float32'); \
		tflm_export.convert(zoo.ds_cnn(), representative_data=x, out_dir='$(FW_DIR)', overwrite=True, name='ds_cnn')"
	$(PY) -c "import sys; from tflm_export import codegen; sys.exit(codegen.main(['$(FW_DIR)']))"

# Cycle model vs published TFLM latencies (benchmarks/results/latency_calibration.json).
latency-calibration: venv
	$(PY) benchmarks/latency_calibration.py

# The fast tests through Bazel (BUILD: one py_test per tests/test_*.py), offline, with Debian's
# bazel-bootstrap 4.2 (installed when missing) and the .venv as Python runtime and pip hub
# (WORKSPACE, tools/bazel/). Bazel 4 downloads rules_cc, rules_java and its coverage tools before
# any test; tools/bazel/offline stands in for them (it needs absolute paths, hence here).
BAZEL_OFFLINE := $(foreach r,rules_cc rules_java remote_coverage_tools,\
	--override_repository=$(r)=$(CURDIR)/tools/bazel/offline/$(r))
bazel-test: venv
	@command -v bazel >/dev/null 2>&1 || { $(SUDO) apt-get update -qq && \
		$(SUDO) apt-get install -y --no-install-recommends bazel-bootstrap; }
	bazel test $(BAZEL_OFFLINE) --local_test_jobs=2 --test_arg=-m --test_arg="not slow" //...

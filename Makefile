# Developer entry points. Every target honours VENV and PYTHON, e.g.
#   make test VENV=/tmp/walle-venv
# Wheels of the core and of every backend under backends/ are built into dist/ and
# installed from there, so the tests run against exactly what a user would install.

VENV ?= .venv
PYTHON ?= python3
SHARED ?= ../shared
DIST ?= dist
BUILD ?= build

PY := $(VENV)/bin/python
PIP := $(PY) -m pip
BACKEND_DIRS := $(patsubst %/pyproject.toml,%,$(wildcard backends/*/pyproject.toml))
PLUGIN_DIRS := $(patsubst %/pyproject.toml,%,$(wildcard plugins/*/pyproject.toml))
EXTRAS ?= cpu-x86,opencl,stream,deploy
BUILD_DEPS := scikit-build-core nanobind ninja
TEST_DEPS := pytest onnxruntime
# One CMake build tree per backend and venv, reused between runs so rebuilds are incremental.
VENV_TAG := $(subst /,_,$(abspath $(VENV)))

PEER_DIR ?= $(BUILD)/peerbench
PEER_PY := $(PEER_DIR)/venv/bin/python
PEER_ENGINES ?= onnxruntime,mnn,openvino,torch,walle
BENCH_THREADS ?= 1,2
# empty: every model of make_models.py; or a comma list such as squeezenet1_1,resnet18
BENCH_MODELS ?=
CONFORMANCE_DIR ?= $(BUILD)/conformance

.PHONY: system-deps venv wheels install test demo bench conformance lint clean

# apt packages the native builds and the tests need (a no-op when present)
system-deps:
	bash .ci/system-deps

venv: $(VENV)/.walle-build-deps

# The build tools live in the venv so that wheels build without isolation (fast, offline).
$(VENV)/.walle-build-deps: Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install $(BUILD_DEPS)
	touch $@

wheels: venv system-deps
	rm -rf $(DIST)
	$(PIP) wheel --no-deps --no-build-isolation --wheel-dir $(DIST) .
	for dir in $(BACKEND_DIRS); do \
	  $(PIP) wheel --no-deps --no-build-isolation --wheel-dir $(DIST) \
	    -C build-dir=$(abspath $(BUILD))/wheels/$$(basename $$dir)$(VENV_TAG)/{wheel_tag} $$dir || exit 1; \
	done
	for dir in $(PLUGIN_DIRS); do \
	  $(PIP) wheel --no-deps --no-build-isolation --wheel-dir $(DIST) $$dir || exit 1; \
	done

# Resolving the backends and plugins through the extras from the wheel folder is the check
# that the extras are right; the second step replaces same-version wheels already installed.
install: wheels
	$(PIP) install --find-links $(DIST) "walle[$(EXTRAS)]" $(TEST_DEPS)
	$(PIP) install --no-deps --force-reinstall $(DIST)/*.whl

# PYTHONSAFEPATH keeps the repo root off sys.path, so the tests import the installed walle_core.
test: install
	PYTHONSAFEPATH=1 $(PY) -m pytest -q -p no:cacheprovider

demo: install
	$(VENV)/bin/walle demo

# The peers get their own venv (see $(SHARED)/bench/README.md); Walle is installed into it
# from the same wheels, because the benchmark imports the engine in its worker processes.
bench: wheels
	test -x $(PEER_PY) || $(PYTHON) -m venv $(PEER_DIR)/venv
	$(PEER_PY) -m pip install onnx onnxruntime mnn openvino numpy torch==2.13.0
	$(PEER_PY) -m pip install --find-links $(DIST) "walle[cpu-x86]"
	$(PEER_PY) -m pip install --no-deps --force-reinstall $(DIST)/*.whl
	test -f $(PEER_DIR)/models/manifest.json || \
	  $(PEER_PY) $(SHARED)/bench/make_models.py --out $(PEER_DIR)/models
	env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE $(PEER_PY) $(SHARED)/bench/bench_peers.py \
	  --models-dir $(PEER_DIR)/models --workdir $(PEER_DIR)/work \
	  --runner walle=walle_core.testing.bench:peer_runner \
	  --engines $(PEER_ENGINES) --threads $(BENCH_THREADS) $(if $(BENCH_MODELS),--models $(BENCH_MODELS)) \
	  --out $(PEER_DIR)/results.json --md $(PEER_DIR)/results.md
	cat $(PEER_DIR)/results.md

conformance: install
	mkdir -p $(CONFORMANCE_DIR)
	$(PY) $(SHARED)/conformance/onnx_node_conformance.py \
	  --runner walle_core.testing.onnx_runner:run -j 2 \
	  --cache-dir $(CONFORMANCE_DIR)/node_data --log-dir $(CONFORMANCE_DIR)/logs \
	  --out $(CONFORMANCE_DIR)/walle.json --md $(CONFORMANCE_DIR)/walle.md
	cat $(CONFORMANCE_DIR)/walle.md

lint: venv
	$(PIP) install ruff
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(DIST) $(BUILD)

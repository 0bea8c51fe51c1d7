# Two commands on a fresh machine: `make run` and `make test` (each sets up .venv first).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SCENARIO ?= scenarios/default.yaml
OUTDIR ?= out/default

.PHONY: setup run test lint bench notebooks device-wheels clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch 2.13.0 is a CPU build the machine keeps on disk; asking for it first stops the
	# `hw` extra from pulling a multi-GB CUDA build.
	$(BIN)/python -m pip install -q "torch==2.13.0" || $(BIN)/python -m pip install -q torch
	$(BIN)/python -m pip install -q -e ".[dev,hw,ray]"
	touch $(STAMP)

setup: $(STAMP)

run: $(STAMP)
	$(BIN)/ligersim run $(SCENARIO) -o $(OUTDIR)
	$(BIN)/ligersim curve $(SCENARIO) --rates 20:200:20 --jobs 100 -o $(OUTDIR)/curve

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

# Execute every notebook with full settings (LIGERSIM_FULL=1); the executed copies, with their
# figures, go to out/notebooks/ (not into git: the committed notebooks stay without outputs).
notebooks: $(STAMP)
	$(BIN)/python notebooks/run.py --full -o out/notebooks

bench: $(STAMP)
	$(BIN)/python bench/engine.py

# simpy and pydantic (with its needs) as CPython 3.12 x86-64 wheels in .whl/, for the GPU machine's
# image, which has torch but not these (scripts/gpu-suite.sh installs them there).
DEVICE_WHEELS := simpy==4.1.2 pydantic==2.14.3 pydantic_core==2.50.4 annotated-types==0.8.0 \
	typing-inspection==0.4.5 typing_extensions==4.16.0
device-wheels:
	$(PY) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
	  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
	  -d .whl $(DEVICE_WHEELS)
	# the device gets a copy of the tree without .git: tell its results which commit they ran
	git rev-parse --short=12 HEAD > .whl/CODE && { git diff --quiet HEAD || echo "+changes"; } | tr -d '\n' >> .whl/CODE || true

clean:
	rm -rf $(VENV) out .pytest_cache

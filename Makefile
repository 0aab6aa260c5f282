# One-command set-up: `make demo` and `make test` create .venv on first use (pinned torch first,
# then the project built in place with its compiled extension), then run.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CUDA_HOME ?= $(shell bash cuda/find_cuda_home.sh)
export CUDA_HOME
# Two cores here; more parallel compile jobs only thrash.
export MAX_JOBS ?= 2
OUT ?= demo_out

.PHONY: setup demo test bench clean

setup: $(VENV)/.installed

# torch/torchvision first and pinned: an unpinned resolve would fetch a newer multi-GB build.
# --no-build-isolation builds the extension against that torch, not a freshly resolved one.
# The `lmms` extra (lmms-eval) too, so that its tests run (README, "lmms-eval").
$(VENV)/.installed: pyproject.toml setup.py
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip setuptools wheel ninja
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q --no-build-isolation -e ".[test,lmms]"
	touch $@

demo: setup
	$(BIN)/vreason demo --out $(OUT)

test: setup
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python experiments/bench/ops.py
	$(BIN)/python experiments/bench/generation.py
	$(BIN)/python experiments/bench/data.py

clean:
	rm -rf build $(VENV) vreason/_C*.so *.egg-info

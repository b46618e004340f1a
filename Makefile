# Entry points without Nix. `make demo` and `make test` set themselves up on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
SPEEDRUN := $(PY) -m harness
# On a GPU node (nvidia-smi works) setup installs the torch and Triton the short track pins in its track.toml
# (torch 2.11.0+cu130 from PyTorch's cu130 index, triton 3.6.0 from PyPI): only those are record-grade.
# Elsewhere torch==2.13.0 (a CPU build on the project's dev machines, a local wheel) and the same triton, whose
# interpreter runs the short track's loss kernels in the CPU tests (tests/test_fused_ce.py), with numpy < 2.3:
# Triton 3.6's interpreter fails on numpy 2.4 (tests/conftest.py, triton_interpreter). TORCH_SPEC=... on the
# command line overrides both.
TORCH_SPEC ?= torch==2.13.0
PINS_TOML := tracks/short/track.toml
TORCH_PIN := $(shell sed -n 's/^torch *= *"\([^"]*\)".*/\1/p' $(PINS_TOML))
TRITON_PIN := $(shell sed -n 's/^triton *= *"\([^"]*\)".*/\1/p' $(PINS_TOML))
TORCH_INDEX ?= https://download.pytorch.org/whl/$(lastword $(subst +, ,$(TORCH_PIN)))
RUNS ?= 8
SHARDS ?= 9
ARGS ?=

.PHONY: setup test demo short medium tiny verify-record data ci-gpu bench-sequential bench-telemetry clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
ifeq ($(origin TORCH_SPEC),file)
	@if nvidia-smi >/dev/null 2>&1; then \
	  echo "setup: GPU node: torch==$(TORCH_PIN) from $(TORCH_INDEX) and triton==$(TRITON_PIN) ($(PINS_TOML) [pins])"; \
	  $(PY) -m pip install -q "torch==$(TORCH_PIN)" --index-url "$(TORCH_INDEX)" \
	    || { echo "error: cannot install torch==$(TORCH_PIN) from $(TORCH_INDEX) (pip's reason above; no network, or no wheel for $$($(PY) -c 'import platform; print("Python", platform.python_version(), platform.machine())')): this node cannot be record-grade; TORCH_SPEC=... make setup installs another torch" >&2; exit 1; }; \
	  $(PY) -m pip install -q "triton==$(TRITON_PIN)" \
	    || { echo "error: cannot install triton==$(TRITON_PIN) (pip's reason above): this node cannot be record-grade" >&2; exit 1; }; \
	else \
	  $(PY) -m pip install -q "$(TORCH_SPEC)" "triton==$(TRITON_PIN)" "numpy<2.3"; \
	fi
else
	$(PY) -m pip install -q "$(TORCH_SPEC)"
endif
	$(PY) -m pip install -q -e '.[test]'
	touch $@

test: setup
	$(PY) -m pytest -q tests

demo: setup
	$(SPEEDRUN) run tiny --runs 5 $(ARGS)

tiny: setup
	$(SPEEDRUN) run tiny --runs $(RUNS) $(ARGS)

short: setup
	$(SPEEDRUN) run short --runs $(RUNS) $(ARGS)

medium: setup
	$(SPEEDRUN) run medium --runs $(RUNS) $(ARGS)

verify-record: setup
	@test -n "$(RECORD)" || { echo "error: usage: make verify-record RECORD=path/to/campaign-or-record-folder" >&2; exit 2; }
	$(SPEEDRUN) verify "$(RECORD)" $(ARGS)

data: setup
	$(SPEEDRUN) data fineweb --shards $(SHARDS) $(ARGS)

# GPU CI (rented H100 nodes): uses the node's own python3 unless PYTHON is given.
ci-gpu:
	bash scripts/ci-gpu.sh

# Simulated error rate and runs saved of --until-significant (CPU, ~1 min at 100k simulations).
bench-sequential: setup
	$(SPEEDRUN) bench-sequential --sims 100000

# Telemetry sampler overhead, A/B interleaved on a training-like loop (GPU node, node's python3).
bench-telemetry:
	PYTHONPATH=. $(PYTHON) -m harness.telemetry.bench overhead --rounds 10 --steps 100 --out results/bench_sampler_overhead.json

clean:
	rm -rf $(VENV) .pytest_cache

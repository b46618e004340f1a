# Entry points without Nix. `make demo` and `make test` set themselves up on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
SPEEDRUN := $(PY) -m harness
# torch==2.13.0: a CPU build on the project's dev machines (a local wheel), the CUDA build from PyPI elsewhere.
TORCH_SPEC ?= torch==2.13.0
RUNS ?= 8
SHARDS ?= 9
ARGS ?=

.PHONY: setup test demo short medium tiny verify-record data ci-gpu bench-sequential bench-telemetry clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q "$(TORCH_SPEC)"
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

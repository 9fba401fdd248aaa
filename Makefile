# Set-up and the two everyday commands. `make demo` runs the main job on the bundled demo data,
# `make test` the test suite; both create .venv and install mtc first when needed.
# GPU users: make demo TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: install demo test lint bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet $(TORCH_SPEC)
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

install: $(BIN)/.installed

demo: install
	$(BIN)/mtc demo

test: install
	$(BIN)/ruff check .
	$(BIN)/pytest

# The headline figures of the README, on the shipped data/mp36k (about 15 minutes on 2 cores; benchmarks/README.md).
bench: install
	$(BIN)/python benchmarks/bench_featurize.py --n 10000
	$(BIN)/python benchmarks/bench_train_step.py --threads 1
	$(BIN)/python benchmarks/bench_screen.py --n 10000
	$(BIN)/python benchmarks/bench_tune.py --n 3000 --epochs 3 --trials 6

clean:
	rm -rf $(VENV) .mtc demo-out .pytest_cache

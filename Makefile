# The project's commands. `make demo` runs the main job, `make test` the test suite; both install
# what they need first (scripts/setup.sh). PYTHON picks the interpreter (default python3).
PYTHON ?= python3
export PYTHONWARNINGS ?= ignore

.PHONY: setup test test-slow demo bench

setup:
	PYTHON=$(PYTHON) bash scripts/setup.sh

test: setup
	$(PYTHON) -m pytest

test-slow: setup
	$(PYTHON) -m pytest -m slow

demo: setup
	$(PYTHON) train.py --config configs/fashion_mnist/ksae.yaml

bench: setup
	$(PYTHON) benchmarks/bench_fashion_loading.py

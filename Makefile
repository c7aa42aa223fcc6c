# The two commands for a fresh machine: `make demo` and `make test`. Both set up .venv first.
.PHONY: setup demo test test-all bench clean

setup:
	@bash scripts/setup.sh

demo: setup
	.venv/bin/valign run valign_edge/data/code_of_conduct.md --out runs/demo --show-example

test: setup
	.venv/bin/python -m pytest -q

test-all: setup
	.venv/bin/python -m pytest -q -m "slow or not slow"

bench: setup
	.venv/bin/python bench/generate.py
	.venv/bin/python bench/train.py

clean:
	rm -rf runs .pytest_cache

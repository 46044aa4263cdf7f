# Interp Workbench. `make lab` opens the tour; `make test` runs every test (Python, JS, browser).
VPY := .venv/bin/python
ROOT_FLAG := $(shell [ "$$(id -u)" = 0 ] && echo --allow-root)

.PHONY: lab test setup setup-test test-py test-js test-browser lint bench js

setup:
	bash scripts/setup.sh

setup-test:
	bash scripts/setup.sh --test

lab: setup
	.venv/bin/jupyter lab $(ROOT_FLAG) examples/01_tour.ipynb

js:
	cd js && node build.mjs

lint:
	.venv/bin/ruff check workbench widgets tests benchmarks scripts hatch_build.py

test-js:
	cd js && npm test

test-py:
	$(VPY) -m pytest -q -m "not browser"

test-browser:
	$(VPY) -m pytest -q -m browser

test: setup-test
	$(MAKE) lint
	$(MAKE) test-js
	$(VPY) -m pytest -q -ra

bench:
	$(VPY) benchmarks/bench_trace.py
	$(VPY) benchmarks/bench_generate.py
	$(VPY) benchmarks/bench_attention.py
	$(VPY) benchmarks/bench_lens.py
	$(VPY) benchmarks/bench_patching.py
	$(VPY) benchmarks/bench_scan.py
	$(VPY) benchmarks/bench_weights.py
	$(VPY) benchmarks/bench_contrastive.py
	$(VPY) benchmarks/bench_sae_train.py
	$(VPY) benchmarks/bench_sae_splice.py
	$(VPY) benchmarks/bench_sae_quality.py
	$(VPY) benchmarks/bench_llm.py

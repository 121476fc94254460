# Two commands on a fresh clone: `make demo` and `make test`. Both set everything up first.
# Override TORCH_SPEC for a CUDA machine, e.g. `make test TORCH_SPEC="torch==2.13.0 --index-url ..."`.
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
DEMO_DIR ?= demo-output
export VENV TORCH_SPEC

.PHONY: setup demo test test-core test-plugin napari docs-screenshots benchmarks clean

setup:
	@bash scripts/setup.sh

demo: setup
	$(VENV)/bin/cryoden demo $(DEMO_DIR)

test: setup
	$(PY) -m pytest

test-core: setup
	$(PY) -m pytest tests/core

test-plugin: setup
	$(PY) -m pytest tests/plugin

napari: setup
	$(VENV)/bin/napari

docs-screenshots: setup
	xvfb-run -a -s "-screen 0 1600x1000x24" $(PY) docs/make_screenshots.py

benchmarks: setup
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) $(DEMO_DIR) build dist .pytest_cache

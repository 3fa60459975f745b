# klustr_gpu — two commands on a fresh machine:
#   make demo   creates .venv, installs, builds the demo corpus, runs the whole pipeline
#   make test   creates .venv if needed, fetches the Hydrogen kits, runs the test suite
PYTHON   ?= python3
VENV     := .venv
PY       := $(VENV)/bin/python
STAMP    := $(VENV)/.klustr-installed
DEMO_N   ?= 3000
DEMO_DIR ?= demo
HYDROGEN ?= $(HOME)/.cache/klustr_gpu/hydrogen
PYTEST_ARGS ?=
# make wheelhouse: klustr_gpu + its dependencies as wheels for a host with no package index
# (docs/gpu.md). Any Python with pip builds it: .venv's when there is one (no install needed).
WHEELHOUSE ?= wheelhouse
WHEELHOUSE_ARGS ?=
WHEELHOUSE_PY = $(if $(wildcard $(PY)),$(PY),$(PYTHON))

.PHONY: venv demo test hydrogen bench clean help wheelhouse wheelhouse-h200

help:
	@echo "make demo   - install into .venv, synthesise $(DEMO_N) one-shots, map them (prints where map.png is)"
	@echo "make test   - install into .venv if needed, run the test suite"
	@echo "make bench  - run the benchmarks, rewrite benchmarks/RESULTS.md"
	@echo "make wheelhouse - wheels for an offline host: this Python (WHEELHOUSE_ARGS='--python 3.12 ...')"
	@echo "make wheelhouse-h200 - the wheelhouse for the lent H200 (Python 3.12, manylinux x86-64, <= 60 MiB)"

# torch first, then torchaudio against that exact torch (see README: the CPU-only torch on some
# machines does not work with PyPI's torchaudio), then the project with its test extra.
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q 'torch==2.9.1'
	$(PY) -m pip install -q 'torch==2.9.1' 'torchaudio==2.9.*'
	$(PY) -m pip install -q -e '.[test]'
	@touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/klustr demo-corpus $(DEMO_DIR)/library --n $(DEMO_N)
	$(VENV)/bin/klustr map $(DEMO_DIR)/library -o $(DEMO_DIR)/project --labels $(DEMO_DIR)/library/labels.csv

hydrogen: $(STAMP)
	@if [ -f ../shared/data/fetch_hydrogen.sh ]; then \
	  PYTHON=$(abspath $(PY)) bash ../shared/data/fetch_hydrogen.sh $(HYDROGEN) || \
	  echo "warning: could not fetch the Hydrogen kits; tests that need them will skip (CI fails)"; \
	else echo "note: ../shared/data/fetch_hydrogen.sh not found; Hydrogen tests will skip"; fi

test: $(STAMP) hydrogen
	$(PY) -m pytest $(PYTEST_ARGS)

bench: $(STAMP) hydrogen
	$(PY) benchmarks/run_all.py

wheelhouse:
	$(WHEELHOUSE_PY) tools/wheelhouse.py --dest $(WHEELHOUSE) $(WHEELHOUSE_ARGS)

wheelhouse-h200:
	$(WHEELHOUSE_PY) tools/wheelhouse.py --dest $(WHEELHOUSE) --python 3.12 --platform manylinux-x86_64 \
	  --assume-present device-h200 --max-mib 60 $(WHEELHOUSE_ARGS)

clean:
	rm -rf $(DEMO_DIR) .pytest_cache test-artifacts

# NeuroNova — quick start: `make demo`, then `make test`. See README.md.
SHELL := /bin/bash
VENV := .venv
NEURONOVA := $(VENV)/bin/neuronova

.PHONY: setup system demo deploy test lint typecheck pytest bench stack-down clean

setup: $(VENV)/.synced  ## the Python environment alone (.venv/)

$(VENV)/.synced: pyproject.toml uv.lock scripts/setup
	scripts/setup
	touch $@

system: setup  ## what the stack and tests need: Debian packages, npm trees (FHIR, axe-core), OHIF
	scripts/system-packages

demo: setup system  ## start the local stack, ingest the sample study, print a viewer link
	$(NEURONOVA) demo

deploy: setup  ## work pools cpu/gpu and every deployment, on the running Prefect server
	$(NEURONOVA) deploy

test: setup system lint typecheck pytest  ## the full suite

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: setup
	$(VENV)/bin/mypy

pytest: setup
	$(VENV)/bin/pytest

bench: setup system  ## benchmarks: ratios against baselines measured in the same run
	$(VENV)/bin/python bench/bench_codec.py
	$(VENV)/bin/python bench/bench_ingest.py
	$(VENV)/bin/python bench/bench_gate.py
	$(VENV)/bin/python bench/bench_viewer.py
	$(VENV)/bin/python bench/bench_patients.py
	$(VENV)/bin/python bench/bench_volume.py
	$(VENV)/bin/python bench/bench_inference.py
	$(VENV)/bin/python bench/bench_trigger.py

stack-down:
	$(NEURONOVA) stack down

clean: stack-down
	rm -rf var/

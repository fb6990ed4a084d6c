# shopserve: two commands for a new user, `make up` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
ARTIFACTS ?= artifacts
DEMO_BUNDLE := $(ARTIFACTS)/demo

.PHONY: venv up test test-unit test-integration bench-recall demo-bundle lint clean

$(PY):
	$(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# Reinstall when the dependency list changes.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q -e '.[dev]'
	# recbole ships MovieLens-100K; its declared dependencies (old Ray, TensorBoard) are not needed.
	$(PY) -m pip install -q --no-deps 'recbole==1.2.1'
	touch $(STAMP)

venv: $(STAMP)

$(DEMO_BUNDLE)/recall/manifest.json: | $(STAMP)
	$(PY) -m pipeline.cli build-demo --out $(DEMO_BUNDLE)

demo-bundle: $(DEMO_BUNDLE)/recall/manifest.json

up: $(STAMP) demo-bundle
	$(PY) -m pipeline.cli up --bundle $(DEMO_BUNDLE)

test: $(STAMP)
	$(PY) -m pytest tests

test-unit: $(STAMP)
	$(PY) -m pytest tests/unit

test-integration: $(STAMP)
	$(PY) -m pytest tests/integration

bench-recall: $(STAMP)
	$(PY) -m bench.recall_quality
	$(PY) -m bench.recall_index

lint: $(STAMP)
	$(PY) -m ruff check .

clean:
	rm -rf $(VENV) $(ARTIFACTS) .pytest_cache

# shopserve: two commands for a new user, `make up` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
ARTIFACTS ?= artifacts
DEMO_BUNDLE := $(ARTIFACTS)/demo
# Helm and kubectl from the npm registry (scripts/install_tools.sh); `make test HELM=/path/to/helm`
# uses your own helm instead.
TOOLS_STAMP := .tools/.installed
# The optional TorchServe runtime (pyproject extra `torchserve`): tests and bench-runtimes only.
TS_STAMP := $(VENV)/.torchserve

.PHONY: venv up test test-unit test-integration test-charts tools manifests demo-bundle lint lint-imports serving-size clean bench-recall bench-recommend bench-ranker bench-stack bench-semantic bench-load bench-overload bench-runtimes bench-footprint drill soak evaluate-stack pipeline pipeline-tiny

$(PY):
	$(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# Reinstall when the dependency list changes. `.[dev]` is everything: the serving base plus the
# train, ops and local extras and the test tools (pyproject.toml).
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q -e '.[dev]'
	# recbole ships MovieLens-100K; its declared dependencies (old Ray, TensorBoard) are not needed.
	$(PY) -m pip install -q --no-deps 'recbole==1.2.1'
	touch $(STAMP)

venv: $(STAMP)

$(TS_STAMP): pyproject.toml | $(STAMP)
	$(PY) -m pip install -q -e '.[dev,torchserve]'
	touch $(TS_STAMP)

$(DEMO_BUNDLE)/ranker/manifest.json: | $(STAMP)
	$(PY) -m pipeline.cli build-demo --out $(DEMO_BUNDLE)

demo-bundle: $(DEMO_BUNDLE)/ranker/manifest.json

up: $(STAMP) demo-bundle
	$(PY) -m pipeline.cli up --bundle $(DEMO_BUNDLE)

test: $(STAMP) $(TS_STAMP) tools lint-imports
	$(PY) -m pytest tests --durations=25

test-unit: $(STAMP)
	$(PY) -m pytest tests/unit

test-integration: $(STAMP) $(TS_STAMP)
	$(PY) -m pytest tests/integration

test-charts: $(STAMP) tools
	$(PY) -m pytest tests/charts

$(TOOLS_STAMP): scripts/install_tools.sh
	scripts/install_tools.sh
	touch $(TOOLS_STAMP)

# Skipped when HELM names a helm binary of your own.
tools:
	@if [ -z "$(HELM)" ]; then $(MAKE) --no-print-directory $(TOOLS_STAMP); fi

# Render the chart per environment and deployment mode into manifests/ (checked by tests/charts).
manifests: $(STAMP) tools
	$(PY) -m pipeline.rollout.manifests

bench-recall: $(STAMP)
	$(PY) -m bench.recall_quality
	$(PY) -m bench.recall_index

# Next-item quality on MovieLens-100K and the generated demo log: popularity, tuned ALS, implicit's
# ItemItem and the SASRec sequence model, leave-one-out, full ranking (bench/results/recommend.md).
# Tens of minutes on 2 cores: every model is tuned on the validation split first.
bench-recommend: $(STAMP)
	$(PY) -m bench.recommend --out bench/results/recommend.md

# The highest steady rate of the local stack with p99 <= 150 ms, no failures and <= 1% degraded
# (locust, tail-heavy stream), today's configuration beside the new one;
# bench/results/load.md. Minutes: run it on a quiet machine.
bench-load: $(STAMP) demo-bundle
	$(PY) -m bench.load --bundle $(DEMO_BUNDLE) --out bench/results/load.md

# Offered load at 1x, 2x and 4x the ranker's direct capacity (searches on the tail-heavy stream):
# ranked req/s, degraded share by reason, p50/p99, failures, today's configuration beside the new
# one (bench/results/overload.md). Minutes: run it on a quiet machine.
bench-overload: $(STAMP) demo-bundle
	$(PY) -m bench.overload --bundle $(DEMO_BUNDLE) --out bench/results/overload.md

# Transformer overhead and ranking throughput through the transformer vs Triton directly.
bench-stack: $(STAMP) demo-bundle
	$(PY) -m bench.stack --bundle $(DEMO_BUNDLE)

# Query embedding at request time: query-encoder on the local Triton, fp32 against int8
bench-semantic: $(STAMP) demo-bundle
	$(PY) -m bench.semantic --bundle $(DEMO_BUNDLE)

# RSS, start-to-ready seconds and whether libtorch is mapped, per serving process of the local stack
# (medians of 3 starts); CODE_ROOT=<another checkout> measures that code on the same bundle.
bench-footprint: $(STAMP) demo-bundle
	$(PY) -m bench.footprint --bundle $(DEMO_BUNDLE) $(if $(CODE_ROOT),--code-root $(CODE_ROOT) --label $(CODE_ROOT))

# Fault drills on the supervised local stack under a steady load: kill -9 of the ranker server, its
# model process and recall, SIGTERM of the transformer, a stopped ranker; one row per fault, exit 1
# when a fault loses a request. RATE=<req/s> overrides the default of 4.
drill: $(STAMP) demo-bundle
	$(PY) -m pipeline.cli drill --bundle $(DEMO_BUNDLE) $(if $(RATE),--rate $(RATE))

# The supervised local stack at half its measured capacity for MINUTES (default 10): failures,
# degraded share and p99 per minute, each serving process's RSS at the start and the end.
soak: $(STAMP) demo-bundle
	$(PY) -m pipeline.cli soak --bundle $(DEMO_BUNDLE) $(if $(MINUTES),--minutes $(MINUTES)) $(if $(RATE),--rate $(RATE))

# Quality of the whole pipeline through the running stack (BM25, BM25+MF, full, degraded).
evaluate-stack: $(STAMP) demo-bundle
	$(PY) -m pipeline.cli evaluate stack --bundle $(DEMO_BUNDLE) --out bench/results/stack_quality.md

# The lifecycle on the demo (or tiny) configuration: data -> train -> optimise -> evaluate -> package
# into artifacts/bundles/<version>/, unchanged steps skipped, resumed after a failure.
pipeline: $(STAMP)
	$(PY) -m pipeline.cli pipeline run --config configs/pipeline-demo.yaml

pipeline-tiny: $(STAMP)
	$(PY) -m pipeline.cli pipeline run --config configs/pipeline-tiny.yaml

# Ranker variants (torch, ONNX fp32/int8, pruned int8) and the local Triton; bench/results/ranker.md.
bench-ranker: $(STAMP)
	$(PY) -m bench.ranker

# Triton (gRPC, HTTP) vs TorchServe (v2 REST) vs in-process ONNX Runtime on the demo bundle's ranker.
bench-runtimes: $(STAMP) $(TS_STAMP) demo-bundle
	$(PY) -m bench.runtimes --bundle $(DEMO_BUNDLE)/ranker

lint: $(STAMP) lint-imports
	$(PY) -m ruff check .

# The architecture contracts of pyproject.toml ([tool.importlinter]): layers, independent
# components, nothing of the build or operations stack in the serving packages.
lint-imports: $(STAMP)
	$(VENV)/bin/lint-imports

# The serving install alone (`pip install .`, no extras) in a throwaway venv: its size, its largest
# packages, no torch, and the serving entrypoints import with it (run outside the repository, so the
# installed copy is the one imported). What the `serving` image carries.
SERVING_VENV ?= /tmp/shopserve-serving-venv
serving-size:
	rm -rf $(SERVING_VENV)
	$(PYTHON) -m venv $(SERVING_VENV) || python3 -m venv $(SERVING_VENV)
	$(SERVING_VENV)/bin/pip install -q --upgrade pip
	$(SERVING_VENV)/bin/pip install -q --no-cache-dir .
	@if $(SERVING_VENV)/bin/pip show -q torch 2>/dev/null; then echo "torch in the serving install"; exit 1; fi
	cd /tmp && $(SERVING_VENV)/bin/python -c 'import transformers_pre.__main__, predictors.recall.__main__'
	du -sh $(SERVING_VENV)
	du -sh $(SERVING_VENV)/lib/python*/site-packages/* | sort -h | tail -15

clean:
	rm -rf $(VENV) $(ARTIFACTS) .pytest_cache

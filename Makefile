# Developer entry points. Tools live inside the repo: Python in $(VENV), buf in .tools/.

VENV ?= .venv
PY ?= $(VENV)/bin/python
BUF_VERSION ?= 1.75.0
BUF ?= .tools/node_modules/.bin/buf

VENV_STAMP := $(VENV)/.installed.stamp
BUF_STAMP := .tools/.buf-$(BUF_VERSION).stamp

.PHONY: run test lint bench bench-instructions venv buf proto lint-proto

# Set up everything and start the server on the paper exchange (embedded Redis unless
# OMS_REDIS_URL is set). Extra flags: make run ARGS="--listen 127.0.0.1:6000".
run: proto
	$(VENV)/bin/oms serve $(ARGS)

# Every check CI runs: lint, types, proto lint, and the whole test suite.
# Two workers (one per core here): most tests wait on timers and I/O, and each worker starts
# its own private Redis and PostgreSQL. TEST_WORKERS=0 runs them in this process.
TEST_WORKERS ?= 2
test: lint lint-proto
	$(PY) -m pytest -n $(TEST_WORKERS) $(PYTEST_ARGS)

lint: $(VENV_STAMP)
	$(VENV)/bin/ruff check src tests clients bench
	$(VENV)/bin/ruff format --check src tests clients bench
	$(VENV)/bin/mypy

# Throughput and latency against a no-op RPC on the same server stack, from a separate
# load-generator process. BENCH_ARGS="--seconds 10" for steadier figures.
bench: $(VENV_STAMP)
	$(PY) -m bench.run $(BENCH_ARGS)
	$(PY) -m bench.trailing

# Instructions per call under callgrind: repeatable where wall-clock figures drift.
bench-instructions: $(VENV_STAMP)
	$(PY) -m bench.instructions

# Create $(VENV) and install the project (editable) with its dev extras.
# No-op while the stamp is newer than pyproject.toml.
venv: $(VENV_STAMP)

$(VENV_STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -e '.[dev]'
	touch $@

# Install buf $(BUF_VERSION) from npm into .tools/. No-op once installed.
buf: $(BUF_STAMP)

$(BUF_STAMP):
	npm install --prefix .tools --no-save --no-package-lock @bufbuild/buf@$(BUF_VERSION)
	touch $@

# Regenerate generated/ from protos/ (scripts/gen_protos.sh owns generated/tradingboost).
proto: $(VENV_STAMP)
	PY=$(PY) scripts/gen_protos.sh generated

# Lint protos/ with buf's STANDARD rules (buf.yaml).
lint-proto: $(BUF_STAMP)
	$(BUF) lint

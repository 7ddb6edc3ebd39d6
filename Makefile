# Everything runs from the project's own virtual environment, created on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)

.PHONY: install serve test soak bench check lint typecheck proto-check generate gateway clean

$(STAMP): pyproject.toml
	$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11) and "Python 3.11+ is required")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	rm -f $(VENV)/.installed-*
	touch $@

install: $(STAMP)

## Run the server on the embedded PostgreSQL (or DATABASE_URL) with demo data.
serve: install
	$(BIN)/cinema-grpc seed-demo
	$(BIN)/cinema-grpc serve

## Run the whole test suite (unit, integration, e2e).
test: install
	$(BIN)/pytest

## Soak and fault tests with a longer load (SOAK_SECONDS per test; `make test` runs them for 20 s):
## replicas killed and stopped under mixed load, PostgreSQL restarted, Redis gone.
SOAK_SECONDS ?= 120
soak: install
	CINEMA_SOAK_SECONDS=$(SOAK_SECONDS) $(BIN)/pytest -s --timeout 3600 tests/soak

## The benchmark suite (not a test, takes minutes): one table, docs/performance.png.
bench: install
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	$(BIN)/python bench/suite.py

## Static checks: lint, format, types, proto lint/format/breaking, generated code is fresh.
check: lint typecheck proto-check

lint: install
	$(BIN)/ruff check cinema_grpc tests examples bench
	$(BIN)/ruff format --check cinema_grpc tests examples bench

typecheck: install
	$(BIN)/mypy

proto-check: install
	$(BIN)/buf lint
	$(BIN)/buf format --diff --exit-code
	scripts/check-breaking.sh
	scripts/generate.sh
	@if [ -n "$$CI" ] || scripts/build-gateway.sh --check-tools 2>/dev/null; then scripts/build-gateway.sh; \
	else echo "gateway toolchain not installed (scripts/install-gateway-deps.sh): generated/openapi not checked"; fi
	@git diff --exit-code --stat -- generated || (echo "generated/ is stale: run 'make generate' (generated/openapi: 'make gateway') and commit"; exit 1)
	@test -z "$$(git status --porcelain -- generated)" || (echo "generated/ has untracked files: commit them"; exit 1)

generate: install
	scripts/generate.sh

## Build the REST/JSON gateway (build/gateway/gateway) and refresh generated/openapi;
## needs Go and protoc from Debian: scripts/install-gateway-deps.sh.
gateway:
	scripts/build-gateway.sh

clean:
	rm -rf $(VENV) .cinema-data .pytest_cache .mypy_cache .ruff_cache

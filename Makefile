# orkestr — build, set up and test on a Debian/Ubuntu host (run as root).
#
#   make setup   install Debian packages, build binaries, runsc and the offline templates
#   make run     setup, then run the server on its embedded defaults
#   make test    setup, then every test (real gVisor sandboxes), Go, then the TypeScript and Python SDKs'
#   make test-js setup, then only the TypeScript SDK's tests (sdk/js: npm ci, build, node --test)
#   make test-python  only the Python SDK: venv, mypy --strict, pytest
#   make bench   the benchmark harness (results in docs/benchmarks.md format)
#   make test-contract  only the schemathesis contract run (part of make test)
#   make fuzz    a long schemathesis run (local use)
#   make soak    a churn soak with kill -9 restarts (SOAK_MINUTES, default 60; not in CI)

SHELL        := /bin/bash
GO           ?= go
BIN          := $(CURDIR)/bin
# gVisor is built from the Go module proxy at this pinned version; nothing is
# downloaded from anywhere else. It must be a static (CGO_ENABLED=0) build.
RUNSC_VERSION := v0.0.0-20260905035102-160fafc42237
TEMPLATE_DIR ?= $(or $(ORKESTR_TEMPLATE_DIR),/var/lib/orkestr/templates)
OFFLINE_TEMPLATES := debian-12 python-3.11 node-22
# What the server needs (make setup, make run), and what only the tests need
# (make test): PostgreSQL for the store tests, runc as a benchmark baseline,
# chromium for the console's browser test, Node and Python for the SDKs.
DEB_PACKAGES      := debootstrap iproute2 nftables ca-certificates busybox-static
TEST_DEB_PACKAGES := postgresql runc chromium nodejs python3 python3-venv
TEST_FLAGS   ?= -count=1 -timeout 40m

.PHONY: setup deps test-deps build runsc templates run test test-js test-js-run test-python lint bench clean postgres console-e2e-deps schemathesis-venv test-contract fuzz soak

setup: deps build runsc templates

# install-debs installs the Debian packages of $(1) that are missing.
define install-debs
	@missing=""; for p in $(1); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi
endef

deps:
	$(call install-debs,$(DEB_PACKAGES))

test-deps: deps
	$(call install-debs,$(TEST_DEB_PACKAGES))

build:
	@mkdir -p $(BIN)
	$(GO) build -trimpath -o $(BIN)/orkestrd ./cmd/orkestrd
	$(GO) build -trimpath -o $(BIN)/orkestr ./cmd/orkestr
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags='-s -w' -o $(BIN)/orkestr-agent ./cmd/orkestr-agent

runsc:
	@if [ -x $(BIN)/runsc ] && [ "$$(cat $(BIN)/.runsc-version 2>/dev/null)" = "$(RUNSC_VERSION)" ]; then \
		echo "runsc $(RUNSC_VERSION) already built"; \
	else \
		echo "building runsc $(RUNSC_VERSION) from the Go module proxy (about 2 minutes)"; \
		mkdir -p $(BIN) && \
		CGO_ENABLED=0 GOFLAGS=-mod=mod GOBIN=$(BIN) $(GO) install -ldflags='-s -w' gvisor.dev/gvisor/runsc@$(RUNSC_VERSION) && \
		echo "$(RUNSC_VERSION)" > $(BIN)/.runsc-version; \
	fi

templates: build
	@for t in $(OFFLINE_TEMPLATES); do $(BIN)/orkestrd admin template build --template-dir $(TEMPLATE_DIR) $$t || exit 1; done

run: setup
	$(BIN)/orkestrd serve

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt would change: $$out"; exit 1; fi
	$(GO) vet ./...

# The console's browser test (e2e/console_test.go) drives Debian's chromium
# with playwright-core, pinned by e2e/console/package-lock.json.
console-e2e-deps: test-deps
	@[ -d e2e/console/node_modules/playwright-core ] || (cd e2e/console && npm ci --no-audit --no-fund)

# The store's tests run against PostgreSQL as well as SQLite: start Debian's
# cluster and make a role for them.
TEST_DATABASE_URL ?= postgres://orkestr:orkestr@127.0.0.1:5432/postgres?sslmode=disable
postgres: test-deps
	@ver=$$(ls /etc/postgresql | sort -n | tail -1); \
	pg_ctlcluster $$ver main status >/dev/null 2>&1 || pg_ctlcluster $$ver main start; \
	for i in $$(seq 1 30); do pg_isready -q -h 127.0.0.1 && break; sleep 0.5; done; \
	su postgres -c "psql -qtAc \"SELECT 1 FROM pg_roles WHERE rolname='orkestr'\"" | grep -q 1 || \
		su postgres -c "psql -qc \"CREATE ROLE orkestr LOGIN SUPERUSER PASSWORD 'orkestr'\""

test: setup test-deps lint postgres console-e2e-deps
	@if [ "$$(id -u)" != 0 ]; then echo "make test starts real gVisor sandboxes and must run as root"; exit 1; fi
	ORKESTR_TEMPLATE_DIR=$(TEMPLATE_DIR) ORKESTR_RUNSC=$(BIN)/runsc ORKESTR_TEST_DATABASE_URL='$(TEST_DATABASE_URL)' \
		$(GO) test $(TEST_FLAGS) ./...
	@$(MAKE) --no-print-directory test-js-run
	@$(MAKE) --no-print-directory test-python
	@$(MAKE) --no-print-directory test-contract

# The TypeScript SDK (sdk/js) against a real orkestrd its tests start: Node
# 18+ and npm (Debian's nodejs), its devDependencies from the npm registry.
test-js: setup test-deps test-js-run

test-js-run:
	@command -v npm >/dev/null || { echo "test-js needs Node 18+ and npm (Debian package nodejs)"; exit 1; }
	cd sdk/js && npm ci --no-audit --no-fund && npm run build
	cd sdk/js && ORKESTR_SDK_TEST_STRICT=1 ORKESTR_TEMPLATE_DIR=$(TEMPLATE_DIR) ORKESTR_RUNSC=$${ORKESTR_RUNSC:-$(BIN)/runsc} \
		node --test test/*.test.mjs

# The Python SDK: a virtualenv in sdk/python/.venv (git-ignored) with the SDK
# and its test tools from PyPI, mypy --strict, then pytest against a real
# orkestrd (bin/) with real gVisor sandboxes.
PYTHON  ?= python3
PY_SDK  := $(CURDIR)/sdk/python
PY_VENV := $(PY_SDK)/.venv
test-python: build test-deps
	@if [ "$$(id -u)" != 0 ]; then echo "the Python SDK tests start real gVisor sandboxes and must run as root"; exit 1; fi
	@[ -x $(PY_VENV)/bin/python ] || $(PYTHON) -m venv $(PY_VENV)
	$(PY_VENV)/bin/pip install -q -e '$(PY_SDK)[test]'
	cd $(PY_SDK) && .venv/bin/mypy
	cd $(PY_SDK) && ORKESTR_TEMPLATE_DIR=$(TEMPLATE_DIR) ORKESTR_RUNSC=$(or $(ORKESTR_RUNSC),$(BIN)/runsc) ORKESTR_BIN_DIR=$(BIN) \
		.venv/bin/pytest -q -rs

# The contract, property-based: schemathesis (pinned in
# api/schemathesis/requirements.txt, from PyPI, in a git-ignored virtualenv)
# against a real orkestrd with real gVisor sandboxes, driven by the served
# /v1/openapi.yaml: every operation, every check, the stateful links, a fixed
# seed and a bounded number of examples (a few minutes on 2 cores). Any
# failure fails the build. `make fuzz` is the long run for local use
# (FUZZ_MAX_TIME seconds, default 1800; FUZZ_SEED to vary).
ST_DIR  := $(CURDIR)/api/schemathesis
ST_VENV := $(ST_DIR)/.venv
schemathesis-venv: test-deps
	@[ -x $(ST_VENV)/bin/python ] || $(PYTHON) -m venv $(ST_VENV)
	@$(ST_VENV)/bin/pip install -q -r $(ST_DIR)/requirements.txt

test-contract: build schemathesis-venv
	@if [ "$$(id -u)" != 0 ]; then echo "the contract run starts real gVisor sandboxes and must run as root"; exit 1; fi
	ORKESTR_TEMPLATE_DIR=$(TEMPLATE_DIR) ORKESTR_RUNSC=$(or $(ORKESTR_RUNSC),$(BIN)/runsc) SCHEMATHESIS_VENV=$(ST_VENV) \
		$(ST_DIR)/run.sh quick

fuzz: setup schemathesis-venv
	ORKESTR_TEMPLATE_DIR=$(TEMPLATE_DIR) ORKESTR_RUNSC=$(or $(ORKESTR_RUNSC),$(BIN)/runsc) SCHEMATHESIS_VENV=$(ST_VENV) \
		$(ST_DIR)/run.sh long

# The churn soak (not in CI): mixed load on a real orkestrd for
# SOAK_MINUTES (default 60) with kill -9 and restarts at random moments,
# then checks the host is back at its baseline and the store matches the
# runtime and the meters (bench/soak).
SOAK_MINUTES ?= 60
soak: setup
	@if [ "$$(id -u)" != 0 ]; then echo "the soak starts real gVisor sandboxes and must run as root"; exit 1; fi
	ORKESTR_TEMPLATE_DIR=$(TEMPLATE_DIR) ORKESTR_RUNSC=$(or $(ORKESTR_RUNSC),$(BIN)/runsc) \
		$(GO) run ./bench/soak -duration $(SOAK_MINUTES)m $(SOAK_FLAGS)

bench: setup
	ORKESTR_TEMPLATE_DIR=$(TEMPLATE_DIR) ORKESTR_RUNSC=$(BIN)/runsc ./bench/run.sh

clean:
	rm -f $(BIN)/orkestrd $(BIN)/orkestr $(BIN)/orkestr-agent

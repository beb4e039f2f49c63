# orkestr — build, set up and test on a Debian/Ubuntu host (run as root).
#
#   make setup   install Debian packages, build binaries, runsc and the offline templates
#   make run     setup, then run the server on its embedded defaults
#   make test-unit  the fast tier: no root, no sandboxes, no PostgreSQL (go test -short), seconds
#   make test    setup, then every test (real gVisor sandboxes), Go, then the TypeScript and Python SDKs'
#   make test-js setup, then only the TypeScript SDK's tests (sdk/js: npm ci, build, node --test)
#   make test-python  only the Python SDK: venv, mypy --strict, pytest
#   make bench   the benchmark harness (results in docs/benchmarks.md format)
#   make licenses     regenerate THIRD_PARTY_LICENSES*.csv (go-licenses)
#   make dist VERSION=1.2.3  release artifacts in dist/ (docs/operating.md, "Release artifacts")
#   make test-contract  only the schemathesis contract run (part of make test)
#   make test-k8s  the Helm chart (control plane + node DaemonSet) in a real kube-apiserver + etcd (not in make test)
#   make fuzz    a long schemathesis run (local use)
#   make soak    a churn soak with kill -9 restarts (SOAK_MINUTES, default 60; not in CI)

SHELL        := /bin/bash
GO           ?= go
BIN          := $(CURDIR)/bin
# gVisor is built from the Go module proxy at this pinned version; nothing is
# downloaded from anywhere else. It must be a static (CGO_ENABLED=0) build.
# tools/runsc builds it (with orkestr's GC target) and requires the same
# version. RUNSC_BUILD names the build: a change of tools/runsc rebuilds.
RUNSC_VERSION := v0.0.0-20260905035102-160fafc42237
RUNSC_BUILD   = $(shell RUNSC_VERSION=$(RUNSC_VERSION) scripts/runsc-build-id)
TEMPLATE_DIR ?= $(or $(ORKESTR_TEMPLATE_DIR),/var/lib/orkestr/templates)
OFFLINE_TEMPLATES := debian-12 python-3.11 node-22 e2b-base
# What the server needs (make setup, make run), and what only the tests need
# (make test): PostgreSQL for the store tests, runc as a benchmark baseline,
# chromium for the console's browser test, Node and Python for the SDKs.
DEB_PACKAGES      := debootstrap iproute2 nftables ca-certificates busybox-static
TEST_DEB_PACKAGES := postgresql runc chromium nodejs python3 python3-venv
TEST_FLAGS   ?= -count=1 -timeout 40m
# versitygw (Apache-2.0), the real S3 server of the snapshot store's tests,
# built from the Go module proxy into bin/ (about 2 minutes the first time).
VERSITYGW_VERSION := v1.8.0

.PHONY: test-unit setup deps test-deps build runsc templates run test test-js test-js-run test-python lint bench clean postgres console-e2e-deps console-vendor install uninstall e2b-proto e2b-sdk-deps schemathesis-venv test-contract fuzz soak

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

test-deps: deps versitygw
	$(call install-debs,$(TEST_DEB_PACKAGES))

.PHONY: versitygw
versitygw:
	@if [ -x $(BIN)/versitygw ] && [ "$$(cat $(BIN)/.versitygw-version 2>/dev/null)" = "$(VERSITYGW_VERSION)" ]; then \
		echo "versitygw $(VERSITYGW_VERSION) already built"; \
	else \
		echo "building versitygw $(VERSITYGW_VERSION) from the Go module proxy (about 2 minutes)"; \
		mkdir -p $(BIN) && \
		CGO_ENABLED=0 GOFLAGS=-mod=mod GOBIN=$(BIN) $(GO) install -ldflags='-s -w' github.com/versity/versitygw/cmd/versitygw@$(VERSITYGW_VERSION) && \
		echo "$(VERSITYGW_VERSION)" > $(BIN)/.versitygw-version; \
	fi

# orkestrd version prints these (set VERSION=… for a release build).
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT  ?= $(shell git rev-parse HEAD 2>/dev/null || echo unknown)
ORKESTRD_LDFLAGS := -X main.version=$(VERSION) -X main.commit=$(COMMIT) -X main.runscPinned=$(RUNSC_VERSION)

build:
	@mkdir -p $(BIN)
	$(GO) build -trimpath -ldflags='$(ORKESTRD_LDFLAGS)' -o $(BIN)/orkestrd ./cmd/orkestrd
	$(GO) build -trimpath -o $(BIN)/orkestr ./cmd/orkestr
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags='-s -w' -o $(BIN)/orkestr-agent ./cmd/orkestr-agent

runsc:
	@if [ -x $(BIN)/runsc ] && [ "$$(cat $(BIN)/.runsc-version 2>/dev/null)" = "$(RUNSC_BUILD)" ]; then \
		echo "runsc $(RUNSC_BUILD) already built"; \
	else \
		echo "building runsc $(RUNSC_BUILD) (tools/runsc) from the Go module proxy (about 2 minutes)"; \
		mkdir -p $(BIN) && \
		(cd tools/runsc && CGO_ENABLED=0 $(GO) build -trimpath -ldflags='-s -w' -o $(BIN)/runsc .) && \
		echo "$(RUNSC_BUILD)" > $(BIN)/.runsc-version; \
	fi

templates: build
	@for t in $(OFFLINE_TEMPLATES); do $(BIN)/orkestrd admin template build --template-dir $(TEMPLATE_DIR) $$t || exit 1; done

run: setup
	$(BIN)/orkestrd serve

# make install puts the one-box server onto this host's FHS paths (binaries
# in $(PREFIX)/bin, the config in /etc/orkestr, data in /var/lib/orkestr, the
# systemd unit); the config is never overwritten. make uninstall removes the
# binaries and the unit but keeps /etc/orkestr and /var/lib/orkestr (the
# database, snapshots and templates). DESTDIR stages into another root.
PREFIX      ?= /usr/local
SYSTEMD_DIR ?= /etc/systemd/system
DESTDIR     ?=
install: build
	@[ -x $(BIN)/runsc ] || { echo "no runsc in $(BIN): run make runsc (or make setup) first"; exit 1; }
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(SYSTEMD_DIR)
	install -m 0755 $(BIN)/orkestrd $(BIN)/orkestr $(BIN)/orkestr-agent $(DESTDIR)$(PREFIX)/bin/
	install -m 0755 "$$(readlink -f $(BIN)/runsc)" $(DESTDIR)$(PREFIX)/bin/runsc
	install -d -m 0755 $(DESTDIR)/etc/orkestr
	@if [ -e $(DESTDIR)/etc/orkestr/config.yaml ]; then echo "keeping $(DESTDIR)/etc/orkestr/config.yaml"; \
	else install -m 0640 deploy/config.yaml $(DESTDIR)/etc/orkestr/config.yaml; fi
	install -d -m 0711 $(DESTDIR)/var/lib/orkestr
	install -d -m 0700 $(DESTDIR)/var/lib/orkestr/data
	install -d -m 0755 $(DESTDIR)/var/lib/orkestr/templates
	for u in orkestr.service orkestr-backup.service orkestr-backup.timer; do \
		sed 's#/usr/local/bin/#$(PREFIX)/bin/#g' deploy/systemd/$$u > $(DESTDIR)$(SYSTEMD_DIR)/$$u && chmod 0644 $(DESTDIR)$(SYSTEMD_DIR)/$$u || exit 1; \
	done
	@if [ -z "$(DESTDIR)" ] && [ -d /run/systemd/system ]; then systemctl daemon-reload; fi
	@echo "installed. Next: orkestrd admin template build debian-12; orkestrd config check --config /etc/orkestr/config.yaml; systemctl enable --now orkestr (and orkestr-backup.timer for daily SQLite backups)"

uninstall:
	@if [ -z "$(DESTDIR)" ] && [ -d /run/systemd/system ] && systemctl is-active --quiet orkestr; then \
		echo "orkestr.service is running: stop it first (systemctl disable --now orkestr; its sandboxes keep running until a start adopts or destroys them)"; exit 1; fi
	rm -f $(DESTDIR)$(PREFIX)/bin/orkestrd $(DESTDIR)$(PREFIX)/bin/orkestr $(DESTDIR)$(PREFIX)/bin/orkestr-agent $(DESTDIR)$(PREFIX)/bin/runsc
	rm -f $(DESTDIR)$(SYSTEMD_DIR)/orkestr.service $(DESTDIR)$(SYSTEMD_DIR)/orkestr-backup.service $(DESTDIR)$(SYSTEMD_DIR)/orkestr-backup.timer
	@if [ -z "$(DESTDIR)" ] && [ -d /run/systemd/system ]; then systemctl daemon-reload; fi
	@echo "uninstalled the binaries and the unit; kept $(DESTDIR)/etc/orkestr and $(DESTDIR)/var/lib/orkestr (remove them by hand to delete the configuration, the database and the templates)"

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

test: setup test-deps lint licenses-check release-tools postgres console-e2e-deps e2b-sdk-deps
	@if [ "$$(id -u)" != 0 ]; then echo "make test starts real gVisor sandboxes and must run as root"; exit 1; fi
	ORKESTR_TEMPLATE_DIR=$(TEMPLATE_DIR) ORKESTR_RUNSC=$(BIN)/runsc ORKESTR_TEST_DATABASE_URL='$(TEST_DATABASE_URL)' \
		ORKESTR_RELEASE_TOOLS=$(TOOLS_BIN) \
		$(GO) test $(TEST_FLAGS) ./...
	cd tools/runsc && $(GO) test -count=1 .
	@$(MAKE) --no-print-directory test-js-run
	@$(MAKE) --no-print-directory test-python
	@$(MAKE) --no-print-directory test-contract

# The fast tier: what needs neither root, gVisor nor PostgreSQL (tests that do
# skip themselves under -short). `make test` runs everything, this included.
test-unit:
	$(GO) test -short -count=1 ./...

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

# The E2B-compatible API's protobuf code (internal/e2b/envdpb) is generated
# from E2B's envd protos — spec/envd of github.com/e2b-dev/E2B at
# E2B_COMMIT, checked out by hand: E2B_SPEC=/path/to/E2B/spec/envd — with
# pinned buf and plugins from the Go module proxy. The output is committed,
# so neither builds nor CI run this.
E2B_COMMIT := b8029973aa7da5f741f7bb1a9f833b38a0885438
BUF_VERSION := v1.61.0
PROTOC_GEN_GO_VERSION := v1.36.12
PROTOC_GEN_CONNECT_GO_VERSION := v1.19.1
e2b-proto:
	@[ -n "$(E2B_SPEC)" ] || { echo "set E2B_SPEC to spec/envd of a checkout of github.com/e2b-dev/E2B at $(E2B_COMMIT)"; exit 1; }
	GOBIN=$(CURDIR)/.tools $(GO) install github.com/bufbuild/buf/cmd/buf@$(BUF_VERSION)
	GOBIN=$(CURDIR)/.tools $(GO) install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTOC_GEN_GO_VERSION)
	GOBIN=$(CURDIR)/.tools $(GO) install connectrpc.com/connect/cmd/protoc-gen-connect-go@$(PROTOC_GEN_CONNECT_GO_VERSION)
	rm -rf internal/e2b/envdpb
	cd internal/e2b && PATH=$(CURDIR)/.tools:$$PATH buf generate $(abspath $(E2B_SPEC)) --template buf.gen.yaml

# The published e2b SDKs the E2B-compatibility tests (e2e/e2b_test.go) run:
# npm e2b pinned by e2e/e2b/package-lock.json, PyPI e2b pinned in
# e2e/e2b/requirements.txt (and the newest, requirements-latest.txt), each
# in a virtualenv (git-ignored).
e2b-sdk-deps: test-deps
	@[ -d e2e/e2b/node_modules/e2b ] || (cd e2e/e2b && npm ci --no-audit --no-fund)
	@[ -x e2e/e2b/.venv/bin/python ] || $(PYTHON) -m venv e2e/e2b/.venv
	@e2e/e2b/.venv/bin/pip install -q -r e2e/e2b/requirements.txt
	@[ -x e2e/e2b/.venv-latest/bin/python ] || $(PYTHON) -m venv e2e/e2b/.venv-latest
	@e2e/e2b/.venv-latest/bin/pip install -q -r e2e/e2b/requirements-latest.txt
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

# BenchmarkFleet needs PostgreSQL (a fresh database per run, as the tests).
bench: setup postgres
	ORKESTR_TEMPLATE_DIR=$(TEMPLATE_DIR) ORKESTR_RUNSC=$(BIN)/runsc ORKESTR_TEST_DATABASE_URL='$(TEST_DATABASE_URL)' ./bench/run.sh

# The console's xterm.js (internal/console/static/vendor/xterm) is the npm
# package's files, unchanged and committed so that `go build` needs no npm.
# This fetches the pinned tarball again, checks its integrity and compares
# the files (TestVendoredXtermUnchanged checks them against VERSION).
XTERM_VERSION := 6.0.0
console-vendor:
	@tmp=$$(mktemp -d) && cd $$tmp && npm pack --silent @xterm/xterm@$(XTERM_VERSION) >/dev/null && \
	  want=$$(grep -o 'sha512-[^ ]*' $(CURDIR)/internal/console/static/vendor/xterm/VERSION | sed 's/^sha512-//' | base64 -d | od -An -tx1 | tr -d ' \n') && \
	  got=$$(sha512sum xterm-xterm-$(XTERM_VERSION).tgz | cut -d' ' -f1) && [ "$$want" = "$$got" ] && \
	  tar -xzf xterm-xterm-$(XTERM_VERSION).tgz && \
	  cmp package/lib/xterm.js $(CURDIR)/internal/console/static/vendor/xterm/xterm.js && \
	  cmp package/css/xterm.css $(CURDIR)/internal/console/static/vendor/xterm/xterm.css && \
	  cmp package/LICENSE $(CURDIR)/internal/console/static/vendor/xterm/LICENSE && \
	  echo "vendored @xterm/xterm $(XTERM_VERSION) matches the npm package"; rc=$$?; rm -rf $$tmp; exit $$rc

clean:
	rm -f $(BIN)/orkestrd $(BIN)/orkestr $(BIN)/orkestr-agent

# Release and packaging tools, each pinned by its own module in tools/NAME
# (go.mod + go.sum; its `tool` line names the package) and built from the Go
# module proxy into bin/tools, once.
TOOLS_BIN := $(BIN)/tools
tool-path = $(shell awk '$$1=="tool"{print $$2}' tools/$(1)/go.mod)
$(TOOLS_BIN)/%: tools/%/go.mod tools/%/go.sum
	@mkdir -p $(TOOLS_BIN)
	@echo "building $* from the Go module proxy (tools/$*/go.mod)"
	cd tools/$* && CGO_ENABLED=0 $(GO) build -trimpath -o $@ $(call tool-path,$*)

# The third-party licences of the binaries and of runsc, listed by
# go-licenses (scripts/licenses.sh). make test fails when the committed
# report is stale or a dependency's licence is of a disallowed type.
.PHONY: licenses licenses-check
licenses: $(TOOLS_BIN)/go-licenses
	GO_LICENSES=$(TOOLS_BIN)/go-licenses RUNSC_VERSION=$(RUNSC_VERSION) scripts/licenses.sh write
licenses-check: $(TOOLS_BIN)/go-licenses
	GO_LICENSES=$(TOOLS_BIN)/go-licenses RUNSC_VERSION=$(RUNSC_VERSION) scripts/licenses.sh check

# Release artifacts (scripts/dist.sh; docs/operating.md, "Release
# artifacts"): make dist VERSION=1.2.3 [ARCHES="amd64 arm64"] [DIST_DIR=dist]
# [IMAGE_PUSH=registry/orkestr:1.2.3]. make test builds only this host's
# architecture (internal/release's TestDist).
.PHONY: dist release-tools
ARCHES   ?= amd64 arm64
DIST_DIR ?= $(CURDIR)/dist
release-tools: $(TOOLS_BIN)/nfpm $(TOOLS_BIN)/cyclonedx-gomod $(TOOLS_BIN)/helm $(TOOLS_BIN)/kubernetes-validate/.installed

# kubernetes-validate (PyPI, pinned with its dependencies) checks the Helm
# chart's rendered manifests against the Kubernetes schemas it ships.
$(TOOLS_BIN)/kubernetes-validate/.installed: tools/kubernetes-validate/requirements.txt
	@command -v $(PYTHON) >/dev/null || { echo "kubernetes-validate needs python3 and python3-venv (Debian)"; exit 1; }
	rm -rf $(TOOLS_BIN)/kubernetes-validate
	$(PYTHON) -m venv $(TOOLS_BIN)/kubernetes-validate
	$(TOOLS_BIN)/kubernetes-validate/bin/pip install -q --no-deps -r $<
	touch $@
dist: release-tools runsc
	@[ -n "$(VERSION)" ] || { echo "make dist needs VERSION=, e.g. make dist VERSION=1.2.3"; exit 2; }
	VERSION='$(VERSION)' RUNSC_VERSION=$(RUNSC_VERSION) TOOLS_BIN=$(TOOLS_BIN) ARCHES='$(ARCHES)' DIST_DIR='$(DIST_DIR)' \
		IMAGE_PUSH='$(IMAGE_PUSH)' scripts/dist.sh

# The Kubernetes tier (docs/operating.md, "Kubernetes"): the Helm chart
# installed with helm into a real kube-apiserver (tools/kube-apiserver, built
# from the Go module proxy) on Debian's etcd, checked object by object (the
# control plane finds the nodes in PostgreSQL, not through the Kubernetes API, so
# the chart has no RBAC to check). No kubelet: pods
# are stored and admitted but never run. The ServiceMonitor CRD is generated
# by controller-gen from the Prometheus operator's API types
# (tools/controller-gen). Builds are kept in bin/tools (the first one costs
# about 10 minutes on this host, see README); `make test` does not run it.
.PHONY: test-k8s k8s-deps
K8S_DEB_PACKAGES := etcd-server
K8S_CRDS := $(TOOLS_BIN)/crds
$(K8S_CRDS)/monitoring.coreos.com_servicemonitors.yaml: $(TOOLS_BIN)/controller-gen tools/controller-gen/go.mod
	rm -rf $(K8S_CRDS)
	cd tools/controller-gen && $(TOOLS_BIN)/controller-gen crd:allowDangerousTypes=true,maxDescLen=0 \
		paths=github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1 output:crd:dir=$(K8S_CRDS)
k8s-deps: $(TOOLS_BIN)/kube-apiserver $(TOOLS_BIN)/helm $(K8S_CRDS)/monitoring.coreos.com_servicemonitors.yaml
	$(call install-debs,$(K8S_DEB_PACKAGES))
test-k8s: build k8s-deps
	ORKESTR_KUBE_APISERVER=$(TOOLS_BIN)/kube-apiserver ORKESTR_RELEASE_TOOLS=$(TOOLS_BIN) ORKESTR_K8S_CRDS=$(K8S_CRDS) ORKESTR_BIN_DIR=$(BIN) \
		$(GO) test -count=1 -timeout 20m -run 'TestAPIServer|TestHelmChartOnKubeAPIServer|TestHelmChartNeedsAllowPrivileged' \
		./internal/testenv/kubeapi/ ./internal/release/

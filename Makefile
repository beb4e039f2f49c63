# orkestr — build, set up and test on a Debian/Ubuntu host (run as root).
#
#   make setup   install Debian packages, build binaries, runsc and the offline templates
#   make run     setup, then run the server on its embedded defaults
#   make test    setup, then every test (real gVisor sandboxes)
#   make bench   the benchmark harness (results in docs/benchmarks.md format)

SHELL        := /bin/bash
GO           ?= go
BIN          := $(CURDIR)/bin
# gVisor is built from the Go module proxy at this pinned version; nothing is
# downloaded from anywhere else. It must be a static (CGO_ENABLED=0) build.
RUNSC_VERSION := v0.0.0-20260905035102-160fafc42237
TEMPLATE_DIR ?= $(or $(ORKESTR_TEMPLATE_DIR),/var/lib/orkestr/templates)
OFFLINE_TEMPLATES := debian-12
DEB_PACKAGES := debootstrap iproute2 runc ca-certificates
TEST_FLAGS   ?= -count=1 -timeout 40m

.PHONY: setup deps build runsc templates run test lint bench clean

setup: deps build runsc templates

deps:
	@missing=""; for p in $(DEB_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

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

test: setup lint
	@if [ "$$(id -u)" != 0 ]; then echo "make test starts real gVisor sandboxes and must run as root"; exit 1; fi
	ORKESTR_TEMPLATE_DIR=$(TEMPLATE_DIR) ORKESTR_RUNSC=$(BIN)/runsc $(GO) test $(TEST_FLAGS) ./...

bench: setup
	ORKESTR_TEMPLATE_DIR=$(TEMPLATE_DIR) ORKESTR_RUNSC=$(BIN)/runsc ./bench/run.sh

clean:
	rm -f $(BIN)/orkestrd $(BIN)/orkestr $(BIN)/orkestr-agent

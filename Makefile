# The two commands: `make demo` (the main job) and `make test` (every test). Both provision
# what they need (tests/env/provision.sh) into $(AUDIT_MANAGER_CACHE), idempotently.
SHELL := /bin/bash
.DEFAULT_GOAL := help

export AUDIT_MANAGER_CACHE ?= $(HOME)/.cache/audit-manager
# CI clones fresh every time: keep its Rust build next to the other cached components so the
# workspace is compiled once per machine, not once per clone.
ifeq ($(CI),true)
export CARGO_TARGET_DIR ?= $(AUDIT_MANAGER_CACHE)/target
endif
CARGO ?= cargo
# Tool versions (KEY=value lines), shared with tests/env/provision.sh.
include tests/env/versions.env
CARGO_DENY := $(AUDIT_MANAGER_CACHE)/cargo-deny-$(CARGO_DENY_VERSION)/bin/cargo-deny
export DEMO_EXIT
# Integration tests start real servers; a few at a time is what two cores sustain.
TEST_THREADS ?= 4

.PHONY: help testenv test lint unit demo manifests fmt bench

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

testenv: ## provision PostgreSQL, Kafka, etcd, kube-apiserver and kubectl (cached)
	tests/env/provision.sh

lint: ## rustfmt, clippy (warnings are errors), cargo-deny's license and ban checks (deny.toml)
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings
	tests/env/provision.sh lint
	$(CARGO_DENY) --frozen check --hide-inclusion-graph licenses bans

unit: ## the tests that need no external component (about a minute once built)
	$(CARGO) test --workspace --locked --lib --bins --test http_contract -- --test-threads=$(TEST_THREADS)

test: testenv lint ## every test, against the real components
	$(CARGO) test --workspace --locked -- --test-threads=$(TEST_THREADS)

demo: testenv ## the whole system on this machine (DEMO_EXIT=1: run every step, then exit)
	$(CARGO) build --locked -p audit-manager -p audit-manager-operator -p audit-testenv \
		--bin audit-manager --bin audit-manager-operator --bin demo
	$${CARGO_TARGET_DIR:-target}/debug/demo

manifests: ## regenerate manifests/crd.yaml and the Helm chart's copies (a test checks they are current)
	$(CARGO) run --locked -q -p audit-manager-crds --bin crdgen manifests/crd.yaml charts/audit-manager-operator/files/crd.yaml
	cp manifests/deletion-protection.yaml charts/audit-manager-operator/files/deletion-protection.yaml
	mkdir -p charts/audit-manager-operator/files/monitoring
	cp manifests/monitoring/prometheusrule.yaml manifests/monitoring/podmonitor-operator.yaml \
		manifests/monitoring/audit-manager-dashboard.json charts/audit-manager-operator/files/monitoring/

fmt: ## format the code
	$(CARGO) fmt --all

bench: testenv ## the benchmark: ingest throughput, latency, memory and drain time (release build)
	$(CARGO) build --release --locked -p audit-manager -p audit-testenv --bin audit-manager --bin bench-ingest --bin bench-sink
	$${CARGO_TARGET_DIR:-target}/release/bench-ingest $(BENCH_INGEST_ARGS)
	$${CARGO_TARGET_DIR:-target}/release/bench-sink $(BENCH_SINK_ARGS)

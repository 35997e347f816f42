# Gatehouse developer entry points. `make` alone lists them.
.DEFAULT_GOAL := help

CARGO ?= cargo

.PHONY: help dev dev-acme test fuzz lint fmt build release pgo bench clean-dev

help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  %-10s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

dev: ## PostgreSQL (.dev/pg) + core API :8000 + gateway https://localhost:8443 + front end https://localhost:3000; DEV_FRESH=1 wipes the data
	scripts/dev.sh

dev-acme: ## Like dev, with the certificate from a local ACME CA (Pebble)
	DEV_ACME=1 scripts/dev.sh

test: ## fmt + clippy + tests (Rust, schemathesis, browser) against a throwaway PostgreSQL (what CI runs)
	scripts/test.sh

fuzz: ## cargo-fuzz targets on nightly, FUZZ_SECONDS (60) each, one after another (not in test)
	scripts/fuzz.sh

lint: ## cargo fmt --check and clippy with -D warnings
	$(CARGO) fmt --all --check && rustfmt --edition 2024 --check fuzz/fuzz_targets/*.rs && $(CARGO) clippy --workspace --all-targets -- -D warnings

fmt: ## Format the workspace and the fuzz targets
	$(CARGO) fmt --all && rustfmt --edition 2024 fuzz/fuzz_targets/*.rs

build: ## Debug build of the workspace
	$(CARGO) build --workspace

release: ## Release build of the workspace
	$(CARGO) build --release --workspace

pgo: ## The gateway's PGO release build (what its image ships, bench/gateway.sh measures): target/pgo/bin/
	scripts/pgo-build.sh

bench: ## Core API vs pgbench (needs cargo build --release -p core-api)
	bench/api.sh

clean-dev: ## Stop the dev PostgreSQL and delete .dev/
	@scripts/pg.sh stop .dev/pg
	rm -rf .dev

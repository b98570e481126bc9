# The two commands a newcomer needs:
#   make run    set up what is missing, build, and run the system (today: the catalog origin)
#   make test   set up what is missing, then run every check CI runs
# Both are idempotent: setup installs only what is absent, cargo builds incrementally.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
CARGO ?= cargo
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
ORIGIN_CONFIG ?= config/origin.yaml
ORIGIN_CONFIGS := config/origin.yaml $(wildcard config/examples/origin-*.yaml)

.PHONY: help setup build run test lint check-configs bench

help:
	@echo "make run    - set up, build (release) and run the origin on https://127.0.0.1:8443"
	@echo "make test   - set up, then fmt check, clippy, config checks and every test"
	@echo "make bench  - side-by-side load benchmarks (release build; minutes)"
	@echo "make setup  - install what is missing: cmake (Debian), the wasm32-wasip1 target"

# Idempotent: each step runs only when its tool is missing, then verifies it.
setup:
	@if ! command -v cmake >/dev/null 2>&1; then \
		echo "setup: installing cmake (Debian package)"; \
		$(SUDO) apt-get update -qq && $(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y -qq cmake >/dev/null; \
	fi
	@command -v cmake >/dev/null || { echo "setup: cmake is still missing" >&2; exit 1; }
	@if ! rustup target list --installed | grep -qx wasm32-wasip1; then \
		echo "setup: adding the wasm32-wasip1 rustup target"; \
		rustup target add wasm32-wasip1; \
	fi
	@rustup target list --installed | grep -qx wasm32-wasip1 || { echo "setup: wasm32-wasip1 is still missing" >&2; exit 1; }
	@rustup component list --installed | grep -q '^clippy' || rustup component add clippy
	@rustup component list --installed | grep -q '^rustfmt' || rustup component add rustfmt

run: setup
	$(CARGO) build --release -p origin-service
	./target/release/origin-service check -c $(ORIGIN_CONFIG)
	./target/release/origin-service run -c $(ORIGIN_CONFIG)

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

check-configs:
	$(CARGO) build -p origin-service --bin origin-service
	@for f in $(ORIGIN_CONFIGS); do ./target/debug/origin-service check -c $$f; done

test: setup lint check-configs
	$(CARGO) test --workspace

bench:
	$(CARGO) run --release -p edge-benches --bin origin-listing

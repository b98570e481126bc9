# The two commands a newcomer needs:
#   make run    set up what is missing, build, and run the system: catalog origin + edge proxy
#   make test   set up what is missing, then run every check CI runs
# Both are idempotent: setup installs only what is absent, cargo builds incrementally.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
CARGO ?= cargo
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
ORIGIN_CONFIG ?= config/origin.yaml
EDGE_CONFIG ?= config/edge.yaml
ORIGIN_CONFIGS := config/origin.yaml $(wildcard config/examples/origin-*.yaml)
EDGE_CONFIGS := config/edge.yaml $(wildcard config/examples/edge-*.yaml)

RUN_CLUSTER_REDIS_PORT := 6390

.PHONY: help setup build run run-cluster test lint check-configs bench bench-peers peers-setup plugins plugin-tests fuzz soak

help:
	@echo "make run    - set up, build (release), run the origin (https://127.0.0.1:8443) and the proxy (http://127.0.0.1:8080)"
	@echo "make run-cluster - as run, with Redis (:6390), a shield (:8090) and three edges (:8081-8083) sharing rate limits and purges"
	@echo "make test   - set up, then fmt check, clippy, config checks and every test"
	@echo "make bench  - side-by-side load benchmarks (release build; minutes)"
	@echo "make bench-peers - edge-proxy against NGINX and Varnish, pinned, HTTP and HTTPS (installs them; ~20 minutes)"
	@echo "make setup  - install what is missing: cmake, nodejs/npm, redis-server (Debian), the wasm32-wasip1 target"
	@echo "make plugins - build every plugin under plugins/ to wasm32-wasip1 (release)"
	@echo "make fuzz   - the property tests (config loader, target normalisation, cache key, ABI maps, guest memory) with 200,000 cases each"
	@echo "make soak   - 10 minutes of the shipped config under a realistic mix with purges and reloads: errors, p99 and RSS per minute"

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
	@if ! command -v npm >/dev/null 2>&1; then \
		echo "setup: installing nodejs and npm (Debian packages; the AssemblyScript plugin)"; \
		$(SUDO) apt-get update -qq && $(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null; \
	fi
	@command -v npm >/dev/null || { echo "setup: npm is still missing" >&2; exit 1; }
	@if ! command -v redis-server >/dev/null 2>&1; then \
		echo "setup: installing redis-server (Debian package; several instances share rate limits and purges through it)"; \
		$(SUDO) apt-get update -qq && $(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; \
	fi
	@command -v redis-server >/dev/null || { echo "setup: redis-server is still missing" >&2; exit 1; }

# Plugins are their own cargo workspace (target wasm32-wasip1); the modules land in
# plugins/target/wasm32-wasip1/release/*.wasm, where the configs point.
# shop-edge links the other plugins' filter steps without their `_initialize`: it is built in
# its own cargo invocation (features unify within one), hence the second line of each pair.
# add-header-as is an AssemblyScript plugin: npm packages from its lock file, its `build` script.
plugins: setup
	$(CARGO) build --release --target wasm32-wasip1 --manifest-path plugins/Cargo.toml
	$(CARGO) build --release --target wasm32-wasip1 --manifest-path plugins/Cargo.toml -p shop-edge
	cd plugins/add-header-as && { [ -d node_modules ] || npm ci --no-audit --no-fund; } && npm run build
	$(CARGO) fmt --manifest-path plugins/Cargo.toml --all -- --check
	$(CARGO) clippy --manifest-path plugins/Cargo.toml --release --target wasm32-wasip1 -- -D warnings
	$(CARGO) clippy --manifest-path plugins/Cargo.toml --release --target wasm32-wasip1 -p shop-edge -- -D warnings

# The origin runs in the background (its state, CA included, is prepared first); the proxy in
# the foreground. Ctrl-C stops the proxy, and the trap stops the origin.
run: setup plugins
	$(CARGO) build --release -p origin-service -p edge-proxy
	./target/release/origin-service check -c $(ORIGIN_CONFIG)
	./target/release/origin-service init -c $(ORIGIN_CONFIG)
	./target/release/edge-proxy check -c $(EDGE_CONFIG)
	./target/release/origin-service run -c $(ORIGIN_CONFIG) & origin=$$!; \
	trap 'kill $$origin 2>/dev/null; wait $$origin 2>/dev/null' EXIT INT TERM; \
	./target/release/edge-proxy run -c $(EDGE_CONFIG)

# Several instances as one (README "Running several instances"): Redis without persistence on
# 127.0.0.1:$(RUN_CLUSTER_REDIS_PORT), the origin, the shield tier (config/examples/edge-shield.yaml) and
# three edges derived from config/examples/edge-cluster.yaml (ports 8081-8083, admin 9181-9183).
# Ctrl-C stops them all.
run-cluster: setup plugins
	$(CARGO) build --release -p origin-service -p edge-proxy
	./target/release/origin-service check -c $(ORIGIN_CONFIG)
	./target/release/origin-service init -c $(ORIGIN_CONFIG)
	mkdir -p .state/cluster
	# .state/cluster/ is as deep as config/examples/: the relative paths stay right.
	for i in 1 2 3; do \
		sed -e "s/127.0.0.1:8081/127.0.0.1:808$$i/" -e "s/127.0.0.1:9181/127.0.0.1:918$$i/" \
			-e "s/edge-1-upgrade/edge-$$i-upgrade/" \
			config/examples/edge-cluster.yaml > .state/cluster/edge-$$i.yaml; \
		./target/release/edge-proxy check -c .state/cluster/edge-$$i.yaml; \
	done
	./target/release/edge-proxy check -c config/examples/edge-shield.yaml
	pids=""; trap 'kill $$pids 2>/dev/null; wait 2>/dev/null' EXIT INT TERM; \
	redis-server --port $(RUN_CLUSTER_REDIS_PORT) --bind 127.0.0.1 --save '' --appendonly no >/dev/null & pids="$$pids $$!"; \
	./target/release/origin-service run -c $(ORIGIN_CONFIG) & pids="$$pids $$!"; \
	./target/release/edge-proxy run -c config/examples/edge-shield.yaml & pids="$$pids $$!"; \
	for i in 1 2 3; do ./target/release/edge-proxy run -c .state/cluster/edge-$$i.yaml & pids="$$pids $$!"; done; \
	wait

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# The edge configs name the CA the origin generates: prepare the origin's state first.
# The binaries come from the test build (`cargo test --no-run` builds them with the features the
# tests unify): a separate `cargo build` would compile pingora and wasmtime a second time.
check-configs:
	$(CARGO) test --workspace --no-run
	@for f in $(ORIGIN_CONFIGS); do ./target/debug/origin-service check -c $$f; done
	./target/debug/origin-service init -c $(ORIGIN_CONFIG)
	@for f in $(EDGE_CONFIGS); do ./target/debug/edge-proxy check -c $$f; done

# The plugins' own logic is unit-tested natively (host target); the proxy's tests drive the .wasm.
plugin-tests: setup
	$(CARGO) clippy --manifest-path plugins/Cargo.toml --all-targets -- -D warnings
	$(CARGO) clippy --manifest-path plugins/Cargo.toml --all-targets -p shop-edge -- -D warnings
	$(CARGO) test --manifest-path plugins/Cargo.toml
	$(CARGO) test --manifest-path plugins/Cargo.toml -p shop-edge

test: setup plugins plugin-tests lint check-configs
	$(CARGO) test --workspace

bench: plugins bench-peers
	$(CARGO) run --release -p edge-benches --bin origin-listing -- --seconds 10
	$(CARGO) run --release -p edge-benches --bin proxy-transport
	$(CARGO) run --release -p edge-benches --bin cache-hit
	$(CARGO) run --release -p edge-benches --bin plugin-overhead
	$(CARGO) run --release -p edge-benches --bin plugin-overhead -- --fetch
	$(CARGO) run --release -p edge-benches --bin cluster-limit
	$(CARGO) bench -p edge-benches --bench plugin_callback

# The peers NGINX and Varnish from Debian packages, when missing (the harness's configs are in
# benches/peers/; it starts them itself, so the packages' own services are not used).
peers-setup:
	@if ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ]; then \
		echo "peers-setup: installing nginx-light (Debian package)"; \
		$(SUDO) apt-get update -qq && $(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light >/dev/null; \
	fi
	@if ! command -v varnishd >/dev/null 2>&1 && [ ! -x /usr/sbin/varnishd ]; then \
		echo "peers-setup: installing varnish (Debian package)"; \
		$(SUDO) apt-get update -qq && $(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y -qq varnish >/dev/null; \
	fi
	@command -v taskset >/dev/null || { echo "peers-setup: taskset (util-linux) is missing" >&2; exit 1; }

# Each server pinned to core 1, the load client and the origin to core 0; report and chart in
# target/bench-report/ (peers.md, peers.svg). PEERS_ARGS passes options, e.g. --rounds 11.
PEERS_ARGS ?=
bench-peers: plugins peers-setup
	$(CARGO) build --release -p edge-proxy -p edge-benches --bin edge-proxy --bin bench-peers
	./target/release/bench-peers $(PEERS_ARGS)

# Not part of `bench` (about 2 minutes, ~400 MiB): 1,000,000 distinct keys through the proxy.
bench-cache-memory:
	$(CARGO) run --release -p edge-benches --bin cache-memory

# The property tests run 256 cases each in `make test`; here many more (minutes). A failure is
# saved under proxy/proptest-regressions/ and replayed by every later run: commit it with the fix.
FUZZ_CASES ?= 200000
fuzz:
	PROPTEST_CASES=$(FUZZ_CASES) $(CARGO) test -p edge-proxy --lib properties

# The release proxy binary under the shipped config for SOAK_MINUTES (default 10).
SOAK_MINUTES ?= 10
soak: plugins
	$(CARGO) build --release -p edge-proxy -p edge-benches --bin edge-proxy --bin soak
	./target/release/soak --minutes $(SOAK_MINUTES)

# Keel: two commands matter.
#   make qemu-cluster   bring up a three-node lab and print how to use kubectl on it
#   make test           run every test (unit, API with the real kubectl, end to end on QEMU nodes)
# Everything else here is a step of those two, or a benchmark (make bench-*).

SHELL := /bin/bash
CARGO ?= cargo
OUT := out
MUSL := x86_64-unknown-linux-musl
NODE_BIN := target/$(MUSL)/node/keel-node
export KEEL_OUT := $(abspath $(OUT))

.PHONY: all deps build node-bin image iso qemu-cluster qemu-cluster-down qemu-cluster-status \
        test test-unit test-e2e fmt lint bench-scheduler bench-store bench-api bench-control bench-boot bench-lab bench-pods bench-net clean

all: build

deps:
	@scripts/ensure-deps.sh

# Host binaries: keel-server, keel-lab.
build: deps
	@echo "==> building host binaries (keel-server, keel-lab)"
	$(CARGO) build --release -p keel-server -p keel-lab

# The node binary, static (musl).
node-bin: deps
	@echo "==> building the node binary (static, musl)"
	$(CARGO) build --profile node --target $(MUSL) -p keel-node

# Kernel, modules, initramfs: out/vmlinux, out/vmlinuz, out/initramfs.
image: node-bin
	@boot/build-image.sh $(NODE_BIN) $(OUT)

# Hybrid BIOS+UEFI ISO: out/keel-node.iso.
iso: image
	@boot/build-iso.sh $(OUT)

qemu-cluster: build image
	@qemu/lab.sh up

qemu-cluster-down:
	@qemu/lab.sh down

qemu-cluster-status:
	@qemu/lab.sh status

test: deps
	@echo "==> building test binaries"
	$(CARGO) build -p keel-server -p keel-lab
	$(MAKE) --no-print-directory iso
	@echo "==> running all tests"
	$(CARGO) test --workspace --no-fail-fast

fmt:
	$(CARGO) fmt --all

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# Scheduler throughput with 1,000 nodes on the in-process API (KEEL_BENCH_NODES, KEEL_BENCH_PODS):
# the two benchmarks are ignored tests, run only here.
bench-scheduler: deps
	$(CARGO) test --release -p keel-scheduler --test scheduling -- --ignored --nocapture --test-threads=1

bench-store: deps
	$(CARGO) run --release -p keel-store --bin store-bench

bench-api: deps
	$(CARGO) build --release -p keel-server
	$(CARGO) run --release -p keel-bench --bin bench-api

# The scheduler and controllers with 1,000 hollow nodes (keel-node hollow) against a release
# keel-server: bind rate, a 10,000-replica Deployment, RSS with 30,000 pods (a few minutes).
bench-control: deps
	$(CARGO) build --release -p keel-server -p keel-node
	$(CARGO) run --release -p keel-bench --bin bench-control

# Pods on a node (issue 5's figures): container create+start side by side with Debian's runc and
# crun on one bundle (host, root; in a private mount namespace with cgroup2 on /sys/fs/cgroup so
# that crun also runs on cgroup-hybrid hosts), then 100 pods on one QEMU node: bind → Running
# p50/p99, the agent's RSS, a cold pull.
bench-pods: build image
	unshare -m sh -c 'mount --make-rprivate / && { mount -t cgroup2 none /sys/fs/cgroup 2>/dev/null || true; } && \
	  exec $(CARGO) test --release -p keel-e2e --test bench_pods -- --ignored --nocapture --test-threads=1'

# The cluster network's figures (issue 7): 1,000 Services x 10 endpoints programmed into a
# network namespace (root), then on a two-node lab: pod-to-pod vs node-to-node throughput and
# latency, DNS from a pod, an endpoint change on every node after the pod turns ready.
bench-net: build image
	$(CARGO) test --release -p keel-node --bin keel-node bench_programs_1000_services -- --ignored --nocapture
	$(CARGO) test -p keel-e2e --test net_bench -- --ignored --nocapture --test-threads=1

clean:
	rm -rf $(OUT) target

# The lab's figures: `make qemu-cluster` to three Ready nodes (target <= 30 s with nothing to
# build) and the whole lab's resident memory (target <= 2 GiB); the lab is stopped afterwards.
bench-lab: build image
	@qemu/lab.sh bench

# Boot figures of the node image (QEMU TCG): QEMU start → init, → modules, → network up; ISO
# and init binary sizes.
bench-boot: iso
	@boot/bench-boot.sh $(OUT) $(NODE_BIN)

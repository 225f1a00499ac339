#!/usr/bin/env bash
# qemu/lab.sh up|down|status|bench — what `make qemu-cluster`, `make qemu-cluster-down`,
# `make qemu-cluster-status` and `make bench-lab` run.
#
# The work is done by `keel-lab up|down|status` (qemu/src/lab.rs); this script only finds the
# binaries and the lab directory, so the Makefile stays short.
#
# Environment:
#   KEEL_LAB=<name>     lab name; its directory is $KEEL_OUT/<name> (default: lab → out/lab).
#                       Two labs with different names run side by side (ports are picked free).
#   KEEL_OUT            output directory (default: <repo>/out; the Makefile sets it)
#   KEEL_KVM=1          use KVM instead of TCG
#   KEEL_NODES=N        number of nodes (default 3)
#   KEEL_NODE_MEMORY    guest memory in MiB (default 512)
#   KEEL_KERNEL_ARGS    extra kernel arguments for every node
#   KEEL_NODE_GRACE     keel-server --node-grace-period (e.g. 20s)
#   KEEL_LAB_TIMEOUT    seconds to wait for Ready nodes (default 300)
#   KEEL_LAB_BIN, KEEL_SERVER_BIN   binaries (default: target/release/…)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=${KEEL_OUT:-$ROOT/out}
LAB=${KEEL_LAB:-lab}
DIR=$OUT/$LAB
export KEEL_LAB_BIN=${KEEL_LAB_BIN:-$ROOT/target/release/keel-lab}
export KEEL_SERVER_BIN=${KEEL_SERVER_BIN:-$ROOT/target/release/keel-server}

need_lab_bin() {
  if [ ! -x "$KEEL_LAB_BIN" ]; then
    echo "keel-lab is not built ($KEEL_LAB_BIN); run: make build" >&2
    exit 1
  fi
}

# Without the keel-lab binary, `down` still stops what the pid files name (process groups).
down_without_binary() {
  local f pid start now
  for f in "$DIR"/pids/*.pid; do
    [ -e "$f" ] || continue
    read -r pid start < "$f" || continue
    now=$(awk '{sub(/.*\) /, ""); print $20}' "/proc/$pid/stat" 2>/dev/null || true)
    if [ -n "$now" ] && [ "$now" = "$start" ]; then
      echo "stopping $(basename "$f" .pid) (pid $pid)"
      kill -TERM -- "-$pid" 2>/dev/null || true
    fi
    rm -f "$f"
  done
}

cmd=${1:-}
case "$cmd" in
  up)
    need_lab_bin
    args=(up --dir "$DIR" --name "$LAB" --nodes "${KEEL_NODES:-3}"
          --kernel "$OUT/vmlinux" --initrd "$OUT/initramfs" --timeout "${KEEL_LAB_TIMEOUT:-300}")
    if [ -n "${KEEL_NODE_GRACE:-}" ]; then args+=(--node-grace-period "$KEEL_NODE_GRACE"); fi
    exec "$KEEL_LAB_BIN" "${args[@]}"
    ;;
  down)
    if [ -x "$KEEL_LAB_BIN" ]; then
      exec "$KEEL_LAB_BIN" down --dir "$DIR"
    fi
    down_without_binary
    ;;
  status)
    need_lab_bin
    exec "$KEEL_LAB_BIN" status --dir "$DIR"
    ;;
  bench)
    # Time `make qemu-cluster` from the outside (nothing to build: bench-lab built it first),
    # report the lab's memory, then stop it.
    need_lab_bin
    export KEEL_LAB=${KEEL_LAB_BENCH:-bench}
    DIR=$OUT/$KEEL_LAB
    "$KEEL_LAB_BIN" down --dir "$DIR" >/dev/null 2>&1 || true
    start=$(date +%s.%N)
    status=0
    make -s -C "$ROOT" qemu-cluster 2>&1 | tee "$OUT/bench-lab.log" || status=$?
    end=$(date +%s.%N)
    echo
    echo "==> bench-lab"
    awk -v s="$start" -v e="$end" 'BEGIN { printf "make qemu-cluster to nodes Ready: %.1f s (target <= 30 s; includes any rebuild make did)\n", e - s }'
    grep -E '^==> [0-9]+ nodes Ready' "$OUT/bench-lab.log" | sed 's/^==> /lab start to /' || true
    grep -E '^    [a-zA-Z ]+ +[0-9.]+s$' "$OUT/bench-lab.log" || true
    "$KEEL_LAB_BIN" status --dir "$DIR" | grep -E 'rss|total' || true
    "$KEEL_LAB_BIN" down --dir "$DIR"
    exit "$status"
    ;;
  *)
    echo "usage: $0 up|down|status|bench" >&2
    exit 2
    ;;
esac

#!/usr/bin/env bash
# `make bench-boot`: boot figures of the node image under QEMU TCG (the PVH vmlinux, one vCPU,
# 512 MB, virtio-net on slirp, virtio-rng), measured on the host from QEMU's start to the
# console lines PID 1 prints; plus the guest's own clock for the same phases, the ISO size and
# the init binary size. Runs RUNS boots (default 3) and prints each and the best.
#
# Usage: boot/bench-boot.sh OUT_DIR NODE_BINARY
set -euo pipefail
OUT=${1:?usage: $0 OUT_DIR NODE_BINARY}
NODE_BIN=${2:?usage: $0 OUT_DIR NODE_BINARY}
RUNS=${RUNS:-3}
for f in vmlinux initramfs; do
  [ -f "$OUT/$f" ] || { echo "bench-boot: $OUT/$f missing: run make image" >&2; exit 1; }
done

one_boot() {
  local t0 line now init="" drivers="" net="" mods="" agent="" g_init="" g_net="" g_mods=""
  t0=$EPOCHREALTIME
  while IFS= read -r line; do
    line=${line%$'\r'}
    now=$(awk -v a="$EPOCHREALTIME" -v b="$t0" 'BEGIN {printf "%.2f", a - b}')
    guest=$(sed -n 's/^.*\[ *\([0-9.]*\)\] keel:.*/\1/p' <<<"$line")
    case $line in
      *"keel: init started"*) init=$now; g_init=$guest ;;
      *"keel: network drivers loaded"*) drivers=$now ;;
      *"keel: network up"*) net=$now; g_net=$guest ;;
      *"keel: modules loaded"*) mods=$now; g_mods=$guest ;;
      *"keel: agent started"*) agent=$now ;;
    esac
  done < <(timeout 120 qemu-system-x86_64 -accel tcg,tb-size=64 -m 512 -smp 1 -nographic -no-reboot \
             -device virtio-rng-pci -netdev user,id=u0,restrict=on -device virtio-net-pci,netdev=u0 \
             -kernel "$OUT/vmlinux" -initrd "$OUT/initramfs" \
             -append "console=ttyS0 panic=-1 quiet keel.selftest=poweroff" 2>&1)
  local end
  end=$(awk -v a="$EPOCHREALTIME" -v b="$t0" 'BEGIN {printf "%.2f", a - b}')
  printf '  QEMU start → init %ss (guest %ss), → drivers %ss, → network up %ss (guest %ss), → modules %ss (guest %ss), → agent %ss, → powered off %ss\n' \
    "${init:-?}" "${g_init:-?}" "${drivers:-?}" "${net:-?}" "${g_net:-?}" "${mods:-?}" "${g_mods:-?}" "${agent:-?}" "$end"
  echo "$net" >> "$TMPF"
}

TMPF=$(mktemp)
trap 'rm -f "$TMPF"' EXIT
echo "==> boot figures (QEMU TCG, PVH vmlinux, $RUNS runs)"
for _ in $(seq "$RUNS"); do one_boot; done
best=$(sort -n "$TMPF" | head -n1)
echo "  best QEMU start → network up: ${best}s"
# QEMU start → Node Ready in kubectl, against a real keel-server: one node alone, then three
# booted together. The nodes reach the node gate only through guestfwd and the lab's relay.
ready_figures() {
  local root bin server lab tmp api gate token pin
  root=$(cd "$(dirname "$0")/.." && pwd)
  for p in release debug; do
    [ -x "$root/target/$p/keel-server" ] && server=$root/target/$p/keel-server
    [ -x "$root/target/$p/keel-lab" ] && lab=$root/target/$p/keel-lab
  done
  if [ -z "${server:-}" ] || [ -z "${lab:-}" ]; then
    echo "  (keel-server or keel-lab not built: cargo build -p keel-server -p keel-lab)"; return
  fi
  tmp=$(mktemp -d)
  api=$((20000 + RANDOM % 20000)); gate=$((api + 1))
  "$server" --data-dir "$tmp/data" --listen 127.0.0.1:$api --node-listen 127.0.0.1:$gate --san 10.0.2.100 \
    >"$tmp/server.log" 2>&1 &
  local spid=$!
  for _ in $(seq 300); do
    [ -f "$tmp/data/admin.kubeconfig" ] && (exec 3<>"/dev/tcp/127.0.0.1/$api") 2>/dev/null && break
    sleep 0.1
  done
  token=$("$server" --data-dir "$tmp/data" token create --server 127.0.0.1:$api)
  pin=$("$server" --data-dir "$tmp/data" ca-hash)
  local kc="kubectl --kubeconfig $tmp/data/admin.kubeconfig"
  export HOME=$tmp/home
  boot_nodes() { # N
    local pids=() t0 n
    t0=$EPOCHREALTIME
    for n in $(seq "$1"); do
      qemu-system-x86_64 -accel tcg,tb-size=64 -m 512 -smp 1 -display none -no-reboot \
        -serial "file:$tmp/console-$1-$n.log" -device virtio-rng-pci \
        -netdev "user,id=u0,restrict=on,guestfwd=tcp:10.0.2.100:9443-cmd:$lab relay 127.0.0.1 $gate" \
        -device virtio-net-pci,netdev=u0,mac=52:54:00:00:0$1:0$n \
        -kernel "$OUT/vmlinux" -initrd "$OUT/initramfs" \
        -append "console=ttyS0 panic=-1 quiet keel.server=https://10.0.2.100:9443 keel.token=$token keel.ca-hash=$pin keel.name=b$1-$n" 2>/dev/null &
      pids+=($!)
    done
    local want=$1 ready=0
    for _ in $(seq 600); do
      ready=$($kc get nodes --no-headers 2>/dev/null | awk -v p="b$1-" 'index($1,p)==1 && $2=="Ready"' | wc -l)
      [ "$ready" -ge "$want" ] && break
      sleep 0.1
    done
    local took
    took=$(awk -v a="$EPOCHREALTIME" -v b="$t0" 'BEGIN {printf "%.2f", a - b}')
    if [ "$ready" -ge "$want" ]; then echo "  $1 node(s): QEMU start → all Ready ${took}s"; else echo "  $1 node(s): not all Ready after ${took}s"; fi
    kill "${pids[@]}" 2>/dev/null; wait "${pids[@]}" 2>/dev/null || true
  }
  echo "==> QEMU start → Node Ready (targets: 1 node <= 6 s, 3 nodes <= 12 s)"
  boot_nodes 1
  boot_nodes 3
  kill $spid 2>/dev/null; wait $spid 2>/dev/null || true
  rm -rf "$tmp"
}
ready_figures

echo "==> sizes"
[ -f "$OUT/keel-node.iso" ] && echo "  ISO        $(stat -c %s "$OUT/keel-node.iso") bytes ($(( $(stat -c %s "$OUT/keel-node.iso") / 1048576 )) MiB; target <= 25 MiB)" \
  || echo "  ISO        (not built: make iso)"
echo "  initramfs  $(stat -c %s "$OUT/initramfs") bytes"
echo "  init       $(stat -c %s "$NODE_BIN") bytes ($NODE_BIN)"
[ -f "$OUT/kernel-version" ] && echo "  kernel     $(cat "$OUT/kernel-version")"

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
echo "==> sizes"
[ -f "$OUT/keel-node.iso" ] && echo "  ISO        $(stat -c %s "$OUT/keel-node.iso") bytes ($(( $(stat -c %s "$OUT/keel-node.iso") / 1048576 )) MiB; target <= 25 MiB)" \
  || echo "  ISO        (not built: make iso)"
echo "  initramfs  $(stat -c %s "$OUT/initramfs") bytes"
echo "  init       $(stat -c %s "$NODE_BIN") bytes ($NODE_BIN)"
[ -f "$OUT/kernel-version" ] && echo "  kernel     $(cat "$OUT/kernel-version")"

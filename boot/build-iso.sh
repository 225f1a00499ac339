#!/usr/bin/env bash
# Builds OUT/keel-node.iso, a hybrid BIOS+UEFI ISO (grub-mkrescue), from OUT/vmlinuz and
# OUT/initramfs (made by boot/build-image.sh).
#
# Layout inside the ISO:
#   /boot/vmlinuz       the kernel
#   /boot/initramfs     the node image (zstd cpio)
#   /boot/config.cpio   a 64 KiB slot for the node's configuration archive; in the base ISO it
#                       holds only an empty marker file `keel-config-slot` and zeros.
#                       `keel-server node-iso` overwrites the slot in place with a cpio holding
#                       etc/keel/node.conf (see boot/README.md); GRUB hands both archives to
#                       the kernel, which unpacks them into one root.
#   /boot/grub/grub.cfg serial (ttyS0, 115200) + VGA; the LAST console= (ttyS0) is /dev/console,
#                       and PID 1 mirrors its lines to tty0 as well.
#
# Usage: boot/build-iso.sh OUT_DIR. Skipped when the ISO is newer than its inputs.
set -euo pipefail

die() { echo "build-iso: $*" >&2; exit 1; }
[ $# -eq 1 ] || die "usage: $0 OUT_DIR"
OUT=$(cd "$1" && pwd)
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
for f in vmlinuz initramfs; do
  [ -f "$OUT/$f" ] || die "$OUT/$f missing: run make image first"
done
exec 9>"$OUT/.build.lock"
flock 9
ISO=$OUT/keel-node.iso
if [ -f "$ISO" ] && [ "$ISO" -nt "$OUT/vmlinuz" ] && [ "$ISO" -nt "$OUT/initramfs" ] && [ "$ISO" -nt "$HERE/build-iso.sh" ]; then
  echo "==> $ISO up to date ($(stat -c %s "$ISO") bytes)"
  exit 0
fi
VERSION=$(awk -F'"' '/^\[workspace.package\]/ {s=1} s && /^version/ {print $2; exit}' "$ROOT/Cargo.toml")

STAGE=$OUT/iso-root
rm -rf "$STAGE"
mkdir -p "$STAGE/boot/grub"
cp "$OUT/vmlinuz" "$STAGE/boot/vmlinuz"
cp "$OUT/initramfs" "$STAGE/boot/initramfs"
# The config slot: a newc archive with the empty marker file, padded with zeros to 64 KiB (the
# kernel skips zero padding between archives).
mkdir -p "$OUT/slot" && : > "$OUT/slot/keel-config-slot"
(cd "$OUT/slot" && echo keel-config-slot | cpio -o -H newc --quiet --reproducible -R 0:0) > "$STAGE/boot/config.cpio"
truncate -s 65536 "$STAGE/boot/config.cpio"
cat > "$STAGE/boot/grub/grub.cfg" <<CFG
serial --unit=0 --speed=115200
terminal_input serial console
terminal_output serial console
set timeout=1
set default=0
menuentry "Keel $VERSION" {
  linux /boot/vmlinuz console=tty0 console=ttyS0,115200 panic=-1 quiet
  initrd /boot/initramfs /boot/config.cpio
}
menuentry "Keel $VERSION (kernel messages)" {
  linux /boot/vmlinuz console=tty0 console=ttyS0,115200 panic=-1 keel.debug
  initrd /boot/initramfs /boot/config.cpio
}
CFG

echo "==> building $ISO"
grub-mkrescue -o "$ISO.tmp" --compress=xz --fonts= --locales= --themes= \
  --install-modules="linux normal iso9660 serial terminal part_msdos part_gpt search search_fs_file configfile echo all_video gzio" \
  "$STAGE" -- -volid "KEEL_${VERSION//./_}" >/dev/null 2>"$OUT/grub-mkrescue.log" \
  || { cat "$OUT/grub-mkrescue.log" >&2; die "grub-mkrescue failed"; }
mv -f "$ISO.tmp" "$ISO"
echo "   $(stat -c %s "$ISO") bytes"

#!/usr/bin/env bash
# Builds the node image from the static node binary and Debian's current kernel:
#
#   OUT/vmlinuz          the Debian kernel (bzImage), for GRUB and real machines
#   OUT/vmlinux          the same kernel uncompressed (PVH ELF): QEMU boots it ~3 s faster under TCG
#   OUT/initramfs        cpio+zstd: /init (the node binary), /sbin/modprobe -> /init, the module
#                        closure with modules.{dep,alias,softdep,builtin}, CA bundle, /etc/os-release
#   OUT/kernel-version   the kernel release and Debian package version used
#
# Usage: boot/build-image.sh NODE_BINARY OUT_DIR
# The kernel package is resolved with apt (the package `linux-image-amd64` depends on) and cached
# under $KEEL_CACHE (default ~/.cache/keel). Every step is skipped when its output is newer than
# its inputs, so a rebuild with an unchanged kernel only repacks the initramfs when /init changed.
set -euo pipefail

die() { echo "build-image: $*" >&2; exit 1; }
say() { echo "==> $*"; }
# newer OUT IN...: true when OUT exists and is newer than every IN.
newer() { local out=$1; shift; [ -e "$out" ] || return 1; local f; for f in "$@"; do [ "$out" -nt "$f" ] || return 1; done; }

[ $# -eq 2 ] || die "usage: $0 NODE_BINARY OUT_DIR"
NODE_BIN=$1
OUT=$2
[ -f "$NODE_BIN" ] || die "node binary $NODE_BIN not found (build it with: make node-bin)"
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
CACHE=${KEEL_CACHE:-$HOME/.cache/keel}
mkdir -p "$OUT" "$CACHE"
OUT=$(cd "$OUT" && pwd)
# Several engineers (and test runs) may build at once: one build of OUT at a time.
exec 9>"$OUT/.build.lock"
flock 9

# ---------------------------------------------------------------------------------------------
# 1. The kernel package: resolve the metapackage's dependency, download once, extract once.
META=linux-image-amd64
PKG=$(apt-cache depends "$META" 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
if [ -z "$PKG" ]; then
  say "apt knows no $META yet; running apt-get update"
  apt-get update -qq || die "apt-get update failed"
  PKG=$(apt-cache depends "$META" | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
fi
[ -n "$PKG" ] || die "cannot resolve the package $META depends on"
PKGVER=$(apt-cache policy "$PKG" | awk '/Candidate:/ {print $2}')
KREL=${PKG#linux-image-}
DEB=$(ls "$CACHE"/"${PKG}"_*.deb 2>/dev/null | grep -F "_$(echo "$PKGVER" | sed 's/:/%3a/')_" | head -n1 || true)
if [ -z "$DEB" ]; then
  say "downloading $PKG $PKGVER"
  (cd "$CACHE" && apt-get download "$PKG" >/dev/null) || {
    apt-get update -qq && (cd "$CACHE" && apt-get download "$PKG" >/dev/null)
  } || die "apt-get download $PKG failed"
  DEB=$(ls -t "$CACHE"/"${PKG}"_*.deb | head -n1)
fi
KDIR=$CACHE/$KREL
if ! newer "$KDIR/.extracted" "$DEB"; then
  say "extracting $(basename "$DEB")"
  rm -rf "$KDIR"; mkdir -p "$KDIR"
  dpkg-deb -x "$DEB" "$KDIR"
  touch "$KDIR/.extracted"
fi
VMLINUZ=$KDIR/boot/vmlinuz-$KREL
MODSRC=$KDIR/lib/modules/$KREL
[ -f "$VMLINUZ" ] && [ -d "$MODSRC" ] || die "unexpected layout in $DEB"
grep -q '^CONFIG_RD_ZSTD=y' "$KDIR/boot/config-$KREL" || die "kernel $KREL lacks CONFIG_RD_ZSTD"
grep -q '^CONFIG_PVH=y' "$KDIR/boot/config-$KREL" || die "kernel $KREL lacks CONFIG_PVH"

# The full module tree gets a modules.dep once (the package ships none), to compute closures.
FULL=$CACHE/$KREL-depmod
if ! newer "$FULL/lib/modules/$KREL/modules.dep" "$KDIR/.extracted"; then
  say "depmod over the full module tree of $KREL"
  rm -rf "$FULL"; mkdir -p "$FULL/lib/modules"
  cp -rs "$MODSRC" "$FULL/lib/modules/"
  depmod -b "$FULL" "$KREL"
fi

cmp -s "$VMLINUZ" "$OUT/vmlinuz" 2>/dev/null || { cp -f "$VMLINUZ" "$OUT/vmlinuz.tmp" && mv -f "$OUT/vmlinuz.tmp" "$OUT/vmlinuz"; }
printf '%s %s\n' "$KREL" "$PKGVER" > "$OUT/kernel-version.tmp"
cmp -s "$OUT/kernel-version.tmp" "$OUT/kernel-version" 2>/dev/null && rm -f "$OUT/kernel-version.tmp" \
  || mv -f "$OUT/kernel-version.tmp" "$OUT/kernel-version"

# ---------------------------------------------------------------------------------------------
# 2. vmlinux: the ELF inside the XZ-compressed bzImage (PVH entry point, no decompression in TCG).
if ! newer "$OUT/vmlinux" "$VMLINUZ"; then
  say "extracting vmlinux (PVH ELF)"
  ok=""
  for off in $(LC_ALL=C grep -obUaP '\xfd7zXZ\x00' "$VMLINUZ" | cut -d: -f1); do
    # xz stops at the end of its stream; tail then dies of SIGPIPE, which is fine.
    { tail -c +$((off + 1)) "$VMLINUZ" || true; } | xz -dc --single-stream > "$OUT/vmlinux.tmp" 2>/dev/null || continue
    if [ "$(head -c4 "$OUT/vmlinux.tmp" | od -An -c | tr -d ' ')" = '177ELF' ]; then ok=1; break; fi
  done
  [ -n "$ok" ] || die "no XZ-compressed ELF found in $VMLINUZ"
  mv -f "$OUT/vmlinux.tmp" "$OUT/vmlinux"
fi

# ---------------------------------------------------------------------------------------------
# 3. The module closure. MODULES lists what the node uses (NIC/disk drivers, container and
#    network datapath); dependencies and softdeps come from modules.dep / modules.softdep.
MODULES_FILE=$HERE/modules.txt
DRIVERS_FILE=$HERE/drivers.txt
STAGE=$OUT/staging
MODSTAGE=$STAGE/lib/modules/$KREL
if ! newer "$MODSTAGE/modules.dep" "$MODULES_FILE" "$DRIVERS_FILE" "$FULL/lib/modules/$KREL/modules.dep" "$HERE/build-image.sh"; then
  say "module closure for $KREL"
  rm -rf "$STAGE/lib/modules"; mkdir -p "$MODSTAGE"
  depfile=$FULL/lib/modules/$KREL/modules.dep
  softfile=$FULL/lib/modules/$KREL/modules.softdep
  # name -> path (names normalised: '-' -> '_')
  declare -A PATH_OF=()
  while IFS=: read -r path _; do
    n=$(basename "$path" .ko); n=${n//-/_}; PATH_OF[$n]=$path
  done < "$depfile"
  declare -A DEPS_OF=()
  while IFS=: read -r path deps; do DEPS_OF[$path]=$deps; done < "$depfile"
  declare -A SOFT_OF=()
  while read -r kw name rest; do
    [ "$kw" = softdep ] || continue
    SOFT_OF[${name//-/_}]=$(echo "$rest" | tr ' ' '\n' | grep -v -e '^pre:$' -e '^post:$' | tr '\n' ' ')
  done < "$softfile"
  declare -A WANT=()
  add() {
    local n=${1//-/_} p d s
    p=${PATH_OF[$n]:-}
    [ -n "$p" ] || { echo "   (no module $n in $KREL; built in or absent)"; return 0; }
    [ -z "${WANT[$p]:-}" ] || return 0
    WANT[$p]=1
    for d in ${DEPS_OF[$p]}; do d=$(basename "$d" .ko); add "$d"; done
    for s in ${SOFT_OF[$n]:-}; do add "$s"; done
  }
  # shellcheck disable=SC2013
  for m in $(sed 's/#.*//' "$MODULES_FILE" "$DRIVERS_FILE"); do add "$m"; done
  for p in "${!WANT[@]}"; do
    mkdir -p "$MODSTAGE/$(dirname "$p")"
    cp "$MODSRC/$p" "$MODSTAGE/$p"
  done
  for f in modules.builtin modules.builtin.modinfo modules.order; do
    [ -f "$MODSRC/$f" ] && cp "$MODSRC/$f" "$MODSTAGE/$f"
  done
  depmod -b "$STAGE" "$KREL"
  # Keep only what the loader reads.
  (cd "$MODSTAGE" && rm -f modules.*.bin modules.devname modules.symbols modules.builtin.modinfo modules.order)
  echo "   $(find "$MODSTAGE" -name '*.ko' | wc -l) modules, $(du -sh "$MODSTAGE" | cut -f1)"
fi

# ---------------------------------------------------------------------------------------------
# 4. The rest of the root filesystem and the cpio.
VERSION=$(awk -F'"' '/^\[workspace.package\]/ {s=1} s && /^version/ {print $2; exit}' "$ROOT/Cargo.toml")
CA=/etc/ssl/certs/ca-certificates.crt
[ -f "$CA" ] || die "$CA missing (apt-get install ca-certificates)"
mkdir -p "$STAGE"/{etc/ssl/certs,etc/keel,sbin,proc,sys,dev,run,tmp,var,root}
# put DEST: stdin becomes DEST only if it differs (unchanged files keep their mtime, so an
# unchanged image is not repacked).
put() { local tmp; tmp=$(mktemp); cat > "$tmp"; if cmp -s "$tmp" "$1"; then rm -f "$tmp"; else mv -f "$tmp" "$1"; chmod 0644 "$1"; fi; }
# link TARGET NAME: a symlink, replaced only if it points elsewhere.
link() { [ "$(readlink "$2" 2>/dev/null)" = "$1" ] || ln -sfn "$1" "$2"; }
put "$STAGE/etc/ssl/certs/ca-certificates.crt" < "$CA"
put "$STAGE/etc/os-release" <<OSR
NAME="Keel"
ID=keel
VERSION_ID=$VERSION
PRETTY_NAME="Keel $VERSION"
OSR
sed 's/#.*//; /^[[:space:]]*$/d' "$MODULES_FILE" | put "$STAGE/etc/keel/modules"
link /run/resolv.conf "$STAGE/etc/resolv.conf"
link /run/hosts "$STAGE/etc/hosts"
link /run/hostname "$STAGE/etc/hostname"
link /proc/self/mounts "$STAGE/etc/mtab"
printf 'root:x:0:0:root:/root:/init\n' | put "$STAGE/etc/passwd"
printf 'root:x:0:\n' | put "$STAGE/etc/group"
cmp -s "$NODE_BIN" "$STAGE/init" 2>/dev/null || install -m 0755 "$NODE_BIN" "$STAGE/init"
link ../init "$STAGE/sbin/modprobe"

if [ -z "$(find "$STAGE" -newer "$OUT/initramfs" -print -quit 2>/dev/null)" ] && [ -e "$OUT/initramfs" ] \
   && [ "$OUT/initramfs" -nt "$NODE_BIN" ]; then
  say "initramfs up to date"
else
  say "packing initramfs"
  (cd "$STAGE" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc --reproducible -R 0:0 --quiet) \
    | zstd -q -19 -T0 -f -o "$OUT/initramfs.tmp"
  mv -f "$OUT/initramfs.tmp" "$OUT/initramfs"
fi
echo "   kernel $KREL ($PKGVER); init $(stat -c %s "$STAGE/init") bytes; initramfs $(stat -c %s "$OUT/initramfs") bytes"

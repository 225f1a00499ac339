#!/usr/bin/env bash
# Installs what building and testing Keel needs on a Debian/Ubuntu machine, and says what it does.
# Idempotent and quiet when everything is already there. Needs root or sudo for apt.
set -euo pipefail

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

# Debian packages, by the command or file that proves each is present.
declare -A WANT=(
  [qemu-system-x86_64]=qemu-system-x86
  [grub-mkrescue]=grub-common
  [/usr/lib/grub/i386-pc/eltorito.img]=grub-pc-bin
  [/usr/lib/grub/x86_64-efi/linux.mod]=grub-efi-amd64-bin
  [xorriso]=xorriso
  [mformat]=mtools
  [/usr/share/OVMF/OVMF_CODE_4M.fd]=ovmf
  [depmod]=kmod
  [/bin/busybox]=busybox-static
  [protoc]=protobuf-compiler
  [musl-gcc]=musl-tools
  [docker-registry]=docker-registry
  [skopeo]=skopeo
  [umoci]=umoci
  [etcd]=etcd-server
  [cpio]=cpio
  [zstd]=zstd
  [tmux]=tmux
  [ip]=iproute2
  [runc]=runc
  [crun]=crun
)
missing=()
for probe in "${!WANT[@]}"; do
  if [[ $probe == /* ]]; then [ -e "$probe" ] || missing+=("${WANT[$probe]}")
  else command -v "$probe" >/dev/null 2>&1 || missing+=("${WANT[$probe]}"); fi
done
if [ ${#missing[@]} -gt 0 ]; then
  mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
  echo "==> installing Debian packages: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! rustup target list --installed 2>/dev/null | grep -q x86_64-unknown-linux-musl; then
  echo "==> adding the Rust target x86_64-unknown-linux-musl"
  rustup target add x86_64-unknown-linux-musl
fi

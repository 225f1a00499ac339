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
  [/usr/lib/grub/i386-pc/cdboot.img]=grub-pc-bin
  [/usr/lib/grub/x86_64-efi/linux.mod]=grub-efi-amd64-bin
  [xorriso]=xorriso
  [mformat]=mtools
  [/usr/share/OVMF/OVMF_CODE_4M.fd]=ovmf
  [depmod]=kmod
  [/bin/busybox]=busybox-static
  [protoc]=protobuf-compiler
  [/usr/include/google/protobuf/descriptor.proto]=libprotobuf-dev
  [musl-gcc]=musl-tools
  [docker-registry]=docker-registry
  [skopeo]=skopeo
  [umoci]=umoci
  [etcd]=etcd-server
  [cpio]=cpio
  [zstd]=zstd
  [xz]=xz-utils
  [/etc/ssl/certs/ca-certificates.crt]=ca-certificates
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

# The independent Python client the API tests use (tests/python, run by tests/tests/python_client.rs):
# the official Kubernetes client from PyPI and pytest, installed for the user's python3 when missing.
PY_WANT=()
python3 -c "import kubernetes" >/dev/null 2>&1 || PY_WANT+=("kubernetes==37.0.2")
python3 -c "import pytest" >/dev/null 2>&1 || PY_WANT+=("pytest")
if [ ${#PY_WANT[@]} -gt 0 ]; then
  if ! python3 -m pip --version >/dev/null 2>&1; then
    echo "==> installing pip (Debian package python3-pip)"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends python3-pip >/dev/null
  fi
  echo "==> installing Python packages for the client tests: ${PY_WANT[*]}"
  python3 -m pip install -q --disable-pip-version-check "${PY_WANT[@]}" \
    || python3 -m pip install -q --disable-pip-version-check --break-system-packages "${PY_WANT[@]}"
fi

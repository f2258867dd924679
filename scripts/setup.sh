#!/usr/bin/env bash
# Install what podplug needs on a Debian/Ubuntu machine: QEMU, busybox-static (for the guest
# initramfs), and podplug itself with its test tools (patchelf: the tests also run Debian 13's
# QEMU 10, unpacked beside the system's one by tests/debian13.py). The guest kernel is fetched
# later by `podplug image build` with `apt-get download` (no install, no /boot changes).
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends \
    qemu-system-x86 busybox-static e2fsprogs graphviz patchelf >/dev/null
python3 -m pip install -q --disable-pip-version-check -e '.[test]'
echo "podplug: set up ($(qemu-system-x86_64 --version | head -1))"

#!/usr/bin/env bash
# podplug's test command: lint, type-check, then every test (pure, fake-host and real-VM) under
# the system's QEMU, then the real-VM tests (marker vm) a second time under Debian 13's QEMU
# 10.0, unpacked beside the system's by tests/debian13.py (never installed; fetched first, once,
# then cached); the nested real-VFIO tests (marker nested, tests/nested) run in the first pass
# only. Arguments go to both pytest runs. With PODPLUG_TEST_QEMU set, one run only,
# under that binary.
set -euo pipefail
cd "$(dirname "$0")/.."
ruff check podplug tests bench
mypy --strict podplug
if [ -n "${PODPLUG_TEST_QEMU:-}" ]; then
    exec python3 -m pytest -q "$@"
fi
qemu10=$(python3 -m tests.debian13 qemu10)  # before the first run: offline fails at once
status=0
python3 -m pytest -q "$@" || status=$?
echo "podplug: the real-VM tests again, under $("$qemu10" --version | head -1): $qemu10"
# (not the nested VFIO tests: their L0 and L1 run the system's QEMU, so a second pass would
# only repeat them)
PODPLUG_TEST_QEMU=$qemu10 python3 -m pytest -q -m "vm and not nested" "$@" || status=$?
exit "$status"

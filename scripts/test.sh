#!/usr/bin/env bash
# podplug's test command: lint, type-check, then every test (pure, fake-host and real-VM).
set -euo pipefail
cd "$(dirname "$0")/.."
ruff check podplug tests bench
mypy --strict podplug
python3 -m pytest -q "$@"

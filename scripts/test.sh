#!/usr/bin/env bash
# The README's test command: set up (idempotent), then the whole suite.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/setup.sh
bash scripts/install_chromium.sh   # the MLflow UI test renders the UI in headless Chromium
exec .venv/bin/python -m pytest -q "$@"

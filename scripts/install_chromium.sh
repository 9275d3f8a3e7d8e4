#!/usr/bin/env bash
# Idempotent: Debian's headless-capable chromium for tests/test_mlflow_ui.py (the MLflow UI check).
# Skips when /usr/bin/chromium exists; installs it with apt-get as root; otherwise prints the command
# to run and exits 1.
set -euo pipefail
CHROMIUM=/usr/bin/chromium
CMD="apt-get install -y --no-install-recommends chromium"
if [ -x "$CHROMIUM" ]; then
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "[install_chromium] installing chromium (apt)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1 || {
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends chromium >/dev/null
  }
  [ -x "$CHROMIUM" ] || { echo "[install_chromium] apt finished but $CHROMIUM is missing" >&2; exit 1; }
  echo "[install_chromium] $("$CHROMIUM" --version 2>/dev/null || echo chromium installed)"
else
  echo "[install_chromium] $CHROMIUM is missing; run as root:" >&2
  echo "    apt-get update && $CMD" >&2
  exit 1
fi

#!/usr/bin/env bash
# Idempotent set-up: system packages for ffcv and PostgreSQL (when root), then .venv/ with the project installed.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
APT_PKGS="libopencv-dev libturbojpeg0-dev pkg-config"
have_pkgs() { pkg-config --exists opencv4 2>/dev/null && pkg-config --exists libturbojpeg 2>/dev/null; }
if ! have_pkgs; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "[setup] installing system packages for ffcv: $APT_PKGS"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends $APT_PKGS >/dev/null
  else
    echo "[setup] ffcv needs system packages; run as root:" >&2
    echo "    apt-get install -y --no-install-recommends $APT_PKGS" >&2
    exit 1
  fi
fi
# PostgreSQL server binaries (Debian's package) for tests/test_postgres.py, the cluster's tracking store.
have_pg() { ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null; }
if ! have_pg; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "[setup] installing postgresql (apt) for the PostgreSQL tracking-store tests"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq --no-install-recommends postgresql >/dev/null 2>&1 || {
      apt-get update -qq
      apt-get install -y -qq --no-install-recommends postgresql >/dev/null
    }
  else
    echo "[setup] tests/test_postgres.py needs PostgreSQL's server binaries; run as root:" >&2
    echo "    apt-get install -y --no-install-recommends postgresql" >&2
    exit 1
  fi
fi
PY="${PYTHON:-python3}"
stamp=".venv/.setup-$(cat pyproject.toml scripts/setup.sh | sha1sum | cut -c1-12)"
if [ -f "$stamp" ]; then
  exit 0
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip wheel setuptools
# ffcv's sdist imports numpy/pkgconfig in setup.py: give it a build environment with them.
.venv/bin/python -m pip install -q "numpy>=2.0" pkgconfig setuptools wheel
.venv/bin/python -m pip install -q --no-build-isolation -e ".[test]"
rm -f .venv/.setup-*
touch "$stamp"
echo "[setup] .venv ready"

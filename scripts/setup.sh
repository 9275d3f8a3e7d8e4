#!/usr/bin/env bash
# Idempotent set-up: system packages for ffcv (and, when root, PostgreSQL for its tests), then .venv/ with the
# project installed. As a non-root user (a cluster node) it needs only ffcv's packages to be there already.
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
# PostgreSQL server binaries (Debian's package) for tests/test_postgres.py: installed when root (CI, a
# development machine). Not needed to run sweeps: a cluster node's set-up runs as `ubuntu` and needs none
# (the head gets PostgreSQL from cluster.yaml's head_setup_commands, the workers never need it), so
# without root this is a note, not a failure.
have_pg() {
  ls "${POSTGRES_LIB:-/usr/lib/postgresql}"/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null
}
if ! have_pg; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "[setup] installing postgresql (apt) for the PostgreSQL tracking-store tests"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq --no-install-recommends postgresql >/dev/null 2>&1 || {
      apt-get update -qq
      apt-get install -y -qq --no-install-recommends postgresql >/dev/null
    }
  else
    echo "[setup] note: no PostgreSQL server binaries here; sweeps do not need them (tests/test_postgres.py" \
         "does: as root, apt-get install -y --no-install-recommends postgresql)"
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

#!/usr/bin/env bash
# The README's test command: set up (idempotent), then the whole suite (what CI runs).
#   bash scripts/test.sh            everything, integration tests included (Ray clusters, servers, a browser)
#   bash scripts/test.sh --unit     the tests that need no Ray cluster, server, browser or long training
#                                   (under 2 minutes on 2 cores: 1 min 46 s; no set-up beyond .venv/)
# Other arguments go to pytest. Both run their test files on IMBALANCE_TEST_WORKERS pytest-xdist
# workers (default 2; 0 = one process): the end-to-end tests spend much of their time waiting on Ray, servers
# and subprocesses (one process kept 2 cores 40% busy), so two files at a time fill the cores. A file's tests
# stay on one worker (--dist loadfile): its module fixtures (a Ray cluster, a server, a sweep) start once.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
if [ "${1:-}" = "--unit" ]; then
  shift
  [ -x .venv/bin/python ] || bash scripts/setup.sh
  exec .venv/bin/python -m pytest -q -n "${IMBALANCE_TEST_WORKERS:-2}" --dist loadfile -m "not integration" "$@"
fi
bash scripts/setup.sh
bash scripts/install_chromium.sh   # the MLflow UI test renders the UI in headless Chromium
exec .venv/bin/python -m pytest -q -n "${IMBALANCE_TEST_WORKERS:-2}" --dist loadfile "$@"

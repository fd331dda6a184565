#!/usr/bin/env bash
# Install verifiable-mu into a fresh virtual environment (.venv) and run the main job end to end
# on scikit-learn's bundled digits: train -> forget -> bundle -> verify.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
rm -rf .venv
"$PY" -m venv .venv
.venv/bin/pip install -q torch==2.13.0
.venv/bin/pip install -q -e '.[report]'
WS=demo-workspace
rm -rf "$WS" demo-bundle.vmu
.venv/bin/vmu init "$WS" --data digits --shards 5 --slices 4
.venv/bin/vmu train "$WS"
.venv/bin/vmu forget "$WS" --ids 17,42
.venv/bin/vmu status "$WS"
if .venv/bin/vmu bundle --help >/dev/null 2>&1; then
  .venv/bin/vmu bundle "$WS" --out demo-bundle.vmu --all
  .venv/bin/vmu-verify demo-bundle.vmu --trust-key "$WS/signing-key.pub.pem" --json demo-verdict.json
else
  echo "(vmu bundle / vmu-verify are not in this version yet)"
fi

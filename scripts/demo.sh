#!/usr/bin/env bash
# Install verifiable-mu into a fresh virtual environment (.venv) and run the main job end to end
# on scikit-learn's bundled digits: train -> forget -> bundle -> verify.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
rm -rf .venv
"$PY" -m venv .venv
.venv/bin/pip install -q torch==2.13.0
.venv/bin/pip install -q -e '.[full,report,age]'
WS=demo-workspace
rm -rf "$WS" demo-bundle.vmu
.venv/bin/vmu init "$WS" --data digits --shards 5 --slices 4
.venv/bin/vmu train "$WS"
.venv/bin/vmu forget "$WS" --ids 17,42
.venv/bin/vmu status "$WS"
.venv/bin/vmu bundle "$WS" --out demo-bundle.vmu --all
# Two deleted records are too few for the residual tests to have power: expect "ACCEPTED
# (residual tests inconclusive)". The HTML report opens in any browser, offline.
.venv/bin/vmu-verify demo-bundle.vmu --trust-key "$WS/signing-key.pub.pem" --json demo-verdict.json --html demo-report.html

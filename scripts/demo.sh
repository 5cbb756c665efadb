#!/usr/bin/env bash
# `make demo`: the whole loop on the embedded default (SQLite, in-process controller and
# watchdog, local backend): the demo job's garbage stretch caught, the run rolled back and
# finished, a run without the fault for comparison, and demo-out/report.html.
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/pretrainctl demo --out demo-out "$@"

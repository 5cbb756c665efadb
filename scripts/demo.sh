#!/usr/bin/env bash
# `make demo`: the service on the embedded default (SQLite under .pretrain/, in-process queue,
# local backend), a job submitted from examples/tiny-cpu.yaml, and what the service made of it.
set -euo pipefail
cd "$(dirname "$0")/.."
ctl=.venv/bin/pretrainctl
mkdir -p demo-out
port=$(.venv/bin/python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export PRETRAIN_API_URL="http://127.0.0.1:${port}"

"$ctl" serve --port "$port" > demo-out/serve.log 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null; wait "$server" 2>/dev/null || true' EXIT
for _ in $(seq 100); do
  curl -fsS "$PRETRAIN_API_URL/readyz" >/dev/null 2>&1 && break
  kill -0 "$server" 2>/dev/null || { cat demo-out/serve.log; exit 1; }
  sleep 0.2
done

echo "== service up at $PRETRAIN_API_URL (embedded SQLite: .pretrain/orchestrator.db)"
# A previous demo's job may still be pending; names are unique among live jobs.
for id in $("$ctl" list --name tiny-cpu --state pending --json | .venv/bin/python -c 'import json,sys; print(" ".join(str(j["id"]) for j in json.load(sys.stdin)["data"]))'); do
  "$ctl" cancel "$id" --reason "superseded by a new demo run" >/dev/null
done

echo "== pretrainctl submit examples/tiny-cpu.yaml"
job=$("$ctl" submit examples/tiny-cpu.yaml --json | .venv/bin/python -c 'import json,sys; print(json.load(sys.stdin)["id"])')
"$ctl" get "$job"
echo
echo "== a spec that cannot run is refused with every reason at once"
sed -e 's/global_batch_size: 16 /global_batch_size: 10 /' -e 's/  tensor: 1/  tensor: 3/' examples/tiny-cpu.yaml | "$ctl" submit - || true
echo
echo "== pretrainctl events $job"
"$ctl" events "$job"
echo
echo "Training, the watchdog and rollbacks are not wired in yet: the job stays pending."

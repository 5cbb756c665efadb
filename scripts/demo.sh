#!/usr/bin/env bash
# `make demo`: the service on the embedded default (SQLite under .pretrain/, in-process
# controller, local backend), the tiny CPU job submitted to it and followed to the end.
set -euo pipefail
cd "$(dirname "$0")/.."
ctl=.venv/bin/pretrainctl
mkdir -p demo-out
port=$(.venv/bin/python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export PRETRAIN_API_URL="http://127.0.0.1:${port}"

"$ctl" serve --port "$port" > demo-out/serve.log 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null; wait "$server" 2>/dev/null || true' EXIT
for _ in $(seq 150); do
  curl -fsS "$PRETRAIN_API_URL/readyz" >/dev/null 2>&1 && break
  kill -0 "$server" 2>/dev/null || { cat demo-out/serve.log; exit 1; }
  sleep 0.2
done
echo "== service up at $PRETRAIN_API_URL (embedded SQLite: .pretrain/orchestrator.db)"

# A previous demo's job may still be live; names are unique among live jobs.
for id in $("$ctl" list --name tiny-cpu --state pending --state running --json | .venv/bin/python -c 'import json,sys; print(" ".join(str(j["id"]) for j in json.load(sys.stdin)["data"]))'); do
  "$ctl" cancel "$id" --reason "superseded by a new demo run" >/dev/null
done

echo "== a spec that cannot run is refused with every reason at once"
sed -e 's/global_batch_size: 16 /global_batch_size: 10 /' -e 's/  tensor: 1/  tensor: 3/' examples/tiny-cpu.yaml | "$ctl" submit - || true
echo
echo "== pretrainctl plan examples/tiny-cpu.yaml"
"$ctl" plan examples/tiny-cpu.yaml
echo
echo "== pretrainctl submit examples/tiny-cpu.yaml"
job=$("$ctl" submit examples/tiny-cpu.yaml --json | .venv/bin/python -c 'import json,sys; print(json.load(sys.stdin)["id"])')
"$ctl" get "$job"
echo
echo "== pretrainctl follow $job   (two trainer processes on this CPU; logs in .pretrain/workloads/)"
"$ctl" follow "$job" --interval 2
echo
echo "== pretrainctl checkpoints $job"
"$ctl" checkpoints "$job"

#!/usr/bin/env bash
# GPU check of the trainer on one NVIDIA H200: a ~0.9B-parameter Llama (16 layers, hidden 2048,
# 16 heads in 8 query groups, ffn 5632, vocab 32000, seq 2048), bf16, micro-batch 4, global
# batch 16, 30 steps of `python3 -m trainer.train` on the embedded corpora, then the median
# tokens/s and MFU of the steps after warm-up, read from the trainer's metrics file.
# Megatron-core uses the Transformer Engine layer spec when TE imports, the local spec if not
# (trainer/model.py decides; this script only reports which).
#
# The lent machine has Python 3.12 and a CUDA build of torch, and no network. Prepare the
# wheels beforehand, on any machine with network, into .whl/ at the repository root:
#
#   mkdir -p .whl
#   python3 -m pip download --dest .whl --no-deps --only-binary=:all: \
#       --python-version 3.12 --implementation cp --abi cp312 \
#       --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
#       megatron-core==0.16.1 tokenizers==0.23.3 psutil==7.2.2 safetensors==0.8.0
#   # jieba is published as an sdist only: build its (pure-Python) wheel.
#   python3 -m pip wheel --no-deps --wheel-dir .whl jieba==0.42.1
#
# numpy and packaging (megatron-core's only dependencies) come with torch's environment.
# If .whl/ is git-ignored, carry it explicitly. Run from anywhere:  bash bench/gpu_check.sh
#
# Environment knobs: STEPS (30), WARMUP (5 steps left out of the medians), PEAK_TFLOPS (989,
# H200 dense bf16), GPU_CHECK_TIMEOUT_S (480), GPU_CHECK_DIR (a fresh temporary directory).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
STEPS="${STEPS:-30}"
WARMUP="${WARMUP:-5}"
PEAK_TFLOPS="${PEAK_TFLOPS:-989}"
TIMEOUT_S="${GPU_CHECK_TIMEOUT_S:-480}"
WORK="${GPU_CHECK_DIR:-$(mktemp -d /tmp/gpu-check.XXXXXX)}"
mkdir -p "$WORK"
OUT_DIR="${OUT:-$WORK}"

echo "== wheels"
shopt -s nullglob
wheels=(.whl/*.whl)
shopt -u nullglob
if ((${#wheels[@]} == 0)); then
    echo "no wheels in $ROOT/.whl: see the header of this script" >&2
    exit 2
fi
python3 -m pip install -q --no-index --no-deps --target /tmp/site "${wheels[@]}"
export PYTHONPATH="/tmp/site:$ROOT/trainer_image${PYTHONPATH:+:$PYTHONPATH}"
export CUDA_DEVICE_MAX_CONNECTIONS=1
export PYTHONUNBUFFERED=1

echo "== device"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 - <<'EOF'
import importlib.util

import megatron.core
import torch

assert torch.cuda.is_available(), "torch sees no CUDA device"
print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), {torch.cuda.get_device_name(0)}")
print(f"megatron-core {megatron.core.__version__}")
try:
    import transformer_engine

    print(f"transformer_engine {transformer_engine.__version__}: the TE layer spec")
except Exception as exc:  # noqa: BLE001 - any failure means the local spec
    print(f"transformer_engine unavailable ({type(exc).__name__}: {exc}): the local spec")
print("flash_attn", "present" if importlib.util.find_spec("flash_attn") else "absent")
EOF

echo "== config ($WORK)"
python3 - "$WORK" "$STEPS" "$PEAK_TFLOPS" <<'EOF'
import json
import sys
from pathlib import Path

from trainer.config import config_from_dict, config_to_dict, example_config

work, steps, peak = Path(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
config = config_to_dict(example_config())
config["model"].update(
    num_layers=16,
    hidden_size=2048,
    num_attention_heads=16,
    num_query_groups=8,
    ffn_hidden_size=5632,
    vocab_size=32000,  # the byte tokenizer's 258 ids, padded to a Llama-sized table
    max_position_embeddings=2048,
)
config["precision"] = {"dtype": "bf16"}
config["optimizer"].update(lr=3e-4, min_lr=3e-5)
config["schedule"] = {"kind": "wsd", "warmup_steps": 5, "decay_steps": 5}
config["batch"] = {"micro_batch_size": 4, "global_batch_size": 16}
config["stages"] = [{**config["stages"][0], "steps": steps, "seq_length": 2048}]
config["data"].update(tokenizer="byte", cache_dir=str(work / "corpora"))
# The trainer always saves after its last step; nothing earlier.
config["checkpoint"] = {"directory": str(work / "ckpt"), "interval_steps": 0, "keep_last": 1}
config["eval"] = {"interval_steps": 0, "samples_per_channel": 8}
config["metrics"] = {"jsonl_path": str(work / "metrics.jsonl")}
config["train"] = {"peak_tflops": peak}
config_from_dict(config)  # fail here, not in the trainer, on a schema drift
(work / "config.json").write_text(json.dumps(config, indent=1))
print(json.dumps(config["model"]))
EOF

echo "== train ($STEPS steps, bf16)"
status=0
timeout "$TIMEOUT_S" python3 -m trainer.train --config "$WORK/config.json" \
    >"$WORK/train.log" 2>&1 || status=$?
tail -n 5 "$WORK/train.log"
if [[ "$status" -ne 0 ]]; then
    echo "trainer.train failed with status $status; the last lines of its log:" >&2
    tail -n 60 "$WORK/train.log" >&2
fi
if [[ "$OUT_DIR" != "$WORK" ]]; then
    cp "$WORK/train.log" "$WORK/config.json" "$OUT_DIR/" 2>/dev/null || true
    cp "$WORK/metrics.jsonl" "$OUT_DIR/" 2>/dev/null || true
fi

echo "== results"
python3 - "$WORK/metrics.jsonl" "$WARMUP" <<'EOF'
import json
import statistics
import sys

path, warmup = sys.argv[1], int(sys.argv[2])
try:
    with open(path) as handle:
        rows = [json.loads(line) for line in handle if line.strip()]
except FileNotFoundError:
    sys.exit(f"no metrics at {path}")
train = [r for r in rows if r["phase"] != "eval"]
timed = [r["metrics"] for r in train if r["step"] >= warmup]
if not timed:
    sys.exit(f"only {len(train)} steps reported; nothing after the {warmup} warm-up steps")


def median(key):
    values = [m[key] for m in timed if key in m]
    return statistics.median(values) if values else float("nan")


tokens_per_s, mfu = median("throughput/tokens_per_s"), median("throughput/mfu")
losses = [r["metrics"]["loss"] for r in train]
print(f"steps reported        {len(train)} (median over steps {warmup}..{train[-1]['step']})")
print(f"tokens/s (median)     {tokens_per_s:,.0f}")
print(f"step time s (median)  {median('throughput/step_time_s'):.3f}")
print(f"MFU (median)          {mfu:.1%}")
print(f"loss first -> last    {losses[0]:.3f} -> {losses[-1]:.3f}")
skipped = sum(r["metrics"].get("step/skipped", 0.0) for r in train)
print(f"skipped steps         {skipped:.0f}")
EOF
exit "$status"

"""Training tokens/s of our trainer's model on CPU against a plain PyTorch Llama of the same size.

Ours: the trainer itself, `trainer.train.Trainer.train_step` (megatron-core GPTModel with the
local spec through `get_forward_backward_func`, megatron's optimizer, the finite checks), fp32.
Baseline: a compact Llama (RMSNorm, RoPE, GQA, SwiGLU) on `scaled_dot_product_attention` with
`torch.optim.AdamW` and grad-norm clipping; same shapes, same batches from the same dataset.
Each side lives in its own worker process (megatron's CPU mode patches torch process-wide);
after a warm-up the workers take turns, a few steps each round, so both see the same machine.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULT = "RESULT "
SHAPE = {
    "num_layers": 6,
    "hidden_size": 384,
    "num_attention_heads": 6,
    "num_query_groups": 2,
    "ffn_hidden_size": 1024,
    "vocab_size": 8192,
}


def trainer_config(seq: int, batch: int, steps: int, tmp: Path):
    from trainer.config import config_from_dict, config_to_dict, example_config

    config = config_to_dict(example_config())
    config["model"].update(SHAPE, max_position_embeddings=seq)
    config["batch"] = {"micro_batch_size": batch, "global_batch_size": batch}
    config["stages"] = [{**config["stages"][0], "steps": steps, "seq_length": seq}]
    config["schedule"] = {"kind": "constant", "warmup_steps": 0}
    config["optimizer"].update(lr=3e-4, weight_decay=0.1, clip_grad=1.0)
    config["eval"] = {"interval_steps": 0, "samples_per_channel": 8}
    config["checkpoint"] = {"directory": str(tmp / "ckpt"), "interval_steps": 0}
    config["metrics"] = {"jsonl_path": str(tmp / "metrics.jsonl")}
    return config_from_dict(config)


# --------------------------------------------------------------------------- the baseline


def reference_llama(seq: int):
    """A plain PyTorch Llama with the trainer model's shapes (fused QKV and gate/up GEMMs)."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    hidden, heads, groups = (
        SHAPE["hidden_size"],
        SHAPE["num_attention_heads"],
        SHAPE["num_query_groups"],
    )
    head_dim = hidden // heads

    inv_freq = 1.0 / (10000.0 ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    angles = torch.outer(torch.arange(seq, dtype=torch.float32), inv_freq)
    angles = torch.cat([angles, angles], dim=-1)
    cos, sin = angles.cos(), angles.sin()

    def rope(x):  # [b, h, s, d], rotate-half form
        half = x.shape[-1] // 2
        rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
        return x * cos + rotated * sin

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn_norm = nn.RMSNorm(hidden, eps=1e-5)
            self.qkv = nn.Linear(hidden, (heads + 2 * groups) * head_dim, bias=False)
            self.proj = nn.Linear(heads * head_dim, hidden, bias=False)
            self.mlp_norm = nn.RMSNorm(hidden, eps=1e-5)
            self.fc1 = nn.Linear(hidden, 2 * SHAPE["ffn_hidden_size"], bias=False)
            self.fc2 = nn.Linear(SHAPE["ffn_hidden_size"], hidden, bias=False)

        def forward(self, x):
            b, s, _ = x.shape
            q, k, v = self.qkv(self.attn_norm(x)).split(
                [heads * head_dim, groups * head_dim, groups * head_dim], dim=-1
            )
            q = rope(q.view(b, s, heads, head_dim).transpose(1, 2))
            k = rope(k.view(b, s, groups, head_dim).transpose(1, 2))
            v = v.view(b, s, groups, head_dim).transpose(1, 2)
            attn = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
            x = x + self.proj(attn.transpose(1, 2).reshape(b, s, hidden))
            gate, up = self.fc1(self.mlp_norm(x)).chunk(2, dim=-1)
            return x + self.fc2(F.silu(gate) * up)

    class Llama(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(SHAPE["vocab_size"], hidden)
            self.blocks = nn.ModuleList(Block() for _ in range(SHAPE["num_layers"]))
            self.norm = nn.RMSNorm(hidden, eps=1e-5)
            self.head = nn.Linear(hidden, SHAPE["vocab_size"], bias=False)
            for p in self.parameters():
                if p.dim() > 1:
                    nn.init.normal_(p, std=0.02)

        def forward(self, tokens):
            x = self.embed(tokens)
            for block in self.blocks:
                x = block(x)
            return self.head(self.norm(x))

    return Llama()


def reference_worker(args: argparse.Namespace) -> None:
    import torch
    import torch.nn.functional as F

    from trainer import data

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        config = trainer_config(args.seq, args.batch, 1 << 20, Path(tmp))
        stage = config.stages[0]
        dataset = data.MixtureDataset(
            sources=[(s.channel, s.path, s.weight, s.corrupt) for s in stage.data],
            channel_names=[s.channel for s in stage.data],
            seq_length=stage.seq_length,
            seed=config.data.seed,
            tokenizer=data.load_tokenizer(config.data.tokenizer),
            cache_dir=config.data.cache_dir,
            eval_samples_per_channel=config.eval.samples_per_channel,
        )
        llama = reference_llama(args.seq)
        optimizer = torch.optim.AdamW(
            llama.parameters(), lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1
        )
        step = 0

        def train_step() -> float:
            nonlocal step
            started = time.perf_counter()
            batch = dataset.batch(step, args.batch)
            optimizer.zero_grad(set_to_none=True)
            logits = llama(batch["tokens"])
            per_token = F.cross_entropy(
                logits.float().view(-1, logits.shape[-1]),
                batch["labels"].reshape(-1),
                reduction="none",
            )
            mask = batch["loss_mask"].reshape(-1).float()
            loss = (per_token * mask).sum() / mask.sum()
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(llama.parameters(), 1.0)
            if not (torch.isfinite(loss) and torch.isfinite(grad_norm)):
                raise RuntimeError(f"reference: non-finite loss at step {step}")
            optimizer.step()
            step += 1
            return time.perf_counter() - started

        serve(train_step, params=sum(p.numel() for p in llama.parameters()))


# --------------------------------------------------------------------------- ours


def trainer_worker(args: argparse.Namespace) -> None:
    from trainer import model
    from trainer.train import Trainer

    if args.sdpa:
        from trainer.sdpa_attention import use_sdpa_core_attention

        spec = model.layer_spec
        model.layer_spec = lambda config: use_sdpa_core_attention(spec(config))
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(trainer_config(args.seq, args.batch, 1 << 20, Path(tmp)))
        try:

            def train_step() -> float:
                started = time.perf_counter()
                metrics = trainer.train_step()
                trainer.step += 1
                if not math.isfinite(metrics["loss"]):
                    raise RuntimeError(f"trainer: non-finite loss at step {trainer.step}")
                return time.perf_counter() - started

            params = sum(p.numel() for chunk in trainer.model for p in chunk.parameters())
            serve(train_step, params=params)
        finally:
            trainer.close()


def serve(train_step, *, params: int) -> None:
    """Answer `N` lines on stdin with the seconds of N steps; the first answer is `ready`."""
    print(RESULT + json.dumps({"params": params}), flush=True)
    for line in sys.stdin:
        if not line.strip():
            break
        seconds = [train_step() for _ in range(int(line))]
        print(RESULT + json.dumps(seconds), flush=True)


# --------------------------------------------------------------------------- the driver


class Worker:
    def __init__(self, side: str, args: argparse.Namespace) -> None:
        command = [
            sys.executable,
            __file__,
            "--worker",
            side,
            "--seq",
            str(args.seq),
            "--batch",
            str(args.batch),
        ]
        env = {
            **os.environ,
            "PYTHONPATH": f"{ROOT / 'trainer_image'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        }
        env.setdefault("OMP_NUM_THREADS", str(args.threads))
        self.process = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
        )
        self.params = self._read()["params"]

    def steps(self, count: int) -> list[float]:
        self.process.stdin.write(f"{count}\n")
        self.process.stdin.flush()
        return self._read()

    def _read(self):
        for line in self.process.stdout:
            if line.startswith(RESULT):
                return json.loads(line[len(RESULT) :])
        raise RuntimeError(f"worker exited with {self.process.wait()}")

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=3, help="steps per side before timing")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per side per round")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument(
        "--worker", choices=["reference", "trainer", "trainer-sdpa"], help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.worker:
        args.sdpa = args.worker == "trainer-sdpa"
        (reference_worker if args.worker == "reference" else trainer_worker)(args)
        return

    sides = ["reference", "trainer"]
    if (
        ROOT / "trainer_image" / "trainer" / "sdpa_attention.py"
    ).exists() and not _trainer_uses_sdpa():
        sides.append("trainer-sdpa")
    workers = {side: Worker(side, args) for side in sides}
    try:
        for worker in workers.values():
            worker.steps(args.warmup)
        seconds: dict[str, list[float]] = {side: [] for side in sides}
        for _ in range(args.rounds):
            for side, worker in workers.items():
                seconds[side].extend(worker.steps(args.steps))
    finally:
        for worker in workers.values():
            worker.close()

    tokens = args.seq * args.batch
    rate = {
        side: statistics.median(tokens / s for s in samples) for side, samples in seconds.items()
    }
    base = rate["reference"]
    params = workers["trainer"].params
    print(
        f"trainer_cpu: Llama {params / 1e6:.1f}M params ({SHAPE['num_layers']} layers, hidden "
        f"{SHAPE['hidden_size']}, {SHAPE['num_attention_heads']} heads / {SHAPE['num_query_groups']} "
        f"groups), seq {args.seq}, batch {args.batch}, fp32, {args.threads} threads, "
        f"{args.rounds}x{args.steps} timed steps a side"
    )
    print(f"{'figure':<42}{'median':>10}{'baseline':>10}{'ratio':>8}")
    labels = {
        "trainer": "trainer tokens/s (megatron, local spec)",
        "trainer-sdpa": "trainer tokens/s (+ SDPA core attention)",
    }
    from harness import record  # here, not at the top: the workers need none of it

    shape = f"{params / 1e6:.1f}M params, seq {args.seq}, batch {args.batch}, {args.threads} threads"
    for side, label in labels.items():
        if side in rate:
            print(f"{label:<42}{rate[side]:>10.0f}{base:>10.0f}{rate[side] / base:>8.2f}")
            record(
                "trainer_cpu",
                label,
                rate[side],
                base,
                rate[side] / base,
                unit="tokens/s",
                baseline_name="plain PyTorch Llama (SDPA, AdamW)",
                note=f"{shape}; target ratio >= 0.9",
            )
    ms = {side: statistics.median(samples) * 1000 for side, samples in seconds.items()}
    print(f"{'step ms (trainer / reference)':<42}{ms['trainer']:>10.0f}{ms['reference']:>10.0f}")
    record(
        "trainer_cpu",
        "step ms (trainer / reference)",
        ms["trainer"],
        ms["reference"],
        None,
        unit="ms",
        baseline_name="plain PyTorch Llama (SDPA, AdamW)",
        note=shape,
    )
    print("baseline: plain PyTorch Llama (SDPA, AdamW) in the same run; target ratio >= 0.9")


def _trainer_uses_sdpa() -> bool:
    model_py = (ROOT / "trainer_image" / "trainer" / "model.py").read_text()
    return "use_sdpa_core_attention" in model_py


if __name__ == "__main__":
    main()

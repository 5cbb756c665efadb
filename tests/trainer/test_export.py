"""Export to the Hugging Face Llama layout: the QKV layout, and logits equal to the trainer's.

The end-to-end tests train a tiny GQA model in a subprocess (as a pod would), export its last
checkpoint with `python -m trainer.export`, and compare `LlamaForCausalLM`'s logits with the
trainer's own model, restored through the trainer's own checkpoint code, in a third process:
megatron's parallel state is global, so each world lives in its own interpreter.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from trainer.config import MoEConfig, config_from_dict, config_to_dict, example_config
from trainer.export import ExportError, merge_qkv, split_qkv, to_hf_state_dict, write_tokenizer
from trainer.tokenizer.byte import ByteTokenizer, hf_tokenizer

RUN_TIMEOUT_S = 240
SEQ = 32
LOGITS_ATOL = 1e-4

# Runs in a fresh interpreter: restore the trainer from the checkpoint (init_from, a world of
# one, whatever layout it was saved with), then load the export with transformers.
COMPARE = """
import json, sys
import torch
# Before the trainer: its CPU mode replaces torch.cuda.Stream, which transformers annotates with.
from transformers import LlamaForCausalLM
from trainer.config import load_config
from trainer.train import Trainer

config_path, export_dir, seq = sys.argv[1], sys.argv[2], int(sys.argv[3])
tokens = torch.randint(0, 258, (2, seq), generator=torch.Generator().manual_seed(0))
positions = torch.arange(seq).unsqueeze(0).expand_as(tokens)
trainer = Trainer(load_config(config_path))
chunk = trainer.model[0]
chunk.eval()
with torch.no_grad():
    ours = chunk(tokens, positions, None).float()
trainer.close()

hf, loading = LlamaForCausalLM.from_pretrained(export_dir, dtype=torch.float32, output_loading_info=True)
hf.eval()
with torch.no_grad():
    theirs = hf(tokens).logits
print(json.dumps({
    "shape": list(ours.shape),
    "hf_shape": list(theirs.shape),
    "max_abs_diff": (ours - theirs).abs().max().item(),
    "logit_scale": ours.abs().max().item(),
    "missing": sorted(loading["missing_keys"]),
    "unexpected": sorted(loading["unexpected_keys"]),
}))
"""


def tiny_config(tmp: Path, **model) -> dict:
    """2 layers, hidden 64, 4 heads in 2 query groups (GQA), ffn 176, vocab 512, seq 32."""
    config = config_to_dict(example_config())
    config["model"].update(max_position_embeddings=SEQ, **model)
    config["stages"] = [{**config["stages"][0], "steps": 4, "seq_length": SEQ}]
    config["schedule"] = {"kind": "constant", "warmup_steps": 1}
    config["eval"] = {"interval_steps": 0, "samples_per_channel": 8}
    config["checkpoint"] = {"directory": str(tmp / "ckpt"), "interval_steps": 100}
    config["metrics"] = {"jsonl_path": str(tmp / "metrics.jsonl")}
    config["data"]["cache_dir"] = str(tmp.parent / "corpora")
    config["job"]["result_path"] = str(
        tmp / "result.jsonl"
    )  # not the machine's /dev/termination-log
    return config


def run(command: list[str], cwd: Path, *, nproc: int = 1) -> str:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S
    )
    if result.returncode != 0:
        raise AssertionError(
            f"{command[:4]} failed ({result.returncode}):\n{result.stderr[-4000:]}"
        )
    return result.stdout


def train_and_export(tmp: Path, config: dict, *, nproc: int) -> tuple[Path, Path]:
    """Train `config` on `nproc` processes; export its checkpoint. (checkpoint, export dir)"""
    tmp.mkdir(parents=True, exist_ok=True)
    path = tmp / "config.json"
    path.write_text(json.dumps(config))
    launcher = [sys.executable]
    if nproc > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    run([*launcher, "-m", "trainer.train", "--config", str(path)], tmp, nproc=nproc)
    [checkpoint] = sorted((tmp / "ckpt").glob("step-*"))
    out = tmp / "hf"
    export = [sys.executable, "-m", "trainer.export", "--config", str(path)]
    run([*export, "--checkpoint", str(checkpoint), "--out", str(out)], tmp)
    return checkpoint, out


def compare_logits(tmp: Path, config: dict, checkpoint: Path, export_dir: Path) -> dict:
    """Logits of the trainer's model (restored from `checkpoint`) and of the export."""
    config = {
        **config,
        "parallel": {},
        "checkpoint": {"directory": str(tmp / "restored"), "init_from": str(checkpoint)},
    }
    path = tmp / "compare.json"
    path.write_text(json.dumps(config))
    stdout = run([sys.executable, "-c", COMPARE, str(path), str(export_dir), str(SEQ)], tmp)
    return json.loads(stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- the QKV layout


def test_split_qkv_takes_each_groups_query_heads_then_its_key_then_its_value() -> None:
    # 4 heads in 2 groups, head_dim 1: megatron's rows are q0 q1 k0 v0 | q2 q3 k1 v1.
    fused = torch.arange(8.0).unsqueeze(1)
    q, k, v = split_qkv(fused, num_heads=4, num_query_groups=2, head_dim=1)
    assert q.squeeze(1).tolist() == [0, 1, 4, 5]
    assert k.squeeze(1).tolist() == [2, 6]
    assert v.squeeze(1).tolist() == [3, 7]


@pytest.mark.parametrize(
    ("heads", "groups", "head_dim"),
    [(4, 2, 16), (8, 8, 4), (8, 1, 4), (32, 8, 128)],
    ids=["gqa", "mha", "mqa", "llama3-8b"],
)
def test_split_and_merge_qkv_are_exact_inverses(heads: int, groups: int, head_dim: int) -> None:
    shape = {"num_heads": heads, "num_query_groups": groups, "head_dim": head_dim}
    generator = torch.Generator().manual_seed(heads * groups)
    rows = (heads + 2 * groups) * head_dim
    for fused in (
        torch.randn(rows, 96, generator=generator),
        torch.randn(rows, generator=generator),
    ):
        q, k, v = split_qkv(fused, **shape)
        assert q.shape[0] == heads * head_dim and k.shape[0] == v.shape[0] == groups * head_dim
        assert torch.equal(merge_qkv(q, k, v, **shape), fused)
        assert all(
            torch.equal(a, b)
            for a, b in zip(split_qkv(merge_qkv(q, k, v, **shape), **shape), (q, k, v), strict=True)
        )


@pytest.mark.parametrize("source", ["byte", "bare tokenizer.json"])
def test_the_exported_tokenizer_loads_offline_and_encodes_as_the_trainer_did(
    tmp_path: Path, source: str
) -> None:
    # lm-eval's `hf` model reads the export with AutoTokenizer: the ids must be the trainer's.
    from transformers import AutoTokenizer

    spec = "byte"
    if source != "byte":  # a tokenizer.json with no tokenizer_config.json beside it
        (tmp_path / "src").mkdir()
        hf_tokenizer().save(str(tmp_path / "src" / "tokenizer.json"))
        spec = str(tmp_path / "src" / "tokenizer.json")
    (tmp_path / "out").mkdir()
    ids = write_tokenizer(spec, tmp_path / "out")
    loaded = AutoTokenizer.from_pretrained(tmp_path / "out", local_files_only=True)
    text = "def f(x):\n    return x  # 中文, ñ"
    assert loaded(text)["input_ids"] == ByteTokenizer().encode(text)
    assert loaded.eos_token_id == ids["eos_token_id"] == 256
    assert loaded.decode(ByteTokenizer().encode(text)) == text


def test_export_refuses_a_moe_model() -> None:
    config = config_from_dict(config_to_dict(example_config()))
    config.model.moe = MoEConfig(num_experts=4, top_k=2, moe_ffn_hidden_size=64)
    with pytest.raises(ExportError, match="only dense models"):
        to_hf_state_dict({}, config)


def test_export_refuses_tensors_it_cannot_place() -> None:
    config = example_config()
    weights = fake_megatron_weights(config)
    weights["decoder.layers.0.self_attention.q_layernorm.weight"] = torch.ones(16)
    with pytest.raises(ExportError, match="q_layernorm"):
        to_hf_state_dict(weights, config)


def test_export_reads_transformer_engine_fused_norm_names() -> None:
    config = example_config()
    local = fake_megatron_weights(config)
    te = {
        name.replace(
            "input_layernorm.weight", "self_attention.linear_qkv.layer_norm_weight"
        ).replace("pre_mlp_layernorm.weight", "mlp.linear_fc1.layer_norm_weight"): tensor
        for name, tensor in local.items()
    }
    assert te.keys() != local.keys()
    from_local, from_te = to_hf_state_dict(local, config), to_hf_state_dict(te, config)
    assert from_local.keys() == from_te.keys()
    assert all(torch.equal(from_local[name], from_te[name]) for name in from_local)


def fake_megatron_weights(config) -> dict[str, torch.Tensor]:
    """Random tensors under the local spec's GPTModel names and shapes."""
    arch = config.model
    hidden, head_dim = arch.hidden_size, arch.hidden_size // arch.num_attention_heads
    qkv_rows = (arch.num_attention_heads + 2 * arch.num_query_groups) * head_dim
    weights = {
        "embedding.word_embeddings.weight": torch.randn(arch.vocab_size, hidden),
        "decoder.final_layernorm.weight": torch.randn(hidden),
        "output_layer.weight": torch.randn(arch.vocab_size, hidden),
    }
    for layer in range(arch.num_layers):
        prefix = f"decoder.layers.{layer}."
        weights[prefix + "input_layernorm.weight"] = torch.randn(hidden)
        weights[prefix + "self_attention.linear_qkv.weight"] = torch.randn(qkv_rows, hidden)
        weights[prefix + "self_attention.linear_proj.weight"] = torch.randn(hidden, hidden)
        weights[prefix + "pre_mlp_layernorm.weight"] = torch.randn(hidden)
        weights[prefix + "mlp.linear_fc1.weight"] = torch.randn(2 * arch.ffn_hidden_size, hidden)
        weights[prefix + "mlp.linear_fc2.weight"] = torch.randn(hidden, arch.ffn_hidden_size)
    return weights


# --------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_export_of_a_tensor_parallel_checkpoint_matches_the_trainers_logits(tmp_path: Path) -> None:
    """Saved with TP=2 (one query group a rank) and a QKV bias; exported from a world of one."""
    tmp = tmp_path / "tp2"
    config = tiny_config(tmp, qkv_bias=True)
    config["parallel"] = {"tensor": 2}
    checkpoint, out = train_and_export(tmp, config, nproc=2)

    hf = json.loads((out / "config.json").read_text())
    assert hf["num_key_value_heads"] == 2 and hf["num_attention_heads"] == 4
    assert hf["attention_bias"] is True and hf["tie_word_embeddings"] is False
    assert hf["eos_token_id"] == 256

    result = compare_logits(tmp, config, checkpoint, out)
    assert result["shape"] == result["hf_shape"] == [2, SEQ, 512]
    assert result["max_abs_diff"] < LOGITS_ATOL, result
    # Every weight Hugging Face builds comes from the export (o_proj's bias as zeros).
    assert (result["missing"], result["unexpected"]) == ([], []), result


@pytest.mark.slow
def test_export_with_tied_embeddings_and_a_raised_rope_base_matches_the_trainers_logits(
    tmp_path: Path,
) -> None:
    """One process; the last stage's RoPE base lands in config.json and in the logits."""
    tmp = tmp_path / "tied"
    config = tiny_config(tmp, tie_embeddings=True)
    config["stages"][0]["rope_base"] = 500000.0
    checkpoint, out = train_and_export(tmp, config, nproc=1)

    hf = json.loads((out / "config.json").read_text())
    assert hf["tie_word_embeddings"] is True
    assert hf["rope_theta"] == hf["rope_parameters"]["rope_theta"] == 500000.0

    from safetensors import safe_open

    with safe_open(str(out / "model.safetensors"), framework="pt") as handle:
        assert "lm_head.weight" not in set(handle.keys())

    result = compare_logits(tmp, config, checkpoint, out)
    assert result["max_abs_diff"] < LOGITS_ATOL, result

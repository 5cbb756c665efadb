"""Export a trainer checkpoint to the Hugging Face Llama layout: `model.safetensors` + `config.json`.

`python -m trainer.export --config CONFIG.json --checkpoint DIR --out OUTDIR [--rope-base X]`

One process (a world of one; gloo on CPU) builds the model exactly as the trainer does, with
every parallel size set to 1, and loads the checkpoint through `dist_checkpointing`, which
reshards from whatever tensor/pipeline layout it was saved with. The full tensors are then
renamed to Hugging Face's names; the one real transformation is the fused QKV projection:

    megatron `linear_qkv` rows, per query group g of the `num_query_groups` groups:
        [q heads g·n … g·n + n − 1 | k head g | v head g]      (n = heads per group)
    each head `head_dim` rows. Hugging Face keeps q_proj, k_proj and v_proj apart, and its
    grouped-query attention gives query head i the key/value head i // n: the same grouping.

Megatron's RoPE (non-interleaved, `rotate_half`) is Hugging Face Llama's, so q and k need no
permutation. Dense models only: a MoE checkpoint is refused.
"""

from __future__ import annotations

import gc

# No cyclic collection while torch and megatron-core import (see trainer.train); it is back on,
# with their objects frozen out of its way, once the imports below are done.
gc.disable()

import argparse
import json
import logging
import os
import shutil
import sys
from pathlib import Path

import torch

# Before megatron-core: without CUDA it is imported without its kernel compiler (see compat).
from trainer import compat  # noqa: F401

# isort: split
from megatron.core import dist_checkpointing
from safetensors.torch import save_file

from trainer import model, parallel
from trainer.checkpoint import CorruptCheckpointError, verify
from trainer.config import ParallelConfig, TrainerConfig, load_config
from trainer.tokenizer import artifact, load_tokenizer
from trainer.tokenizer.byte import EOS_TOKEN, PAD_TOKEN, hf_tokenizer

gc.freeze()
gc.enable()

log = logging.getLogger("trainer.export")

HF_DTYPES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}
# Per-layer megatron names → Hugging Face names under `model.layers.{i}.`. Each tuple lists
# the spellings of one tensor: the local spec's separate norms, or Transformer Engine's norms
# fused into the following linear layer.
_LAYER_RENAMES = {
    "input_layernorm.weight": (
        "input_layernorm.weight",
        "self_attention.linear_qkv.layer_norm_weight",
    ),
    "post_attention_layernorm.weight": (
        "pre_mlp_layernorm.weight",
        "mlp.linear_fc1.layer_norm_weight",
    ),
    "self_attn.o_proj.weight": ("self_attention.linear_proj.weight",),
    "mlp.down_proj.weight": ("mlp.linear_fc2.weight",),
}


class ExportError(ValueError):
    """The checkpoint cannot be written in the Hugging Face Llama layout."""


# --------------------------------------------------------------------- the QKV layout


def split_qkv(
    fused: torch.Tensor, *, num_heads: int, num_query_groups: int, head_dim: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Megatron's fused `linear_qkv` weight (or bias) → separate q, k and v, rows in head order."""
    per_group = num_heads // num_query_groups
    rest = fused.shape[1:]
    grouped = fused.reshape(num_query_groups, per_group + 2, head_dim, *rest)
    q = grouped[:, :per_group].reshape(num_heads * head_dim, *rest)
    k = grouped[:, per_group].reshape(num_query_groups * head_dim, *rest)
    v = grouped[:, per_group + 1].reshape(num_query_groups * head_dim, *rest)
    return q.contiguous(), k.contiguous(), v.contiguous()


def merge_qkv(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    num_heads: int,
    num_query_groups: int,
    head_dim: int,
) -> torch.Tensor:
    """The inverse of `split_qkv`: q, k, v interleaved per query group as megatron stores them."""
    per_group = num_heads // num_query_groups
    rest = q.shape[1:]
    return torch.cat(
        [
            q.reshape(num_query_groups, per_group, head_dim, *rest),
            k.reshape(num_query_groups, 1, head_dim, *rest),
            v.reshape(num_query_groups, 1, head_dim, *rest),
        ],
        dim=1,
    ).reshape(-1, *rest)


# --------------------------------------------------------------------- loading


def load_weights(config: TrainerConfig, checkpoint: str | Path) -> dict[str, torch.Tensor]:
    """The checkpoint's model weights as full tensors, named as in an unsharded GPTModel."""
    path = Path(checkpoint)
    verify(path)
    if int(os.environ.get("WORLD_SIZE", "1")) != 1:
        raise ExportError("export runs in a single process; start it with python, not torchrun")
    single = config.model_copy(update={"parallel": ParallelConfig()})
    parallel.init(single.parallel, single.train.seed)
    try:
        # Weights do not depend on the rotary base; any value builds the same parameters.
        gpt = model.unwrap(model.build_model(single, rope_base=single.model.rope_base)[0])
        # As `CheckpointManager` saves them: the unwrapped GPTModel's keys, whatever wrappers.
        loaded = dist_checkpointing.load({"model": gpt.sharded_state_dict()}, str(path))
        with torch.no_grad():
            gpt.load_state_dict(loaded["model"], strict=True)
        return {
            name: tensor.detach().cpu()
            for name, tensor in gpt.state_dict().items()
            if isinstance(tensor, torch.Tensor) and not name.endswith("_extra_state")
        }
    finally:
        parallel.shutdown()


# --------------------------------------------------------------------- renaming


def check_exportable(config: TrainerConfig) -> None:
    """Raise ExportError for an architecture the Llama layout cannot hold."""
    moe = config.model.moe
    if moe is not None:
        raise ExportError(
            "model.moe is set: only dense models export to the Llama layout "
            f"({moe.num_experts} experts found)"
        )


def to_hf_state_dict(
    weights: dict[str, torch.Tensor], config: TrainerConfig
) -> dict[str, torch.Tensor]:
    """Megatron GPTModel names and layouts → Hugging Face `LlamaForCausalLM` ones.

    Every megatron tensor must be used exactly once: a leftover means an architecture this
    mapping does not know, and exporting it silently would lose weights.
    """
    check_exportable(config)
    arch = config.model
    head_dim = arch.hidden_size // arch.num_attention_heads
    heads = {
        "num_heads": arch.num_attention_heads,
        "num_query_groups": arch.num_query_groups,
        "head_dim": head_dim,
    }
    remaining = dict(weights)

    def take(*names: str) -> torch.Tensor:
        for name in names:
            if name in remaining:
                return remaining.pop(name)
        raise ExportError(f"checkpoint has none of {', '.join(names)}")

    hf: dict[str, torch.Tensor] = {
        "model.embed_tokens.weight": take("embedding.word_embeddings.weight")
    }
    for layer in range(arch.num_layers):
        src, dst = f"decoder.layers.{layer}.", f"model.layers.{layer}."
        for hf_name, names in _LAYER_RENAMES.items():
            hf[dst + hf_name] = take(*(src + name for name in names))
        q, k, v = split_qkv(take(src + "self_attention.linear_qkv.weight"), **heads)
        hf[dst + "self_attn.q_proj.weight"] = q
        hf[dst + "self_attn.k_proj.weight"] = k
        hf[dst + "self_attn.v_proj.weight"] = v
        if arch.qkv_bias:
            q, k, v = split_qkv(take(src + "self_attention.linear_qkv.bias"), **heads)
            hf[dst + "self_attn.q_proj.bias"] = q
            hf[dst + "self_attn.k_proj.bias"] = k
            hf[dst + "self_attn.v_proj.bias"] = v
            # Hugging Face's `attention_bias` also gives o_proj a bias, which megatron's output
            # projection has not: a zero bias is the same function, and nothing loads uninitialised.
            hf[dst + "self_attn.o_proj.bias"] = torch.zeros(arch.hidden_size, dtype=q.dtype)
        gate, up = torch.chunk(take(src + "mlp.linear_fc1.weight"), 2, dim=0)
        # Copies: safetensors refuses tensors that share storage.
        hf[dst + "mlp.gate_proj.weight"] = gate.clone()
        hf[dst + "mlp.up_proj.weight"] = up.clone()
    hf["model.norm.weight"] = take("decoder.final_layernorm.weight")
    if arch.tie_embeddings:
        remaining.pop("output_layer.weight", None)  # a pipeline's last stage keeps a copy
    else:
        hf["lm_head.weight"] = take("output_layer.weight")
    if remaining:
        raise ExportError(
            "checkpoint tensors with no Llama counterpart: " + ", ".join(sorted(remaining))
        )
    return hf


def hf_config(config: TrainerConfig, *, rope_base: float, dtype: torch.dtype) -> dict:
    """`config.json` of a `LlamaForCausalLM`, readable by transformers 4.x and 5.x.

    4.x reads `rope_theta` and `torch_dtype`; 5.x reads `rope_parameters` and `dtype` (and
    still accepts the old keys), so both are written.
    """
    arch = config.model
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": arch.hidden_size,
        "intermediate_size": arch.ffn_hidden_size,
        "num_hidden_layers": arch.num_layers,
        "num_attention_heads": arch.num_attention_heads,
        "num_key_value_heads": arch.num_query_groups,
        "head_dim": arch.hidden_size // arch.num_attention_heads,
        "vocab_size": arch.vocab_size,
        "max_position_embeddings": arch.max_position_embeddings,
        "hidden_act": "silu",
        "rms_norm_eps": arch.norm_eps,
        "rope_theta": float(rope_base),
        "rope_parameters": {"rope_type": "default", "rope_theta": float(rope_base)},
        "tie_word_embeddings": arch.tie_embeddings,
        "attention_bias": arch.qkv_bias,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "initializer_range": 0.02,
        "bos_token_id": None,
        "eos_token_id": None,
        "pad_token_id": None,
        "use_cache": True,
        "torch_dtype": HF_DTYPES[dtype],
        "dtype": HF_DTYPES[dtype],
    }


# --------------------------------------------------------------------- the command


def export(
    config: TrainerConfig,
    checkpoint: str | Path,
    out: str | Path,
    *,
    rope_base: float | None = None,
) -> Path:
    """Write `model.safetensors` and `config.json` (and the tokenizer, if it is a file) to `out`."""
    check_exportable(config)  # before loading anything
    if rope_base is None:
        # The last stage's base is the one the final weights were trained with.
        rope_base = config.stages[-1].rope_base or config.model.rope_base
    weights = load_weights(config, checkpoint)
    tensors = to_hf_state_dict(weights, config)
    dtype = next(iter(tensors.values())).dtype
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    special = write_tokenizer(config.data.tokenizer, out)
    hf = {**hf_config(config, rope_base=rope_base, dtype=dtype), **special}
    (out / "config.json").write_text(json.dumps(hf, indent=2) + "\n")
    log.info("exported %s (%d tensors) to %s", checkpoint, len(tensors), out)
    return out


def write_tokenizer(spec: str, out: Path) -> dict[str, int]:
    """Put a Hugging Face tokenizer beside the weights; its special ids for config.json.

    `AutoTokenizer` must load it with no network (lm-eval's `hf` model does): the byte
    tokenizer is written as its `tokenizers` equivalent, and a bare `tokenizer.json` gets a
    `tokenizer_config.json` naming `PreTrainedTokenizerFast`, not the Llama class the model's
    `config.json` would otherwise suggest.
    """
    try:
        tokenizer = load_tokenizer(spec)
    except (OSError, ValueError) as exc:
        log.warning("tokenizer %r not copied: %s", spec, exc)
        return {}
    if spec == "byte":
        hf_tokenizer().save(str(out / "tokenizer.json"))
        _write_tokenizer_config(out, eos=EOS_TOKEN, pad=PAD_TOKEN)
    else:
        source = Path(spec)
        file = source / "tokenizer.json" if source.is_dir() else source
        shutil.copyfile(file, out / "tokenizer.json")
        for name in ("tokenizer_config.json", "special_tokens_map.json"):
            if (file.parent / name).is_file():
                shutil.copyfile(file.parent / name, out / name)
        if not (out / "tokenizer_config.json").is_file():
            eos = artifact.load(file).id_to_token(tokenizer.eos_id)
            _write_tokenizer_config(out, eos=eos, pad=None)
    ids = {"eos_token_id": tokenizer.eos_id}
    if (pad := getattr(tokenizer, "pad_id", None)) is not None:
        ids["pad_token_id"] = pad
    return ids


def _write_tokenizer_config(out: Path, *, eos: str, pad: str | None) -> None:
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "eos_token": eos,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
    }
    if pad is not None:
        config["pad_token"] = pad
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m trainer.export", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--config", required=True, help="the TrainerConfig JSON the run used")
    parser.add_argument("--checkpoint", required=True, help="a published step-XXXXXXXX directory")
    parser.add_argument("--out", required=True, help="output directory (created)")
    parser.add_argument(
        "--rope-base", type=float, default=None, help="RoPE base (default: the last stage's)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        export(load_config(args.config), args.checkpoint, args.out, rope_base=args.rope_base)
    except (ExportError, CorruptCheckpointError) as exc:
        print(f"export: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

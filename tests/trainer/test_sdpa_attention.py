"""SDPACoreAttention computes what megatron's DotProductAttention computes, gradients included.

The comparisons run in a subprocess: megatron's parallel state and the trainer's CPU mode are
process-wide, and the rest of the suite should not inherit them.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
from megatron.core.transformer.dot_product_attention import DotProductAttention

from trainer.sdpa_attention import SDPACoreAttention, use_sdpa_core_attention

ATOL = 1e-5

COMPARE = """
import json
import torch
from megatron.core.transformer.dot_product_attention import DotProductAttention
from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
from megatron.core.transformer.enums import AttnMaskType
from trainer import model, parallel
from trainer.config import ParallelConfig, example_config
from trainer.sdpa_attention import SDPACoreAttention, use_sdpa_core_attention

parallel.init(ParallelConfig(), 0)
base = example_config()  # 4 heads in 2 query groups, head_dim 16
results = {}


def config_with(groups):
    arch = base.model.model_copy(update={"num_query_groups": groups})
    return model.transformer_config(base.model_copy(update={"model": arch}))


def max_diffs(make_inputs, config, mask=None):
    torch.manual_seed(0)
    inputs = make_inputs()
    outputs, grads = [], []
    for cls in (DotProductAttention, SDPACoreAttention):
        attention = cls(config, 1, AttnMaskType.causal, "self")
        leaves = [t.detach().clone().requires_grad_() for t in inputs]
        out = attention(*leaves, mask)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        outputs.append(out)
        grads.append([t.grad for t in leaves])
    return {
        "shape": [list(o.shape) for o in outputs],
        "out": (outputs[0] - outputs[1]).abs().max().item(),
        "grad": max((a - b).abs().max().item() for a, b in zip(*grads)),
    }


s, b, heads, hd = 48, 3, 4, 16
for groups in (2, 4, 1):
    qkv = lambda: [torch.randn(s, b, heads, hd), torch.randn(s, b, groups, hd), torch.randn(s, b, groups, hd)]
    results[f"causal groups={groups}"] = max_diffs(qkv, config_with(groups))
# An explicit mask (True = hidden): causal plus left padding of a different length per sample.
hidden = torch.triu(torch.ones(s, s, dtype=torch.bool), diagonal=1).repeat(b, 1, 1, 1)
for sample, pad in enumerate((0, 5, 11)):
    hidden[sample, :, :, :pad] = True
    hidden[sample, :, torch.arange(s), torch.arange(s)] = False  # every query sees itself
qkv = lambda: [torch.randn(s, b, heads, hd), torch.randn(s, b, 2, hd), torch.randn(s, b, 2, hd)]
results["explicit mask"] = max_diffs(qkv, config_with(2), hidden.contiguous())

# The whole GPTModel: the same weights with either core attention give the same logits and grads.
# megatron's own local spec (DotProductAttention) against the trainer's (SDPA swapped in).
layer_spec = model.layer_spec
models = []
for reference in (True, False):
    if reference:
        model.layer_spec = lambda c: get_gpt_layer_local_spec(normalization="RMSNorm")
    models.append(model.unwrap(model.build_model(base, rope_base=10000.0)[0]))
    model.layer_spec = layer_spec
models[1].load_state_dict(models[0].state_dict())
tokens = torch.randint(0, 258, (2, 64), generator=torch.Generator().manual_seed(1))
positions = torch.arange(64).unsqueeze(0).expand_as(tokens)
logits, grads = [], []
for gpt in models:
    out = gpt(tokens, positions, None)
    names, params = zip(*gpt.named_parameters())
    # autograd.grad, not backward: megatron's DDP hooks would move `.grad` into its buffers.
    grads.append(dict(zip(names, torch.autograd.grad(out.logsumexp(-1).mean(), params))))
    logits.append(out)
cores = [type(gpt.decoder.layers[0].self_attention.core_attention).__name__ for gpt in models]
results["gpt model"] = {
    "cores": cores,
    "out": (logits[0] - logits[1]).abs().max().item(),
    "grad": max((g - grads[1][n]).abs().max().item() for n, g in grads[0].items()),
}
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def comparisons() -> dict:
    result = subprocess.run(
        [sys.executable, "-c", COMPARE], capture_output=True, text=True, timeout=240
    )
    if result.returncode != 0:
        raise AssertionError(f"comparison failed ({result.returncode}):\n{result.stderr[-4000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("case", ["causal groups=2", "causal groups=4", "causal groups=1"])
def test_sdpa_matches_dot_product_attention_for_causal_attention(comparisons, case) -> None:
    """GQA (2 groups), plain multi-head (4) and multi-query (1); keys not expanded."""
    diffs = comparisons[case]
    assert diffs["shape"][0] == diffs["shape"][1] == [48, 3, 64]
    assert diffs["out"] < ATOL and diffs["grad"] < ATOL, diffs


def test_sdpa_matches_dot_product_attention_with_an_explicit_mask(comparisons) -> None:
    diffs = comparisons["explicit mask"]
    assert diffs["out"] < ATOL and diffs["grad"] < ATOL, diffs


def test_a_gpt_model_with_sdpa_gives_the_same_logits_and_gradients(comparisons) -> None:
    diffs = comparisons["gpt model"]
    assert diffs["cores"] == ["DotProductAttention", "SDPACoreAttention"]
    assert diffs["out"] < ATOL and diffs["grad"] < ATOL, diffs


def test_use_sdpa_core_attention_swaps_only_the_core_attention_of_a_copy() -> None:
    spec = get_gpt_layer_local_spec(normalization="RMSNorm")
    swapped = use_sdpa_core_attention(spec)
    attention, original = swapped.submodules.self_attention, spec.submodules.self_attention
    assert attention.submodules.core_attention is SDPACoreAttention
    assert original.submodules.core_attention is DotProductAttention
    assert attention.submodules.linear_qkv is original.submodules.linear_qkv
    assert attention.params == original.params


def test_use_sdpa_core_attention_is_idempotent() -> None:
    spec = use_sdpa_core_attention(get_gpt_layer_local_spec(normalization="RMSNorm"))
    again = use_sdpa_core_attention(spec)
    assert again.submodules.self_attention.submodules.core_attention is SDPACoreAttention

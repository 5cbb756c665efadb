"""The CPU compatibility patch: active without CUDA, a strict no-op with it."""

from __future__ import annotations

import subprocess
import sys

import torch

from trainer import compat


def test_it_does_nothing_when_cuda_is_present(monkeypatch):
    monkeypatch.setattr(compat, "_enabled", False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    current_device, get_rng_state = torch.cuda.current_device, torch.cuda.get_rng_state

    assert compat.enable_cpu_mode() is False

    assert torch.cuda.current_device is current_device
    assert torch.cuda.get_rng_state is get_rng_state
    assert not compat.cpu_mode_enabled()


def test_on_cpu_megatron_cuda_idioms_land_on_the_cpu():
    # In a fresh interpreter: the patch is process-wide by design.
    script = """
import torch
from trainer.compat import enable_cpu_mode
assert enable_cpu_mode() is True
t = torch.zeros(2, device="cuda")
u = torch.ones(1, device=torch.cuda.current_device())
assert t.device.type == "cpu" and u.device.type == "cpu"
assert t.cuda() is t and t.to("cuda").device.type == "cpu"
assert torch.zeros(1).type() == "torch.cuda.FloatTensor"
state = torch.cuda.get_rng_state(); torch.cuda.set_rng_state(state)
torch.cuda.synchronize(); torch.cuda.current_stream().wait_stream(None)
print("ok")
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "ok", result.stderr[-2000:]


def test_raising_the_rope_base_changes_the_rotary_frequencies_even_after_caching():
    script = """
import torch
from trainer.compat import enable_cpu_mode
enable_cpu_mode()
from megatron.core.models.common.embeddings.rotary_pos_embedding import RotaryEmbedding
from trainer.model import rebase_rotary

def rotary(base):
    return RotaryEmbedding(kv_channels=16, rotary_percent=1.0, rotary_base=base, use_cpu_initialization=True)

embedding = rotary(10_000)
before = embedding(32).clone()  # now cached for length 32
rebase_rotary(embedding, 1_000_000)
after = embedding(32)
assert not torch.allclose(before, after)
assert torch.allclose(after, rotary(1_000_000)(32))
print("ok")
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "ok", result.stderr[-2000:]

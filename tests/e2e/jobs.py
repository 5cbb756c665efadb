"""The jobs the whole-loop runs submit: `examples/demo.yaml` shrunk to one CPU process.

The tiny Llama on the three embedded channels, `en` fed random tokens for a stretch when asked:
8 sequences a step, one stage, a checkpoint every few steps, eval only at the end.
"""

from __future__ import annotations

import copy
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from pretrainctl.client import ApiClient

DEMO = Path(__file__).resolve().parents[2] / "examples" / "demo.yaml"
SEQUENCES_PER_STEP = 8


@cache
def _demo() -> dict[str, Any]:
    return yaml.safe_load(DEMO.read_text())


def demo_spec(
    name: str,
    *,
    steps: int,
    garbage: tuple[int, int] | None = None,
    seq_length: int = 128,
    checkpoint_every: int = 10,
    rollback_margin_steps: int = 10,
    skip_steps_after: int = 12,
) -> dict[str, Any]:
    """examples/demo.yaml for one CPU process, `steps` long, its `en` stretch at `garbage`."""
    tokens_per_step = SEQUENCES_PER_STEP * seq_length
    spec = copy.deepcopy(_demo())
    spec["name"] = name
    spec["resources"]["gpus_per_node"] = 1
    spec["batch"]["global_batch_size"] = SEQUENCES_PER_STEP
    spec["schedule"]["warmup_tokens"] = 8 * tokens_per_step
    pretrain = spec["stages"][0]
    pretrain["tokens"] = steps * tokens_per_step
    pretrain["seq_length"] = seq_length
    for source in pretrain["data"]:
        source.pop("corrupt_steps", None)
        if source["channel"] == "en" and garbage is not None:
            source["corrupt_steps"] = [list(garbage)]
    spec["stages"] = [pretrain]  # the anneal stage would only add minutes
    spec["checkpoint"] = {"interval_steps": checkpoint_every, "keep_last": 4}
    spec["eval"] = {"interval_steps": steps, "samples_per_channel": 8}
    spec["watchdog"].update(
        recover_window_steps=6,
        rollback_margin_steps=rollback_margin_steps,
        skip_steps_after=skip_steps_after,
    )
    return spec


def submit(api: ApiClient, spec: dict[str, Any]) -> dict[str, Any]:
    return api.submit(yaml.safe_dump(spec), yaml=True)

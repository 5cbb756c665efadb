"""Held-out evaluation: loss and perplexity per channel on fixed windows."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Protocol

import torch

from trainer import data

if TYPE_CHECKING:
    from trainer.config import TrainerConfig
    from trainer.parallel import Layout


class Evaluated(Protocol):
    """What evaluation uses of the training loop (`train.Trainer` is one)."""

    config: TrainerConfig
    stage_index: int
    layout: Layout
    model: list[torch.nn.Module]
    channels: list[str]

    def dataset(self, stage_index: int) -> data.MixtureDataset: ...

    def shard(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]: ...

    def forward_backward(
        self, micro_batches: Any, seq_length: int, forward_only: bool = False, loss_factor: float = 1.0
    ) -> Any: ...


@torch.no_grad()
def evaluate(trainer: Evaluated) -> dict[str, float]:
    """PPL per channel on `samples_per_channel` fixed held-out windows of the current stage."""
    config = trainer.config
    stage = config.stages[trainer.stage_index]
    dataset = trainer.dataset(trainer.stage_index)
    batch = dataset.eval_batch(config.eval.samples_per_channel)
    # Pad the eval set to whole micro-batches on every data-parallel rank, masking the padding.
    per_pass = config.batch.micro_batch_size * trainer.layout.data_size
    padded = -(-batch["tokens"].shape[0] // per_pass) * per_pass
    batch = _pad(batch, padded)
    micro_batches = data.micro_batches(trainer.shard(batch), config.batch.micro_batch_size)
    for chunk in trainer.model:
        chunk.eval()
    stats = trainer.forward_backward(micro_batches, stage.seq_length, forward_only=True)
    for chunk in trainer.model:
        chunk.train()
    sums = stats["by_channel"]
    metrics: dict[str, float] = {}
    for index, name in enumerate(trainer.channels):
        if sums[1, index] > 0:
            loss = float(sums[0, index] / sums[1, index])
            metrics[f"eval/loss/{name}"] = loss
            metrics[f"eval/ppl/{name}"] = math.exp(min(loss, 50.0))
    total = float(stats["loss_sum"] / stats["tokens"])
    metrics["eval/loss"] = total
    metrics["eval/ppl"] = math.exp(min(total, 50.0))
    return metrics


def _pad(batch: dict[str, torch.Tensor], rows: int) -> dict[str, torch.Tensor]:
    missing = rows - batch["tokens"].shape[0]
    if missing <= 0:
        return batch
    padded = {}
    for key, value in batch.items():
        filler = value[:1].expand(missing, *value.shape[1:]).clone()
        if key == "loss_mask":
            filler.zero_()
        padded[key] = torch.cat([value, filler])
    return padded

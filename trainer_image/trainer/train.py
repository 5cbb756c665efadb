"""Entry point of the trainer pods: `python -m trainer.train --config FILE` (under torchrun)."""

from __future__ import annotations

import argparse
import json
import logging
import math
import signal
import sys
import time
from functools import partial
from typing import Any

import torch
import torch.distributed as dist
from megatron.core import parallel_state, tensor_parallel
from megatron.core.distributed import finalize_model_grads
from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
from megatron.core.pipeline_parallel import get_forward_backward_func

from trainer import data, model, parallel
from trainer.checkpoint import CheckpointManager
from trainer.config import (
    TrainerConfig,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    example_config,
)
from trainer.evaluate import evaluate
from trainer.lr_schedule import lr_at, phase_at, stage_at
from trainer.report import MetricsReporter

log = logging.getLogger("trainer")


class NonFiniteError(RuntimeError):
    """The loss or gradient norm stayed NaN/Inf for too many steps in a row."""


class Trainer:
    """The training loop: one object whose few methods tell the story."""

    def __init__(self, config: TrainerConfig) -> None:
        self.config = config
        self.layout = parallel.init(config.parallel, config.train.seed)
        self.channels = _channel_registry(config)
        self.tokenizer = data.load_tokenizer(config.data.tokenizer)
        self.datasets: dict[int, data.MixtureDataset] = {}
        self.stage_index, stage, _ = stage_at(0, config)
        self.model = model.build_model(config, rope_base=self._rope_base(stage))
        self.model_config = model.unwrap(self.model[0]).config
        self.model_config.finalize_model_grads_func = finalize_model_grads
        self.optimizer = get_megatron_optimizer(_optimizer_config(config), self.model)
        if config.precision.dtype == "fp16":
            self.model_config.grad_scale_func = self.optimizer.scale_loss
        self.step = 0
        self.tokens = 0
        self.nonfinite_in_a_row = 0
        self.reporter = MetricsReporter.from_config(config) if self.layout.reports else None
        self.checkpoints = CheckpointManager(config, self.layout)
        self.stop_requested = False
        self.total_steps = sum(s.steps for s in config.stages)
        restored = self.checkpoints.restore(self)
        if restored:
            log.info("resumed from %s at step %d", restored, self.step)

    # --- what a rollback restores -------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Counters that ride along with the model and optimizer in a checkpoint."""
        return {
            "step": self.step,
            "tokens": self.tokens,
            "rng": torch.get_rng_state(),
            "data_seed": self.config.data.seed,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])
        self.tokens = int(state["tokens"])
        torch.set_rng_state(state["rng"])

    # --- the loop -----------------------------------------------------------------------------

    def train(self) -> None:
        signal.signal(signal.SIGTERM, self._on_sigterm)
        self.checkpoints.save_initial(self)
        while self.step < self.total_steps and not self.stop_requested:
            metrics = self.train_step()
            self.step += 1
            self._report(self.step - 1, metrics)
            if self._due(self.config.eval.interval_steps):
                self._report(self.step - 1, evaluate(self), phase="eval")
            if self._due(self.config.checkpoint.interval_steps) or self.step == self.total_steps:
                self.checkpoints.save(self)
        if self.stop_requested:
            log.warning("SIGTERM: saving a checkpoint at step %d before exiting", self.step)
            self.checkpoints.save(self)

    def train_step(self) -> dict[str, float]:
        """One optimizer step over a global batch; returns its metrics (global rank 0)."""
        config = self.config
        started = time.perf_counter()
        stage_index, stage, _ = stage_at(self.step, config)
        if stage_index != self.stage_index:
            model.set_rope_base(self.model, self._rope_base(stage))
            self.stage_index = stage_index
        lr = lr_at(self.step, config)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        batch_index = data.batch_index(self.step, config.data.skip_ranges)
        micro_batches = self._micro_batches(stage_index, batch_index)
        for chunk in self.model:
            chunk.zero_grad_buffer()
        self.optimizer.zero_grad()
        stats = self.forward_backward(micro_batches, stage.seq_length)
        loss_finite = bool(torch.isfinite(stats["loss_sum"]).item())
        grads_finite = _all_true(all(_grads_finite(chunk) for chunk in self.model))
        metrics = _loss_metrics(stats, self.channels)
        metrics["lr"] = lr
        # Skip ranges are in batch-index space; a rollback maps steps to batches through this.
        metrics["data/batch_index"] = float(batch_index)
        skipped = False
        if config.precision.dtype != "fp16" and not (loss_finite and grads_finite):
            # Never let a NaN reach the weights: skip the update, report, and let the watchdog act.
            skipped = True
            self.nonfinite_in_a_row += 1
            metrics["grad_norm"] = math.nan
            log.error("step %d: loss or gradients are not finite; update skipped", self.step)
            if self.nonfinite_in_a_row >= config.train.max_nonfinite_steps:
                self._report(self.step, {**metrics, "step/skipped": 1.0})
                raise NonFiniteError(
                    f"loss or gradients not finite for {self.nonfinite_in_a_row} steps in a row, "
                    f"last at step {self.step}"
                )
        else:
            updated, grad_norm, _ = self.optimizer.step()
            skipped = not updated
            metrics["grad_norm"] = float(grad_norm) if grad_norm is not None else math.nan
            self.nonfinite_in_a_row = 0
        if config.precision.dtype == "fp16":
            metrics["loss_scale"] = float(self.optimizer.get_loss_scale().item())
        metrics["step/skipped"] = float(skipped)
        step_tokens = config.batch.global_batch_size * stage.seq_length
        self.tokens += step_tokens
        elapsed = time.perf_counter() - started
        metrics["throughput/tokens_per_s"] = step_tokens / elapsed
        metrics["throughput/step_time_s"] = elapsed
        flops = model.flops_per_token(config, stage.seq_length) * step_tokens
        if config.train.peak_tflops:
            achieved = flops / elapsed / self.layout.world_size
            metrics["throughput/mfu"] = achieved / (config.train.peak_tflops * 1e12)
        return metrics

    def close(self) -> None:
        if self.reporter is not None:
            self.reporter.close()
        parallel.shutdown()

    # --- pieces -------------------------------------------------------------------------------

    def dataset(self, stage_index: int) -> data.MixtureDataset:
        if stage_index not in self.datasets:
            stage = self.config.stages[stage_index]
            self.datasets[stage_index] = data.MixtureDataset(
                sources=[(s.channel, s.path, s.weight, s.corrupt) for s in stage.data],
                channel_names=self.channels,
                seq_length=stage.seq_length,
                seed=self.config.data.seed,
                tokenizer=self.tokenizer,
                cache_dir=self.config.data.cache_dir,
                eval_samples_per_channel=self.config.eval.samples_per_channel,
            )
        return self.datasets[stage_index]

    def shard(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """This data-parallel rank's rows of a global batch."""
        return data.shard(batch, self.layout.data_rank, self.layout.data_size)

    def _micro_batches(self, stage_index: int, batch_index: int) -> list[dict[str, torch.Tensor]]:
        batch = self.dataset(stage_index).batch(batch_index, self.config.batch.global_batch_size)
        return data.micro_batches(self.shard(batch), self.config.batch.micro_batch_size)

    def forward_backward(self, micro_batches, seq_length: int, forward_only: bool = False):
        """Run the pipeline schedule; return global loss sums per channel (on every rank)."""
        forward_backward = get_forward_backward_func()
        chunks = len(self.model)
        iterators = [iter(micro_batches) for _ in range(chunks)] if chunks > 1 else iter(micro_batches)
        outputs = forward_backward(
            forward_step_func=partial(_forward_step, z_loss=self.config.optimizer.z_loss),
            data_iterator=iterators,
            model=self.model if chunks > 1 else self.model[0],
            num_microbatches=len(micro_batches),
            seq_length=seq_length,
            micro_batch_size=self.config.batch.micro_batch_size,
            forward_only=forward_only,
        )
        return _gather_stats(outputs, len(self.channels), self.layout)

    def _rope_base(self, stage) -> float:
        return stage.rope_base or self.config.model.rope_base

    def _due(self, interval: int) -> bool:
        return interval > 0 and self.step % interval == 0

    def _report(self, step: int, metrics: dict[str, float], phase: str | None = None) -> None:
        if self.reporter is None:
            return
        _, stage, _ = stage_at(min(step, self.total_steps - 1), self.config)
        self.reporter.report(
            step=step,
            stage=stage.name,
            phase=phase or phase_at(step, self.config),
            tokens=self.tokens,
            metrics=metrics,
        )

    def _on_sigterm(self, *_: object) -> None:
        # Pod eviction: finish the current step, save, exit.
        self.stop_requested = self.config.checkpoint.save_on_sigterm


def _forward_step(data_iterator, chunk, *, z_loss: float):
    batch = next(data_iterator)
    tokens, labels = batch["tokens"], batch["labels"]
    positions = torch.arange(tokens.shape[1], device=tokens.device).unsqueeze(0).expand_as(tokens)
    if z_loss > 0:
        output = chunk(tokens, positions, None)
        if model.unwrap(chunk).post_process:
            output = _loss_with_z_loss(output, labels, z_loss)
    else:
        output = chunk(tokens, positions, None, labels=labels)
    return output, partial(_loss_func, batch["loss_mask"], batch["channel"])


def _loss_with_z_loss(logits: torch.Tensor, labels: torch.Tensor, coefficient: float):
    """Per-token cross entropy plus PaLM's z-loss, coefficient × log²Z, over vocab-parallel logits."""
    logits = logits.float()
    ce = tensor_parallel.vocab_parallel_cross_entropy(logits.clone(), labels)
    local_max = logits.max(dim=-1, keepdim=True).values.detach()
    global_max = local_max.clone()
    dist.all_reduce(global_max, op=dist.ReduceOp.MAX, group=parallel_state.get_tensor_model_parallel_group())
    sum_exp = torch.exp(logits - global_max).sum(dim=-1, keepdim=True)
    sum_exp = tensor_parallel.reduce_from_tensor_model_parallel_region(sum_exp)
    log_z = (torch.log(sum_exp) + global_max).squeeze(-1)
    return ce + coefficient * log_z.square()


def _loss_func(loss_mask: torch.Tensor, channel: torch.Tensor, per_token: torch.Tensor):
    """Megatron's 3-tuple contract: summed loss, token count, and what to report."""
    per_token = per_token.float()
    masked = per_token * loss_mask
    loss_sum = masked.sum()
    num_tokens = loss_mask.sum().to(torch.int)
    return loss_sum, num_tokens, {
        "per_sample": torch.stack([masked.sum(dim=1), loss_mask.sum(dim=1)]).detach(),
        "channel": channel,
    }


def _gather_stats(outputs, num_channels: int, layout: parallel.Layout) -> dict[str, torch.Tensor]:
    """Sum per-channel loss and tokens over micro-batches and data-parallel ranks, to every rank."""
    sums = torch.zeros(2, num_channels + 1, dtype=torch.float64)
    # Only one tensor-parallel rank of the last stage counts: its peers hold the same values.
    if layout.is_last_stage and layout.tensor_rank == 0:
        for output in outputs:
            per_sample = output["per_sample"].double()
            channel = output["channel"].long()
            sums[:, :num_channels].index_add_(1, channel, per_sample)
    sums[:, num_channels] = sums[:, :num_channels].sum(dim=1)
    dist.all_reduce(sums)
    return {"loss_sum": sums[0, num_channels], "tokens": sums[1, num_channels], "by_channel": sums}


def _loss_metrics(stats: dict[str, torch.Tensor], channels: list[str]) -> dict[str, float]:
    sums = stats["by_channel"]
    metrics = {"loss": float(stats["loss_sum"] / stats["tokens"])}
    for index, name in enumerate(channels):
        if sums[1, index] > 0:
            metrics[f"loss/{name}"] = float(sums[0, index] / sums[1, index])
            metrics[f"tokens/{name}"] = float(sums[1, index])
    return metrics


def _grads_finite(chunk) -> bool:
    # One reduction per buffer: a NaN or Inf anywhere makes the sum non-finite (~50x cheaper
    # than an elementwise isfinite over every gradient).
    return all(bool(torch.isfinite(buffer.grad_data.sum())) for buffer in chunk.buffers)


def _all_true(flag: bool) -> bool:
    value = torch.tensor([1 if flag else 0], dtype=torch.int32)
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return bool(value.item())


def _channel_registry(config: TrainerConfig) -> list[str]:
    """Every channel of every stage in order of first appearance: ids stay fixed across stages."""
    names: list[str] = []
    for stage in config.stages:
        for source in stage.data:
            if source.channel not in names:
                names.append(source.channel)
    return names


def _optimizer_config(config: TrainerConfig) -> OptimizerConfig:
    opt, precision = config.optimizer, config.precision
    scale = precision.loss_scale
    return OptimizerConfig(
        optimizer="adam",
        lr=opt.lr,
        min_lr=opt.min_lr,
        weight_decay=opt.weight_decay,
        adam_beta1=opt.adam_beta1,
        adam_beta2=opt.adam_beta2,
        adam_eps=opt.adam_eps,
        clip_grad=opt.clip_grad,
        bf16=precision.dtype == "bf16",
        fp16=precision.dtype == "fp16",
        params_dtype=model.DTYPES[precision.dtype],
        initial_loss_scale=scale.initial_scale,
        min_loss_scale=scale.min_scale,
        loss_scale_window=scale.growth_interval,
        hysteresis=scale.hysteresis,
        use_distributed_optimizer=config.parallel.distributed_optimizer,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.train", description=__doc__)
    parser.add_argument("--config", help="TrainerConfig JSON file")
    parser.add_argument("--override", action="append", default=[], metavar="dotted.key=value")
    parser.add_argument("--example-config", action="store_true", help="print a tiny CPU config and exit")
    args = parser.parse_args(argv)
    if args.example_config:
        print(json.dumps(config_to_dict(example_config()), indent=2))
        return 0
    if not args.config:
        parser.error("--config is required")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    with open(args.config) as handle:
        raw = json.load(handle)
    config = config_from_dict(apply_overrides(raw, args.override))
    trainer = Trainer(config)
    try:
        trainer.train()
    finally:
        trainer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

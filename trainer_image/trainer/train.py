"""Entry point of the trainer pods: `python -m trainer.train --config FILE` (under torchrun)."""

from __future__ import annotations

import gc

# Importing torch and megatron-core allocates millions of objects that live as long as the
# process, and the cyclic collector walks them again and again while they load: a quarter of a
# trainer's start on CPU (0.75 s of 3.2). It is off until the imports below are done; then those
# objects are frozen out of its way (`gc.freeze`) for the rest of the run.
gc.disable()

import argparse
import json
import logging
import math
import os
import signal
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

# Before megatron-core: without CUDA it is imported without its kernel compiler (see compat).
from trainer import compat  # noqa: F401

# isort: split
from megatron.core import parallel_state, tensor_parallel
from megatron.core.distributed import finalize_model_grads
from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
from megatron.core.pipeline_parallel import get_forward_backward_func

from trainer import children, data, faults, model, outcome, parallel
from trainer.checkpoint import CheckpointManager
from trainer.config import (
    TrainerConfig,
    config_to_dict,
    example_config,
    load_config,
    validate,
)
from trainer.evaluate import evaluate
from trainer.lr_schedule import lr_at, phase_at, stage_at
from trainer.report import MetricsReporter
from trainer.step_guard import SkipReason, StepGuard, optimizer_step

gc.freeze()
gc.enable()

log = logging.getLogger("trainer")

# The metric that says when a step ended (unix seconds), and the phase of checkpoint timings.
STEP_END_METRIC = "time/step_end_s"
CHECKPOINT_PHASE = "checkpoint"


class Trainer:
    """The training loop: one object whose few methods tell the story."""

    def __init__(self, config: TrainerConfig) -> None:
        self.config = config
        # Pod eviction from here on ends the run as preempted, with a checkpoint where it can.
        self.stop_requested = False
        self.sigterm_at: float | None = None  # time.monotonic() of the first SIGTERM
        signal.signal(signal.SIGTERM, self._on_sigterm)
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
        self.channel_tokens = [0] * len(self.channels)  # tokens trained on, per channel
        self.guard = StepGuard(config.train)
        self.reporter = MetricsReporter.from_config(config) if self.layout.reports else None
        self.checkpoints = CheckpointManager(config, self.layout)
        self.total_steps = sum(s.steps for s in config.stages)
        try:
            restored = self.checkpoints.restore(self)
        except BaseException:
            self.close()
            raise
        if restored:
            log.info("resumed from %s at step %d", restored, self.step)
            self._report_checkpoint_time("checkpoint/load_s", self.checkpoints.load_s)

    # --- what a rollback restores -------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Counters that ride along with the model and optimizer in a checkpoint: plain ints,
        tensors and containers, so that they load with `weights_only` (checkpoint.py)."""
        return {
            "step": int(self.step),
            "tokens": int(self.tokens),
            "channel_tokens": dict(zip(self.channels, self.channel_tokens, strict=True)),
            "rng": torch.get_rng_state(),
            "data_seed": int(self.config.data.seed),
            "step_guard": self.guard.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])
        self.tokens = int(state["tokens"])
        saved = state.get("channel_tokens", {})  # checkpoints from before the counters: from 0
        self.channel_tokens = [int(saved.get(name, 0)) for name in self.channels]
        torch.set_rng_state(state["rng"])
        if "step_guard" in state:  # checkpoints from before the guard start it afresh
            self.guard.load_state_dict(state["step_guard"])

    # --- the loop -----------------------------------------------------------------------------

    def train(self) -> outcome.Ending:
        """Train to the end of the run, or until SIGTERM; say how it ended."""
        started_at = self.step
        if self.checkpoints.save_initial(self) is not None:
            self._report_checkpoint_time("checkpoint/save_s", self.checkpoints.last_save_s)
        while self.step < self.total_steps and not self._stop_agreed():
            if faults.hangs_before(self.step, self.config.faults):
                log.warning("fault injection: hanging before step %d", self.step)
                faults.hang(lambda: self.stop_requested)
                return outcome.Ending(
                    outcome.PREEMPTED,
                    step=self.step,
                    message=f"SIGTERM while hanging before step {self.step} (fault injection); "
                    "no checkpoint saved",
                )
            metrics = self.train_step()
            self.step += 1
            self._report(self.step - 1, metrics)
            if self._due(self.config.eval.interval_steps):
                self._report(self.step - 1, evaluate(self), phase="eval")
            if self._due(self.config.checkpoint.interval_steps) or self.step == self.total_steps:
                self._save()
        if self.step == self.total_steps:
            return outcome.Ending(outcome.COMPLETED, step=self.step, message="training completed")
        saved = None
        if self.config.checkpoint.save_on_sigterm and self.step > started_at:
            log.warning("SIGTERM: saving a checkpoint at step %d before exiting", self.step)
            saved = str(self._save())
        return outcome.Ending(
            outcome.PREEMPTED,
            step=self.step,
            message=f"SIGTERM at step {self.step}; "
            + (f"saved {saved}" if saved else "no checkpoint saved")
            + self._within_grace(),
            checkpoint=saved,
        )

    def _within_grace(self) -> str:
        """How long the stop took of the grace period the service gave (a warning if it ran over:
        a bigger checkpoint or slower storage than the planner assumed)."""
        grace = self.config.checkpoint.termination_grace_s
        if self.sigterm_at is None:
            return ""  # another rank got the signal; this one stopped with it
        took = time.monotonic() - self.sigterm_at
        if grace is None:
            return f" in {took:.1f}s"
        if took > grace:
            log.warning("stopping took %.1fs, past the %.0fs grace period", took, grace)
        return f" in {took:.1f}s of a {grace:g}s grace period"

    def train_step(self) -> dict[str, float]:
        """One optimizer step over a global batch; returns its metrics (global rank 0)."""
        config = self.config
        started = time.perf_counter()
        stage_index, stage, step_in_stage = stage_at(self.step, config)
        if stage_index != self.stage_index:
            model.set_rope_base(self.model, self._rope_base(stage))
            self.stage_index = stage_index
        lr = lr_at(self.step, config) * faults.lr_factor(self.step, config.faults)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        batch_index = data.batch_index(self.step, config.data.skip_ranges)
        first_batch = data.batch_index(self.step - step_in_stage, config.data.skip_ranges)
        micro_batches = self._micro_batches(stage_index, batch_index, first_batch)
        for chunk in self.model:
            chunk.zero_grad_buffer()
        self.optimizer.zero_grad()
        loss_factor = faults.loss_factor(self.step, config.faults)
        stats = self.forward_backward(micro_batches, stage.seq_length, loss_factor=loss_factor)
        metrics = _loss_metrics(stats, self.channels)
        metrics["lr"] = lr
        # Skip ranges are in batch-index space; a rollback maps steps to batches through this.
        metrics["data/batch_index"] = float(batch_index)
        metrics.update(self.update(loss_finite=bool(torch.isfinite(stats["loss_sum"]).item())))
        if self.guard.diverged:
            self._report(self.step, metrics)
            raise self.guard.diverged_error(self.step)
        step_tokens = config.batch.global_batch_size * stage.seq_length
        self.tokens += step_tokens
        counts = self.dataset(stage_index).channel_counts(
            batch_index, config.batch.global_batch_size, first_batch=first_batch
        )
        self.channel_tokens = [t + int(c) * stage.seq_length for t, c in zip(self.channel_tokens, counts, strict=True)]
        for name, consumed in zip(self.channels, self.channel_tokens, strict=True):
            metrics[f"data/tokens/{name}"] = float(consumed)
        elapsed = time.perf_counter() - started
        metrics["throughput/tokens_per_s"] = step_tokens / elapsed
        metrics["throughput/step_time_s"] = elapsed
        # When the step ended, by the wall clock: the service places steps on its timeline
        # with it (goodput), the step having begun `step_time_s` before.
        metrics[STEP_END_METRIC] = time.time()
        flops = model.flops_per_token(config, stage.seq_length) * step_tokens
        if config.train.peak_tflops:
            achieved = flops / elapsed / self.layout.world_size
            metrics["throughput/mfu"] = achieved / (config.train.peak_tflops * 1e12)
        return metrics

    def update(self, *, loss_finite: bool) -> dict[str, float]:
        """The optimizer step, unless the guard skips it (a NaN or a gradient-norm spike)."""
        fp16 = self.config.precision.dtype == "fp16"
        scale = float(self.optimizer.get_loss_scale().item()) if fp16 else 1.0
        verdict, grad_norm = optimizer_step(self.optimizer, self.guard, loss_finite=loss_finite)
        # An fp16 overflow is the loss scaler's to absorb, until its scale can drop no lower.
        overflow_only = fp16 and loss_finite and scale > self.config.precision.loss_scale.min_scale
        nonfinite = verdict.reason is SkipReason.NONFINITE and not overflow_only
        self.guard.record(self.step, verdict, grad_norm, nonfinite=nonfinite)
        if verdict.skipped:
            log.warning(
                "step %d: update skipped (%s; grad norm %g, z-score %s)",
                self.step, verdict.reason.name.lower(), grad_norm, verdict.zscore,
            )  # fmt: skip
        metrics = self.guard.metrics(verdict, grad_norm)
        if fp16:
            metrics["loss_scale"] = float(self.optimizer.get_loss_scale().item())
        return metrics

    def close(self) -> None:
        if self.reporter is not None:
            self.reporter.close()
        parallel.shutdown()

    # --- pieces -------------------------------------------------------------------------------

    def dataset(self, stage_index: int) -> data.MixtureDataset:
        if stage_index not in self.datasets:
            stage = self.config.stages[stage_index]
            options = self.config.data
            self.datasets[stage_index] = data.MixtureDataset(
                sources=[(s.channel, s.path, s.weight, s.corrupt, s.corrupt_kind) for s in stage.data],
                channel_names=self.channels,
                seq_length=stage.seq_length,
                seed=options.seed,
                tokenizer=self.tokenizer,
                cache_dir=options.cache_dir,
                eval_samples_per_channel=self.config.eval.samples_per_channel,
                options=data.DataOptions(
                    split=options.split,
                    reset_position_ids=options.reset_position_ids,
                    reset_attention_mask=options.reset_attention_mask,
                    eod_mask_loss=options.eod_mask_loss,
                    mmap_bin_files=options.mmap_bin_files,
                ),
                stage_index=stage_index,
            )
        return self.datasets[stage_index]

    def shard(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """This data-parallel rank's rows of a global batch."""
        return data.shard(batch, self.layout.data_rank, self.layout.data_size)

    def _micro_batches(self, stage_index: int, batch_index: int, first_batch: int) -> list[dict[str, torch.Tensor]]:
        """This data-parallel rank's rows of global batch `batch_index`, in micro-batches: only
        those rows are read, and they are the rows a single process would give this rank."""
        size = self.config.batch.global_batch_size
        per_rank = size // self.layout.data_size
        rows = range(self.layout.data_rank * per_rank, (self.layout.data_rank + 1) * per_rank)
        dataset = self.dataset(stage_index)
        batch = dataset.batch(batch_index, size, first_batch=first_batch, rows=rows)
        if self.config.data.trace_dir and self.layout.tensor_rank == 0 and self.layout.is_first_stage:
            self._trace(dataset, batch, batch_index, first_batch, rows)
        return data.micro_batches(batch, self.config.batch.micro_batch_size)

    def _trace(self, dataset: data.MixtureDataset, batch, batch_index: int, first_batch: int, rows: range) -> None:
        """Append which samples this rank trains on at this step (config.data.trace_dir)."""
        size = self.config.batch.global_batch_size
        local, samples = dataset.plan((batch_index - first_batch) * size + rows.start, len(rows))
        record = {
            "step": self.step,
            "stage": self.stage_index,
            "batch_index": batch_index,
            "rows": [rows.start, rows.stop],
            "channels": [self.channels[int(c)] for c in batch["channel"]],
            "samples": [int(s) for s in samples],
            "epochs": [dataset.sources[int(c)].train.locate(int(s))[0] for c, s in zip(local, samples, strict=True)],
            "token_sums": [int(t) for t in batch["tokens"].sum(dim=1)],
        }
        folder = Path(self.config.data.trace_dir)
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / f"rank-{self.layout.data_rank}.jsonl", "a", encoding="utf-8") as trace:
            trace.write(json.dumps(record) + "\n")

    def forward_backward(
        self, micro_batches, seq_length: int, forward_only: bool = False, loss_factor: float = 1.0
    ):
        """Run the pipeline schedule; return global loss sums per channel (on every rank)."""
        forward_backward = get_forward_backward_func()
        chunks = len(self.model)
        iterators = [iter(micro_batches) for _ in range(chunks)] if chunks > 1 else iter(micro_batches)
        step = partial(_forward_step, z_loss=self.config.optimizer.z_loss, loss_factor=loss_factor)
        outputs = forward_backward(
            forward_step_func=step,
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

    def _save(self) -> Path:
        """Save a checkpoint of the current step and report how long training waited for it."""
        path = self.checkpoints.save(self)
        self._report_checkpoint_time("checkpoint/save_s", self.checkpoints.last_save_s)
        return path

    def _report_checkpoint_time(self, name: str, seconds: float | None) -> None:
        """A record of its own at the checkpoint's step, phase "checkpoint" (no loss in it)."""
        if self.reporter is None or seconds is None:
            return
        _, stage, _ = stage_at(min(self.step, self.total_steps - 1), self.config)
        self.reporter.report(
            step=self.step, stage=stage.name, phase=CHECKPOINT_PHASE, tokens=self.tokens, metrics={name: seconds}
        )

    def _stop_agreed(self) -> bool:
        """Whether any rank got SIGTERM: signals reach ranks at different steps, but all stop at one."""
        flag = torch.tensor([int(self.stop_requested)], dtype=torch.int32, device=parallel.device())
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def _on_sigterm(self, *_: object) -> None:
        # Pod eviction: finish the current step, save (save_on_sigterm), exit as preempted.
        if self.sigterm_at is None:
            self.sigterm_at = time.monotonic()
        self.stop_requested = True


def _forward_step(data_iterator, chunk, *, z_loss: float, loss_factor: float = 1.0):
    batch = next(data_iterator)
    tokens, labels = batch["tokens"], batch["labels"]
    positions = batch["position_ids"]  # restart after each EOD with reset_position_ids
    mask = batch.get("attention_mask")  # per document with reset_attention_mask, else causal
    if z_loss > 0:
        output = chunk(tokens, positions, mask)
        if model.unwrap(chunk).post_process:
            output = _loss_with_z_loss(output, labels, z_loss)
    else:
        output = chunk(tokens, positions, mask, labels=labels)
    return output, partial(_loss_func, batch["loss_mask"], batch["channel"], loss_factor=loss_factor)


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


def _loss_func(
    loss_mask: torch.Tensor, channel: torch.Tensor, per_token: torch.Tensor, *, loss_factor: float = 1.0
):
    """Megatron's 3-tuple contract: summed loss, token count, and what to report."""
    per_token = per_token.float()
    masked = per_token * loss_mask
    loss_sum = masked.sum()
    if loss_factor != 1.0:  # an injected fault (faults.py): a NaN is reported, a spike is not
        loss_sum = loss_sum * loss_factor
        if math.isnan(loss_factor):
            masked = masked * loss_factor
    num_tokens = loss_mask.sum().to(torch.int)
    return loss_sum, num_tokens, {
        "per_sample": torch.stack([masked.sum(dim=1), loss_mask.sum(dim=1)]).detach(),
        "channel": channel,
    }


def _gather_stats(outputs, num_channels: int, layout: parallel.Layout) -> dict[str, torch.Tensor]:
    """Sum per-channel loss and tokens over micro-batches and data-parallel ranks, to every rank."""
    sums = torch.zeros(2, num_channels + 1, dtype=torch.float64, device=parallel.device())
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
    """Train; every rank appends how it ended to `job.result_path`; the exit code says it too."""
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
    children.end_with_this_process()  # a checkpoint writer never outlives a killed trainer
    rank = int(os.environ.get("RANK", "0"))
    result_path = outcome.result_path_of(args.config, args.override)
    trainer: Trainer | None = None
    try:
        config = load_config(args.config, overrides=args.override)
        result_path = config.job.result_path
        validate(config, world_size=int(os.environ.get("WORLD_SIZE", "1")))
        trainer = Trainer(config)
        ending = trainer.train()
    except Exception as exc:  # every way of ending is reported, this one included
        ending = outcome.ending_for(exc, step=trainer.step if trainer is not None else None)
        log.error("%s: %s", ending.outcome, ending.message, exc_info=ending.outcome == outcome.CRASHED)
    outcome.write(result_path, ending, rank=rank)
    if trainer is not None:
        trainer.close()
    else:
        parallel.shutdown()
    return ending.exit_code


if __name__ == "__main__":
    sys.exit(main())

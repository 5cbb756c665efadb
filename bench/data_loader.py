"""The training data loader alone: samples/s of `trainer.data.MixtureDataset`, and its share of a step.

The loader is the trainer's own: a megatron-core `GPTDataset` per embedded source and a
`BlendedDataset` over them, reading the rows of global batch `k` as the trainer does. Two
shapes: bench/trainer_cpu.py's (seq 256, 8 sequences a step, what the CPU step is timed on)
and a production-like one (seq 4096, 64 sequences a rank). The share of a step is the loader's
time for one global batch over `Trainer.train_step`'s time at trainer_cpu's shape, measured in
the same run (the issue's bound: at most 2%). Medians of `--rounds` rounds.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from harness import record


def loader_seconds(seq: int, batch: int, batches: int, rounds: int, cache: Path) -> list[float]:
    """Seconds per global batch, one figure per round of `batches` consecutive batches."""
    from trainer import data
    from trainer.tokenizer import ByteTokenizer

    sources = [("code", "embedded://code", 0.4), ("en", "embedded://en", 0.4), ("zh", "embedded://zh", 0.2)]
    stage = data.MixtureDataset(sources, seq_length=seq, seed=1234, tokenizer=ByteTokenizer(), cache_dir=cache)
    stage.batch(0, batch)  # builds the first epochs and the blend
    seconds = []
    for round_ in range(rounds):
        first = 1 + round_ * batches
        started = time.perf_counter()
        for k in range(first, first + batches):
            stage.batch(k, batch)
        seconds.append((time.perf_counter() - started) / batches)
    return seconds


def step_seconds(seq: int, batch: int, steps: int, rounds: int) -> list[float]:
    """Seconds of `Trainer.train_step` at bench/trainer_cpu.py's model and shape."""
    import trainer_cpu

    from trainer.train import Trainer

    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(trainer_cpu.trainer_config(seq, batch, 1 << 20, Path(tmp)))
        try:
            trainer.train_step()  # warm-up
            trainer.step += 1
            seconds = []
            for _ in range(rounds):
                started = time.perf_counter()
                for _ in range(steps):
                    trainer.train_step()
                    trainer.step += 1
                seconds.append((time.perf_counter() - started) / steps)
            return seconds
        finally:
            trainer.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batches", type=int, default=50, help="global batches per round")
    parser.add_argument("--steps", type=int, default=3, help="trainer steps per round")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as cache:
        cpu = statistics.median(loader_seconds(256, 8, args.batches, args.rounds, Path(cache)))
        big = statistics.median(loader_seconds(4096, 64, max(args.batches // 10, 3), args.rounds, Path(cache)))
    step = statistics.median(step_seconds(256, 8, args.steps, args.rounds))
    share = cpu / step
    print(f"data_loader: megatron-core GPTDataset + BlendedDataset over the 3 embedded corpora, {args.rounds} rounds")
    print(f"  seq  256 x   8 sequences: {cpu * 1e3:7.2f} ms a global batch, {8 / cpu:9,.0f} samples/s")
    print(f"  seq 4096 x  64 sequences: {big * 1e3:7.2f} ms a global batch, {64 / big:9,.0f} samples/s")
    print(f"  trainer step at seq 256 x 8 (bench/trainer_cpu.py's model): {step * 1e3:.1f} ms; "
          f"loading is {share:.2%} of it")  # fmt: skip
    record("data_loader", "samples/s, seq 256", 8 / cpu, None, None, unit="samples/s")
    record("data_loader", "samples/s, seq 4096", 64 / big, None, None, unit="samples/s")
    record(
        "data_loader", "loading share of a CPU step", share * 100, step * 1e3, None,
        unit="%", baseline_name="trainer step ms", note="bound: 2%",
    )  # fmt: skip


if __name__ == "__main__":
    main()

"""Data preparation (`kind: data`): a JSONL corpus into a Megatron `.bin/.idx` pair, in tokens/s.

Corpus: `--mb` MB (default 100) of JSONL, one `{"text": ...}` a line, made deterministically
from the embedded channels (code, en, zh) repeated in shuffled order, in a temporary folder.
Tokenizer: a byte-level BPE (`--vocab`, default 32000) trained by `trainer.tokenizer.train` on
the embedded channels' first MB each (`--tokenizer byte` for the byte tokenizer instead).

Ours: `trainer.prepare.run_data_job` on the file with `--workers` processes (default: the CPU
count, the job's default), end to end: read and parse the JSONL, tokenize, write the pair and
the sidecar; median of `--repeat` runs. Megatron is imported once before timing (a job's
process pays that once, about 4 s here). Baseline, run in turn with ours on the same machine:
the `tokenizers` library's own `encode_batch` over the same texts already in memory (batches of
the same size, all threads), nothing read, parsed or written. Both count one EOD a document.
The two run back to back `--repeat` times, alternating which goes first; the ratio is the
median of the pairs' ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

from harness import record

from trainer.prepare import BATCH_DOCUMENTS, run_data_job
from trainer.tokenizer.corpus import embedded

CHANNELS = ("code", "en", "zh")


def make_corpus(path: Path, megabytes: float) -> list[str]:
    """Write `megabytes` MB of JSONL to `path`; return its documents in order."""
    documents = [doc for name in CHANNELS for doc in embedded(name) if doc]
    rng = random.Random(0)
    budget = megabytes * 1e6
    texts: list[str] = []
    with path.open("w", encoding="utf-8") as out:
        while budget > 0:
            order = documents[:]
            rng.shuffle(order)
            for doc in order:
                line = json.dumps({"text": doc}, ensure_ascii=False) + "\n"
                out.write(line)
                texts.append(doc)
                budget -= len(line.encode("utf-8"))
                if budget <= 0:
                    break
    return texts


def train_bpe(folder: Path, vocab: int) -> str:
    from trainer.tokenizer import artifact
    from trainer.tokenizer.train import TrainOptions, train_tokenizer

    sample = []
    for name in CHANNELS:
        budget = 1e6
        for doc in embedded(name):
            sample.append(doc)
            budget -= len(doc.encode("utf-8"))
            if budget < 0:
                break
    trained = train_tokenizer(sample, TrainOptions(vocab_size=vocab, spare=0))
    artifact.save(folder, trained.tokenizer, trained.layout)
    return str(folder / "tokenizer.json")


def baseline_encode(tokenizer_path: str, texts: list[str]) -> tuple[int, float]:
    """Tokens (one EOD a document included) and seconds of `encode_batch` alone."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(tokenizer_path)
    started = time.perf_counter()
    tokens = 0
    for start in range(0, len(texts), BATCH_DOCUMENTS):
        batch = texts[start : start + BATCH_DOCUMENTS]
        tokens += sum(len(e.ids) + 1 for e in tokenizer.encode_batch(batch, add_special_tokens=False))
    return tokens, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=100.0, help="corpus size in MB of JSONL")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each side")
    parser.add_argument("--workers", type=int, default=None, help="default: the CPU count")
    parser.add_argument("--vocab", type=int, default=32_000, help="the BPE's vocabulary")
    parser.add_argument("--tokenizer", choices=("bpe", "byte"), default="bpe")
    args = parser.parse_args()

    import megatron.core.datasets.indexed_dataset  # noqa: F401  (once, as a job's process does)

    with tempfile.TemporaryDirectory(prefix="data-prep-bench-") as tmp:
        folder = Path(tmp)
        corpus = folder / "corpus.jsonl"
        texts = make_corpus(corpus, args.mb)
        size_mb = corpus.stat().st_size / 1e6
        if args.tokenizer == "bpe":
            (folder / "bpe").mkdir()
            tokenizer = train_bpe(folder / "bpe", args.vocab)
        else:
            tokenizer = "byte"
        workers = args.workers or os.cpu_count() or 1
        ours_s, base_s, tokens = [], [], 0
        for run in range(args.repeat):  # in turn, so both sides see the same machine
            if tokenizer != "byte" and run % 2:  # every other pair starts with the baseline
                base_tokens, seconds = baseline_encode(tokenizer, texts)
                base_s.append(seconds)
            config = {
                "inputs": [str(corpus)],
                "output": str(folder / "out" / f"run{run}"),
                "tokenizer": tokenizer,
                "workers": workers,
                "metrics": {"jsonl_path": str(folder / "progress.jsonl")},
            }
            started = time.perf_counter()
            result = run_data_job(config)
            ours_s.append(time.perf_counter() - started)
            tokens = result["report"]["tokens"]
            for suffix in (".bin", ".idx"):
                os.unlink(f"{config['output']}{suffix}")
            if tokenizer != "byte" and not run % 2:
                base_tokens, seconds = baseline_encode(tokenizer, texts)
                base_s.append(seconds)
            if tokenizer != "byte":
                assert base_tokens == tokens, (base_tokens, tokens)

    ours = tokens / statistics.median(ours_s)
    base = tokens / statistics.median(base_s) if base_s else float("nan")
    # The ratio of each pair run back to back, then their median: a shared machine's load
    # drifts between pairs more than within one.
    ratio = statistics.median(b / o for o, b in zip(ours_s, base_s, strict=True)) if base_s else float("nan")
    print(
        f"data_prep: {size_mb:.1f} MB JSONL, {len(texts):,} documents, {tokens:,} tokens "
        f"(EOD included), tokenizer {args.tokenizer}"
        + (f" {args.vocab}" if args.tokenizer == "bpe" else "")
        + f", {workers} workers, median of {args.repeat}, {os.cpu_count()} CPUs"
    )
    print(f"{'figure':<28}{'median':>14}{'baseline':>14}{'ratio':>8}")
    print(f"{'prepare tokens/s':<28}{ours:>14,.0f}{base:>14,.0f}{ratio:>8.2f}")
    print(f"{'prepare MB/s':<28}{size_mb / statistics.median(ours_s):>14.2f}")
    print(f"runs (s): ours {[round(s, 2) for s in ours_s]}, baseline {[round(s, 2) for s in base_s]}")
    print("ratio: the median over the back-to-back pairs of (baseline seconds / ours)")
    print(
        "baseline: tokenizers' encode_batch alone over the same texts in memory (all threads), "
        "nothing read, parsed or written"
    )
    record(
        "data_prep",
        f"prepare {size_mb:.0f} MB JSONL, tokens/s",
        ours,
        base if base_s else None,
        ratio if base_s else None,
        unit="tokens/s",
        baseline_name="tokenizers encode_batch alone",
        note=f"{workers} workers, {args.tokenizer} tokenizer, {len(texts):,} documents",
    )


if __name__ == "__main__":
    main()

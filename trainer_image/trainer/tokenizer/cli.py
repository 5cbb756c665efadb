"""`pretrain-tokenizer`: train, expand and measure tokenizers before pretraining.

pretrain-tokenizer train  --corpus embedded:zh embedded:en --vocab-size 32000 --out tok/
pretrain-tokenizer expand --base tok/ --corpus zh.jsonl --add 20000 --out tok-zh/
pretrain-tokenizer report tok-zh/ --corpus zh=embedded:zh code=embedded:code [--json]
pretrain-tokenizer job job.json     # a run_tokenizer_job config; prints its result JSON
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from trainer.tokenizer import artifact
from trainer.tokenizer.corpus import load_corpus, parse_named
from trainer.tokenizer.job import run_tokenizer_job
from trainer.tokenizer.report import format_report, tokenization_report
from trainer.tokenizer.train import MODEL_KINDS

_UNITS = {"K": 10**3, "M": 10**6, "G": 10**9}


def byte_size(text: str) -> int:
    """`500000`, `500K`, `20M`, `1G` (decimal units) as a number of bytes."""
    text = text.strip().upper().removesuffix("B")
    factor = _UNITS.get(text[-1:], 1)
    number = text[:-1] if text[-1:] in _UNITS else text
    try:
        value = int(float(number) * factor)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 500K, 20M)") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"size must be >= 0, got {text!r}")
    return value


def _lines(path: str) -> list[str]:
    return Path(path).expanduser().read_text(encoding="utf-8").splitlines()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pretrain-tokenizer", description=__doc__.splitlines()[0].split(": ", 1)[1]
    )
    commands = parser.add_subparsers(dest="command", required=True)
    corpus_help = (
        "corpus specs: embedded:code|en|zh, a file (.jsonl: {'text'} per line) or a folder"
    )

    def common(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--corpus", nargs="+", action="extend", required=True, help=corpus_help)
        sub.add_argument("--out", required=True, help="output directory")
        sub.add_argument("--min-frequency", type=int, default=2)
        sub.add_argument("--banned", metavar="FILE", help="ban lines: a literal or re:REGEX")
        sub.add_argument("--max-bytes-per-corpus", type=byte_size, metavar="SIZE")
        sub.add_argument(
            "--report", nargs="+", action="extend", metavar="NAME=SPEC", help="measure on these"
        )
        sub.add_argument("--json", action="store_true", help="print the result as JSON")

    train = commands.add_parser("train", help="train a new tokenizer")
    common(train)
    train.add_argument("--vocab-size", type=int, required=True)
    train.add_argument("--model", choices=MODEL_KINDS, default="byte-bpe")
    train.add_argument("--domain-tokens", metavar="FILE", help="one token a line")
    train.add_argument("--spare", type=int, default=1000, help="reserved special tokens")
    train.add_argument("--pad-to-multiple-of", type=int, default=128)
    train.add_argument("--limit-alphabet", type=int)

    expand = commands.add_parser("expand", help="add tokens to a tokenizer, old ids unchanged")
    common(expand)
    expand.add_argument("--base", required=True, help="tokenizer directory or tokenizer.json")
    expand.add_argument("--add", type=int, required=True, help="how many tokens to add")
    expand.add_argument("--pad-to-multiple-of", type=int, help="default: the base's, else 128")

    report = commands.add_parser("report", help="compression and coverage per corpus")
    report.add_argument("tokenizer", help="tokenizer directory or tokenizer.json")
    report.add_argument(
        "--corpus", nargs="+", action="extend", required=True, metavar="NAME=SPEC", help=corpus_help
    )
    report.add_argument("--probe", action="append", default=[], help="a string to show split")
    report.add_argument("--max-bytes-per-corpus", type=byte_size, metavar="SIZE")
    report.add_argument("--json", action="store_true")

    job = commands.add_parser("job", help="run a run_tokenizer_job config (JSON file, - = stdin)")
    job.add_argument("config")
    return parser


def job_config(args: argparse.Namespace) -> dict:
    """The `run_tokenizer_job` config a `train` or `expand` command line stands for."""
    config: dict = {
        "mode": args.command,
        "corpora": args.corpus,
        "out": args.out,
        "min_frequency": args.min_frequency,
    }
    if args.max_bytes_per_corpus is not None:
        config["max_bytes_per_corpus"] = args.max_bytes_per_corpus
    if args.banned:
        config["banned"] = _lines(args.banned)
    if args.report:
        config["report_corpora"] = args.report
    if args.command == "train":
        config.update(
            vocab_size=args.vocab_size,
            model=args.model,
            spare=args.spare,
            pad_to_multiple_of=args.pad_to_multiple_of,
        )
        if args.domain_tokens:
            config["domain_tokens"] = _lines(args.domain_tokens)
        if args.limit_alphabet:
            config["limit_alphabet"] = args.limit_alphabet
    else:
        config.update(base=args.base, add=args.add)
        if args.pad_to_multiple_of:
            config["pad_to_multiple_of"] = args.pad_to_multiple_of
    return config


def describe(result: dict) -> str:
    """A few lines on what a job wrote."""
    layout = result["report"]["layout"]
    spare = layout["spare_rows"]
    lines = [
        f"wrote {result['path']}: {layout['model']}, {layout['vocab_size']:,} ids, padded to "
        f"{layout['padded_vocab_size']:,} (multiple of {layout['pad_to_multiple_of']}); "
        f"spare rows {spare['total']:,} = {spare['reserved']:,} reserved + "
        f"{spare['padding']:,} padding"
    ]
    if domain := layout.get("domain_tokens"):
        lines.append(f"domain tokens: {len(domain)} ({', '.join(list(domain)[:5])}…)")
    banned = layout.get("banned") or {}
    if banned.get("patterns"):
        lines.append(
            f"banned: {banned['patterns']} patterns removed {banned['removed_tokens']} tokens "
            f"and {banned['removed_merges']} merges"
            + (
                f"; kept alphabet symbols {banned['kept_alphabet']}"
                if banned["kept_alphabet"]
                else ""
            )
        )
    if (training := layout.get("training")) and "expansion" not in result["report"]:
        lines.append(
            f"trained on {training['bytes'] / 1e6:.1f} MB in {training['seconds']:.1f} s "
            f"({training['mb_per_s']} MB/s)"
        )
    if expansion := result["report"].get("expansion"):
        lines.append(
            f"added {expansion['added_count']:,} of {expansion['requested']:,} tokens: ids "
            f"{expansion['old_vocab_size']:,}…{expansion['new_vocab_size'] - 1:,}; embedding "
            f"rows {expansion['old_padded_vocab_size']:,} → {expansion['padded_vocab_size']:,} "
            f"(see {artifact.EXPANSION_FILE})"
        )
    if compression := result["report"].get("compression"):
        lines += ["", format_report(compression)]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "report":
            return _report(args)
        if args.command == "job":
            text = sys.stdin.read() if args.config == "-" else Path(args.config).read_text()
            print(json.dumps(run_tokenizer_job(json.loads(text)), ensure_ascii=False, indent=2))
            return 0
        result = run_tokenizer_job(job_config(args))
    except (ValueError, FileNotFoundError, json.JSONDecodeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(result, ensure_ascii=False, indent=2) if args.json else describe(result))
    return 0


def _report(args: argparse.Namespace) -> int:
    tokenizer = artifact.load(args.tokenizer)
    corpora = {}
    for spec in args.corpus:
        name, path = parse_named(spec)
        corpora[name] = load_corpus(path, max_bytes=args.max_bytes_per_corpus).documents
    layout = artifact.load_layout(args.tokenizer)
    report = tokenization_report(tokenizer, corpora, probes=args.probe, layout=layout)
    print(json.dumps(report, ensure_ascii=False, indent=2) if args.json else format_report(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""One tokenizer job from a JSON-able config: what the CLI runs and what the service can call.

The service can call `run_tokenizer_job` in-process for small corpora or run it in a batch
Job (`pretrain-tokenizer job CONFIG.json`); either way the result is the same JSON-able dict.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from trainer.tokenizer import artifact
from trainer.tokenizer.corpus import load_corpus, parse_named
from trainer.tokenizer.expand import ExpandOptions, expand_tokenizer
from trainer.tokenizer.report import tokenization_report
from trainer.tokenizer.train import TrainOptions, train_tokenizer

COMMON_KEYS = {"mode", "corpora", "out", "max_bytes_per_corpus", "report_corpora", "probes"}
TRAIN_KEYS = {
    "vocab_size",
    "model",
    "min_frequency",
    "domain_tokens",
    "banned",
    "spare",
    "pad_to_multiple_of",
    "limit_alphabet",
}
EXPAND_KEYS = {"base", "add", "min_frequency", "banned", "pad_to_multiple_of"}


def run_tokenizer_job(config: Mapping[str, Any]) -> dict:
    """Train or expand a tokenizer, write it to `out`, and return `{"path", "report"}`.

    Config (JSON-able; unknown keys are an error):

        mode                  "train" | "expand"                                   (required)
        corpora               list of corpus specs: "embedded:code|en|zh", a file
                              (.jsonl: one {"text": ...} a line; else one document),
                              or a folder of such files                            (required)
        out                   output directory                                     (required)
        max_bytes_per_corpus  read at most this many UTF-8 bytes of each corpus    (null)
        report_corpora        {name: spec} to measure the result on, or a list of
                              specs / "NAME=SPEC"; adds "compression" to the report (null)
        probes                strings whose split the report shows                 ([])
      train:
        vocab_size            model vocabulary: specials + alphabet + learned      (32000)
        model                 "byte-bpe" | "bpe" | "wordpiece"                     ("byte-bpe")
        min_frequency         least occurrences for a merge                        (2)
        domain_tokens         strings that must each be one token                  ([])
        banned                ban lines: a literal (tokens containing it) or
                              "re:REGEX"; the tokens and their merges are removed  ([])
        spare                 reserved special tokens <|reserved_i|>               (1000)
        pad_to_multiple_of    embedding rows rounded up to this                    (128)
        limit_alphabet        most characters in the alphabet (bpe, wordpiece)     (vocab/4)
      expand:
        base                  directory (or tokenizer.json) of the BPE tokenizer to grow (required)
        add                   how many tokens to add                               (required)
        min_frequency, banned as above; pad_to_multiple_of defaults to the base's.

    Report: `layout` (vocab_layout.json: ids of specials, domain and reserved tokens,
    vocab_size, padded_vocab_size, spare rows, ban and training figures), for expand also
    `expansion` (vocab_expansion.json without the token list: old/new/padded sizes,
    added_count, first_new_id), and `compression` when report_corpora is given (see
    `trainer.tokenizer.report`).
    """
    mode = config.get("mode")
    if mode not in ("train", "expand"):
        raise ValueError(f'mode must be "train" or "expand", got {mode!r}')
    allowed = COMMON_KEYS | (TRAIN_KEYS if mode == "train" else EXPAND_KEYS)
    if unknown := sorted(set(config) - allowed):
        raise ValueError(f"unknown keys for a {mode} job: {unknown}")
    for key in ("corpora", "out", *(("base", "add") if mode == "expand" else ())):
        if config.get(key) in (None, "", []):
            raise ValueError(f"{mode} job needs {key!r}")
    if isinstance(config["corpora"], str):
        raise ValueError("corpora must be a list of corpus specs")
    out = Path(config["out"]).expanduser()
    if (
        mode == "expand"
        and out.resolve() == artifact.tokenizer_file(config["base"]).parent.resolve()
    ):
        raise ValueError("out must differ from base: expand writes a new tokenizer beside the old")

    max_bytes = config.get("max_bytes_per_corpus")
    documents = [
        doc
        for spec in config["corpora"]
        for doc in load_corpus(spec, max_bytes=max_bytes).documents
    ]
    if not documents:
        raise ValueError(f"corpora {config['corpora']} hold no text")
    options = {key: config[key] for key in config if key in (TRAIN_KEYS | EXPAND_KEYS)}
    for key in ("domain_tokens", "banned"):
        if key in options:
            options[key] = tuple(options[key])
    corpora_info = [str(spec) for spec in config["corpora"]]

    if mode == "train":
        trained = train_tokenizer(documents, TrainOptions(**options))
        tokenizer, layout = trained.tokenizer, trained.layout
        layout["training"]["corpora"] = corpora_info
        artifact.save(out, tokenizer, layout)
        report: dict[str, Any] = {"layout": layout}
    else:
        base = str(options.pop("base"))
        base_layout = artifact.load_layout(base)
        expanded = expand_tokenizer(
            artifact.load(base),
            documents,
            ExpandOptions(**options),
            base_layout=base_layout,
            base_name=base,
        )
        tokenizer, layout = expanded.tokenizer, expanded.layout
        layout["expansions"][-1]["corpora"] = corpora_info
        extra = {artifact.EXPANSION_FILE: expanded.expansion}
        artifact.save(out, tokenizer, layout, extra)
        if base_layout is None:  # a tokenizer made elsewhere: keep its own config files
            _copy_configs(artifact.tokenizer_file(base).parent, out)
        summary = {k: v for k, v in expanded.expansion.items() if k != "added"}
        report = {"layout": layout, "expansion": summary}

    if config.get("report_corpora"):
        named = _named_specs(config["report_corpora"])
        corpora = {
            name: load_corpus(spec, max_bytes=max_bytes).documents for name, spec in named.items()
        }
        report["compression"] = tokenization_report(
            tokenizer, corpora, probes=config.get("probes") or (), layout=layout
        )
    return {"path": str(out), "report": report}


def _named_specs(specs: Mapping[str, str] | list[str]) -> dict[str, str]:
    if isinstance(specs, Mapping):
        return dict(specs)
    return dict(parse_named(spec) for spec in specs)


def _copy_configs(source: Path, out: Path) -> None:
    for name in (artifact.CONFIG_FILE, artifact.SPECIAL_TOKENS_FILE):
        if (source / name).is_file() and source.resolve() != out.resolve():
            shutil.copyfile(source / name, out / name)

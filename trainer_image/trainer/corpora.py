"""Where a channel's tokens come from: a prepared Megatron `.bin/.idx` pair, one document a sequence.

A source is `embedded://code|en|zh` (text that ships with Python and jieba, tokenized once per
tokenizer into a cached pair), the prefix of a pair on a mounted volume (`indexed://` in front
is allowed, as is a `.bin`/`.idx` suffix), or `s3://bucket/prefix` (read through megatron-core's
object-storage support: the index cached locally, the `.bin` read on demand in chunks). Every document ends with the tokenizer's eos, the EOD
Megatron's datasets pack across. A pair made by the data preparation job has a sidecar
`<prefix>.json` (`pretrain-data/1`) naming the tokenizer it was made with; a run with another
tokenizer refuses it instead of training on ids that mean something else.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import sysconfig
import time
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from trainer.config.base import ConfigError
from trainer.tokenizer import Tokenizer, token_dtype

__all__ = [
    "EMBEDDED_CORPORA",
    "EMBEDDED_SCHEME",
    "INDEXED_SCHEME",
    "SIDECAR_FORMAT",
    "SourceUnavailable",
    "embedded_dataset",
    "embedded_documents",
    "encode_documents",
    "prepared_source",
    "read_sidecar",
    "write_indexed_dataset",
]

DATA_VERSION = 2
"""Bump when an embedded corpus's construction changes; it is part of every cache key."""
EMBEDDED_CORPORA = ("code", "en", "zh")
EMBEDDED_SCHEME = "embedded://"
INDEXED_SCHEME = "indexed://"
S3_SCHEME = "s3://"
OBJECT_STORE_SCHEMES = (S3_SCHEME, "msc://")
DEFAULT_CACHE_DIR = Path("~/.cache/pretrain-orchestrator/corpora")
SIDECAR_FORMAT = "pretrain-data/1"


class SourceUnavailable(ConfigError):
    """A channel's data cannot be opened: missing, unsupported, or made with another tokenizer.

    A configuration error (the run ends `bad_config`): another attempt would meet it again.
    """

    def __init__(self, channel: str, path: str, reason: str) -> None:
        super().__init__(f"data source {channel!r} ({path}): {reason}")
        self.channel, self.path, self.reason = channel, path, reason


# --------------------------------------------------------------------------- sources


def prepared_source(channel: str, path: str, tokenizer: Tokenizer, cache_dir: str | Path | None) -> str:
    """The `.bin/.idx` prefix a channel reads, built first for an embedded corpus.

    Raises `SourceUnavailable` naming the channel when the pair is missing, on an object store
    this build cannot read, or prepared with another tokenizer than the run's.
    """
    if path.startswith(EMBEDDED_SCHEME):
        name = path.removeprefix(EMBEDDED_SCHEME)
        if name not in EMBEDDED_CORPORA:
            raise SourceUnavailable(channel, path, f"no embedded corpus {name!r}; one of {EMBEDDED_CORPORA}")
        return str(embedded_dataset(name, tokenizer, cache_dir))
    if path.startswith(OBJECT_STORE_SCHEMES):
        return _object_store_source(channel, path, tokenizer)
    prefix = path.removeprefix(INDEXED_SCHEME)
    for extension in (".bin", ".idx"):
        prefix = prefix.removesuffix(extension)
    missing = [p for p in (f"{prefix}.bin", f"{prefix}.idx") if not os.path.isfile(p)]
    if missing:
        raise SourceUnavailable(channel, path, f"no such file {missing[0]}")
    sidecar = read_sidecar(prefix)
    if sidecar is not None and sidecar.get("tokenizer") != tokenizer.name:
        raise SourceUnavailable(
            channel, path, f"prepared with tokenizer {sidecar.get('tokenizer')!r}, but this run "
            f"uses {tokenizer.name!r}: prepare it again with the run's tokenizer",
        )  # fmt: skip
    return prefix


def _object_store_source(channel: str, path: str, tokenizer: Tokenizer) -> str:
    """An `s3://bucket/prefix` pair, checked where it lies: both objects there, and its sidecar
    (when it has one) naming the run's tokenizer. Credentials and endpoint come from the
    environment as boto3 reads it (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL…;
    on Kubernetes from the Secret the spec names in data.credentials_secret), never the spec."""
    if not path.startswith(S3_SCHEME):
        raise SourceUnavailable(channel, path, "only s3:// object storage is supported")
    prefix = path
    for extension in (".bin", ".idx"):
        prefix = prefix.removesuffix(extension)
    client = s3_client()
    bucket, key = _bucket_and_key(prefix)
    for extension in (".bin", ".idx"):
        try:
            client.head_object(Bucket=bucket, Key=f"{key}{extension}")
        except Exception as error:  # botocore's ClientError, NoCredentialsError, EndpointConnectionError…
            raise SourceUnavailable(channel, path, f"cannot read {prefix}{extension}: {error}") from error
    try:
        body = client.get_object(Bucket=bucket, Key=f"{key}.json")["Body"].read()
    except Exception:  # no sidecar: a pair prepared elsewhere
        return prefix
    sidecar = json.loads(body)
    if sidecar.get("format") == SIDECAR_FORMAT and sidecar.get("tokenizer") != tokenizer.name:
        raise SourceUnavailable(
            channel, path, f"prepared with tokenizer {sidecar.get('tokenizer')!r}, but this run "
            f"uses {tokenizer.name!r}: prepare it again with the run's tokenizer",
        )  # fmt: skip
    return prefix


def s3_client():
    """A boto3 S3 client configured from the environment, as megatron-core's readers make theirs."""
    import boto3

    return boto3.client("s3")


def download_index(prefix: str, cache_dir: str | Path) -> Path:
    """Copy an object-store pair's `.idx` into `cache_dir` where megatron-core looks for it.

    megatron-core downloads it on global rank 0 only and has every other rank assert that the
    file is there, which holds only after a barrier and on rank 0's node. So every other
    process fetches its own copy first (boto3 writes a temporary file and renames it): no rank
    waits on another, on one node or many.
    """
    import torch.distributed as dist

    bucket, key = _bucket_and_key(f"{prefix}.idx")
    local = Path(cache_dir) / bucket / key
    if dist.is_initialized() and dist.get_rank() != 0:
        local.parent.mkdir(parents=True, exist_ok=True)
        s3_client().download_file(bucket, key, str(local))
    return local


def _bucket_and_key(path: str) -> tuple[str, str]:
    bucket, _, key = path.removeprefix(S3_SCHEME).partition("/")
    return bucket, key


def read_sidecar(prefix: str | Path) -> dict | None:
    """The preparation record `<prefix>.json` beside a pair, or None when there is none."""
    path = Path(f"{prefix}.json")
    if not path.is_file():
        return None
    record = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(record, dict) or record.get("format") != SIDECAR_FORMAT:
        raise ValueError(f"{path} is not a {SIDECAR_FORMAT} record")
    return record


def embedded_dataset(name: str, tokenizer: Tokenizer, cache_dir: str | Path | None = None) -> Path:
    """The cached pair of an embedded corpus for this tokenizer, written on first use.

    The pair is written under temporary names and renamed into place, `.idx` last, so ranks
    racing to build it never read a partial pair; its sidecar records what it holds.
    """
    prefix = embedded_cache_prefix(name, tokenizer, cache_dir)
    if not (Path(f"{prefix}.bin").is_file() and Path(f"{prefix}.idx").is_file()):
        documents = embedded_documents(name)
        tmp = prefix.with_name(f".{prefix.name}.{os.getpid()}.{uuid.uuid4().hex}")
        try:
            write_indexed_dataset(tmp, documents, tokenizer, inputs=[f"{EMBEDDED_SCHEME}{name}"])
            for extension in (".json", ".bin", ".idx"):
                os.replace(f"{tmp}{extension}", f"{prefix}{extension}")
        finally:
            for extension in (".json", ".bin", ".idx"):
                Path(f"{tmp}{extension}").unlink(missing_ok=True)
    return prefix


def embedded_cache_prefix(name: str, tokenizer: Tokenizer, cache_dir: str | Path | None) -> Path:
    """Where `embedded_dataset` caches a corpus: keyed by corpus, tokenizer and source version."""
    if name not in EMBEDDED_CORPORA:
        raise ValueError(f"unknown embedded corpus {name!r}; expected one of {EMBEDDED_CORPORA}")
    digest = hashlib.sha256(_embedded_source_version(name).encode()).hexdigest()[:12]
    folder = Path(cache_dir if cache_dir is not None else DEFAULT_CACHE_DIR).expanduser()
    return folder / f"{name}-{tokenizer.name}-v{DATA_VERSION}-{digest}"


# --------------------------------------------------------------------------- writing pairs


def write_indexed_dataset(
    prefix: str | Path, documents: Iterable[str], tokenizer: Tokenizer, *, inputs: Sequence[str] = ()
) -> Path:
    """Write documents as a Megatron `<prefix>.bin/.idx` pair (each ending in eos) and its sidecar."""
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    started = time.perf_counter()
    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    dtype = token_dtype(tokenizer.vocab_size)
    builder = IndexedDatasetBuilder(f"{prefix}.bin", dtype=dtype)
    count = tokens = 0
    for document in documents:
        ids = encode_documents(tokenizer, [document]).astype(dtype, copy=False)
        builder.add_document(ids, [ids.size])
        count, tokens = count + 1, tokens + ids.size
    builder.finalize(f"{prefix}.idx")
    seconds = time.perf_counter() - started
    sidecar = sidecar_record(tokenizer, documents=count, tokens=tokens, dtype=dtype, inputs=inputs, seconds=seconds)
    Path(f"{prefix}.json").write_text(json.dumps(sidecar, indent=2), encoding="utf-8")
    return prefix


def sidecar_record(
    tokenizer: Tokenizer, *, documents: int, tokens: int, dtype: type, inputs: Sequence[str], seconds: float
) -> dict:
    """What `<prefix>.json` says of a pair (`SIDECAR_FORMAT`): the tokenizer it was made with
    (its `name`, which training checks), the counts, and where it came from."""
    return {
        "format": SIDECAR_FORMAT,
        "tokenizer": tokenizer.name,
        "vocab_size": int(tokenizer.vocab_size),
        "eod_id": int(tokenizer.eos_id),
        "documents": int(documents),
        "tokens": int(tokens),
        "dtype": np.dtype(dtype).name,
        "inputs": [str(path) for path in inputs],
        "seconds": round(seconds, 3),
    }


def encode_documents(tokenizer: Tokenizer, documents: Sequence[str]) -> np.ndarray:
    """Tokenize documents into one flat array, each document followed by `eos_id`."""
    fast = getattr(tokenizer, "encode_documents", None)
    if fast is not None:
        return fast(documents)
    dtype = token_dtype(tokenizer.vocab_size)
    pieces = [np.asarray([*tokenizer.encode(doc), tokenizer.eos_id], dtype=dtype) for doc in documents]
    return np.concatenate(pieces) if pieces else np.zeros(0, dtype=dtype)


# --------------------------------------------------------------------------- embedded corpora

_CODE_SKIP_DIRS = frozenset(
    {
        "site-packages",
        "dist-packages",
        "__pycache__",
        "test",
        "tests",
        "idle_test",
        "idlelib",
        "encodings",
        "pydoc_data",
        "distutils",
        "lib2to3",
        "tkinter",
        "turtledemo",
        "ensurepip",
    }
)
_ZH_SEED = 20240611
_ZH_SENTENCES = 36_000
_ZH_COMMA_PROBABILITY = 0.12



def embedded_documents(name: str) -> list[str]:
    """The documents of one embedded corpus, in a fixed order."""
    if name == "code":
        return _code_documents()
    if name == "en":
        return _en_documents()
    if name == "zh":
        return _zh_documents()
    raise ValueError(f"unknown embedded corpus {name!r}; expected one of {EMBEDDED_CORPORA}")


def _code_documents() -> list[str]:
    root = Path(sysconfig.get_paths()["stdlib"])
    documents = []
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = sorted(d for d in subfolders if d not in _CODE_SKIP_DIRS)
        for file in sorted(files):
            if file.endswith(".py"):
                raw = (Path(folder) / file).read_bytes()
                documents.append(raw.decode("utf-8", errors="replace"))
    return documents


def _en_documents() -> list[str]:
    from pydoc_data.topics import topics

    return [topics[key] for key in sorted(topics)]


def _zh_documents() -> list[str]:
    """Sentences of 8-30 words drawn by frequency from jieba's dictionary, seeded."""
    words, frequencies = _jieba_words()
    rng = np.random.Generator(np.random.Philox(key=_ZH_SEED))
    cdf = np.cumsum(frequencies, dtype=np.float64)
    cdf /= cdf[-1]
    sentence_lengths = rng.integers(8, 31, size=_ZH_SENTENCES)
    word_ids = np.searchsorted(cdf, rng.random(int(sentence_lengths.sum())), side="right")
    punctuation = np.where(rng.random(word_ids.size) < _ZH_COMMA_PROBABILITY, "，", "")
    sentence_ends = np.cumsum(sentence_lengths)
    punctuation = punctuation.astype(object)
    punctuation[sentence_ends - 1] = "。"
    pieces = np.empty(2 * word_ids.size, dtype=object)
    pieces[0::2] = np.asarray(words, dtype=object)[np.minimum(word_ids, len(words) - 1)]
    pieces[1::2] = punctuation
    documents = []
    sentence = 0
    while sentence < _ZH_SENTENCES:
        count = int(rng.integers(4, 17))
        first = int(sentence_ends[sentence - 1]) if sentence else 0
        last = int(sentence_ends[min(sentence + count, _ZH_SENTENCES) - 1])
        documents.append("".join(pieces[2 * first : 2 * last]))
        sentence += count
    return documents


def _jieba_words() -> tuple[list[str], np.ndarray]:
    """Words of jieba's dict.txt (`word freq pos` per line) that are all CJK ideographs."""
    import jieba

    text = (Path(jieba.__file__).parent / "dict.txt").read_text(encoding="utf-8")
    words, frequencies = [], []
    for line in text.splitlines():
        parts = line.split(" ")
        if len(parts) >= 2 and all("\u4e00" <= ch <= "\u9fff" for ch in parts[0]):
            words.append(parts[0])
            frequencies.append(int(parts[1]))
    return words, np.asarray(frequencies, dtype=np.float64)


def _embedded_source_version(name: str) -> str:
    if name == "zh":
        import jieba

        return f"jieba-{jieba.__version__}-{_ZH_SEED}-{_ZH_SENTENCES}"
    return f"python-{sys.version.split()[0]}"

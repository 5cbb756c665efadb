"""Data preparation: text into a Megatron `.bin/.idx` pair with the run's tokenizer.

`python -m trainer.prepare --config FILE` (what a `kind: data` job runs) or
`run_data_job(config)`. Inputs are JSONL files (one `{"text": ...}` object a line; the field
is configurable), plain text files (one document each), Parquet files (the same field as a
column; `pyarrow`, in the trainer extra, reads them), `embedded:code|en|zh`, or folders of such files (every file
under them that is not hidden, in path order).

The work is split by file, large JSONL files by byte ranges that start at line starts, and
large Parquet files by row groups, into units that `workers` processes tokenize in parallel, each into raw token ids and document
lengths in a temporary folder beside the output (workers import neither megatron nor torch).
The parts are written into one pair in input order (`IndexedDatasetBuilder`), so the pair is
the same, byte for byte, for any number of workers. Every document is one sequence ending with the tokenizer's eos (Megatron's EOD);
empty documents are skipped and counted; a line that is not a JSON object with a string in
the text field is an error naming its file and line.

Beside the pair it writes `<prefix>.json`, the contract the trainer reads
(`SIDECAR_FORMAT`): the tokenizer's fingerprint (`Tokenizer.name`), vocab_size, eod_id,
documents, tokens (eos included), dtype, inputs, seconds. The `.bin`, then the `.idx`, then
the sidecar are renamed into place only once all are written, so a crash leaves no half pair
at the prefix (the sidecar, last, says the pair is complete).

Progress goes out like training progress (`trainer.report`): one record per finished unit,
step = input bytes done, with `prep/bytes_total`, `prep/documents`, `prep/tokens` and
`prep/tokens_per_s`; to the service when `metrics.url` is set, and to `metrics.jsonl_path`
(default `<prefix>.progress.jsonl`) when it is not, or when that is set too.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
import shutil
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from trainer.corpora import sidecar_record  # numpy and the tokenizers only: no torch in workers
from trainer.tokenizer import token_dtype

log = logging.getLogger(__name__)

SIDECAR_KEYS = (
    "format", "tokenizer", "vocab_size", "eod_id", "documents", "tokens", "dtype", "inputs",
    "seconds",
)  # fmt: skip
EMBEDDED_PREFIXES = ("embedded://", "embedded:")
JSONL_SUFFIXES = (".jsonl", ".ndjson")
PARQUET_SUFFIXES = (".parquet",)
CONFIG_KEYS = {"inputs", "output", "tokenizer", "text_field", "workers", "job", "metrics"}
# A JSONL file larger than this is split into byte ranges; each unit is at least this big.
MIN_SPLIT_BYTES = 4 << 20
# Units per worker when splitting: enough to balance the load and to report progress often.
UNITS_PER_WORKER = 4
# Documents, or UTF-8 bytes, handed to the tokenizer at once.
BATCH_DOCUMENTS = 1024
BATCH_BYTES = 4 << 20
PHASE = "prepare"
STAGE = "data"
TMP_MARK = ".tmp-"


class PrepareError(ValueError):
    """The inputs cannot be prepared as given (a bad line, a missing file, no text)."""


@dataclass(frozen=True)
class Unit:
    """One piece of work: a whole input, the lines of a JSONL file in bytes [start, end), or
    the row groups [groups[0], groups[1]) of a Parquet file."""

    index: int
    source: str  # a file path, or `embedded:NAME`
    kind: str  # "jsonl", "text", "parquet", "embedded"
    start: int = 0
    end: int = -1  # -1: to the end
    groups: tuple[int, int] | None = None  # Parquet row groups; None: all

    @property
    def size(self) -> int:
        return max(self.end - self.start, 0)


@dataclass
class UnitResult:
    index: int
    documents: int
    tokens: int
    empty: int
    size: int


# ------------------------------------------------------------------------------ the job


def run_data_job(config: Mapping[str, Any]) -> dict[str, Any]:
    """Prepare `inputs` into `<output>.bin/.idx/.json`; return `{"path", "report", "stats"}`.

    Config (JSON-able; unknown keys are an error):

        inputs      list of files, folders or `embedded:NAME`                  (required)
        output      the pair's prefix: writes PREFIX.bin, PREFIX.idx, PREFIX.json (required)
        tokenizer   "byte", or a Hugging Face tokenizer.json (or its folder)   ("byte")
        text_field  the JSONL (and Parquet) field holding each document       ("text")
        workers     processes tokenizing at once          (RAYON_NUM_THREADS, else the CPUs)
        job         {"id", "attempt"}: whose progress this is                 ({"id": "prepare"})
        metrics     {"url", "token", "jsonl_path", "timeout_s"}: where progress goes;
                    the token may come from PRETRAIN_INGEST_TOKEN instead     ({})

    `path` is the prefix, `report` the sidecar's contents, `stats` what the sidecar does not
    keep (empty documents skipped, input bytes, tokens per second, workers, units).
    """
    options = _options(config)
    started = time.perf_counter()
    prefix = Path(options["output"]).expanduser().absolute()
    prefix.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(prefix)

    from trainer.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(options["tokenizer"])
    dtype = token_dtype(tokenizer.vocab_size)
    workers = options["workers"]
    units = plan_units(options["inputs"], workers)
    total = sum(unit.size for unit in units)
    temporary = prefix.parent / f".{prefix.name}{TMP_MARK}{os.getpid()}"
    temporary.mkdir()
    reporter = _reporter(options, prefix)
    try:
        done = step = 0
        totals = {"documents": 0, "tokens": 0, "empty": 0}
        for result in _run_units(units, options, temporary, workers):
            done += result.size
            for key in totals:
                totals[key] += getattr(result, key)
            seconds = max(time.perf_counter() - started, 1e-9)
            step = max(done, step + 1)  # an empty file adds no bytes; steps still rise
            reporter.report(
                step=step,
                stage=STAGE,
                phase=PHASE,
                tokens=totals["tokens"],
                metrics={
                    "prep/bytes_done": done,
                    "prep/bytes_total": total,
                    "prep/documents": totals["documents"],
                    "prep/empty_documents": totals["empty"],
                    "prep/tokens": totals["tokens"],
                    "prep/tokens_per_s": totals["tokens"] / seconds,
                },
            )
        if totals["documents"] == 0:
            raise PrepareError(f"inputs {options['inputs']} hold no non-empty document")
        _merge(units, temporary, prefix, dtype)
        seconds = time.perf_counter() - started
        sidecar = sidecar_record(
            tokenizer, documents=totals["documents"], tokens=totals["tokens"], dtype=dtype,
            inputs=options["inputs"], seconds=seconds,
        )  # fmt: skip
        _commit(temporary, prefix, sidecar)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
        reporter.close()
    stats = {
        "empty_documents": totals["empty"],
        "input_bytes": total,
        "tokens_per_s": totals["tokens"] / max(seconds, 1e-9),
        "workers": workers,
        "units": len(units),
    }
    log.info(
        "prepared %s: %d documents, %d tokens (%d empty skipped) in %.1fs, %.0f tokens/s",
        prefix, sidecar["documents"], sidecar["tokens"], stats["empty_documents"], seconds,
        stats["tokens_per_s"],
    )  # fmt: skip
    return {"path": str(prefix), "report": sidecar, "stats": stats}


def _options(config: Mapping[str, Any]) -> dict[str, Any]:
    if not isinstance(config, Mapping):
        raise PrepareError("the data job's config must be a mapping")
    if unknown := sorted(set(config) - CONFIG_KEYS):
        raise PrepareError(f"unknown keys for a data job: {unknown}")
    inputs = config.get("inputs")
    if isinstance(inputs, str) or not inputs:
        raise PrepareError("inputs must be a non-empty list of files, folders or embedded:NAME")
    if not config.get("output"):
        raise PrepareError("a data job needs 'output', the prefix of the .bin/.idx pair")
    workers = config.get("workers") or _cores()
    if not isinstance(workers, int) or workers < 1:
        raise PrepareError(f"workers must be a positive integer, got {workers!r}")
    field = config.get("text_field") or "text"
    return {
        "inputs": [str(path) for path in inputs],
        "output": str(config["output"]),
        "tokenizer": str(config.get("tokenizer") or "byte"),
        "text_field": str(field),
        "workers": workers,
        "job": dict(config.get("job") or {}),
        "metrics": dict(config.get("metrics") or {}),
    }


# ------------------------------------------------------------------------------ the units


def plan_units(inputs: Sequence[str], workers: int) -> list[Unit]:
    """The inputs as units of work, in input order; large JSONL files split at line starts."""
    files: list[tuple[str, str, int]] = []
    for spec in inputs:
        if spec.startswith(EMBEDDED_PREFIXES):
            from trainer.tokenizer.corpus import embedded

            texts = embedded(_embedded_name(spec))
            files.append((spec, "embedded", sum(len(text.encode("utf-8")) for text in texts)))
            continue
        path = Path(spec).expanduser()
        if path.is_dir():
            found = sorted(
                p
                for p in path.rglob("*")
                if p.is_file() and not any(x.startswith(".") for x in p.relative_to(path).parts)
            )
            files += [(str(p), _kind(p), p.stat().st_size) for p in found]
        elif path.is_file():
            files.append((str(path), _kind(path), path.stat().st_size))
        else:
            raise PrepareError(f"input {spec!r}: no such file or folder (or use embedded:NAME)")
    total = sum(size for _, _, size in files)
    piece = max(MIN_SPLIT_BYTES, -(-total // max(workers * UNITS_PER_WORKER, 1)))
    units: list[Unit] = []
    for source, kind, size in files:
        if kind == "jsonl" and size > piece:
            bounds = _line_bounds(Path(source), size, piece)
            for start, end in zip(bounds, bounds[1:], strict=False):
                units.append(Unit(len(units), source, kind, start, end))
        elif kind == "parquet" and size > piece and (groups := _row_groups(source)) > 1:
            # Whole row groups a unit; its share of the file's bytes stands for its progress.
            per = max(1, round(groups * piece / size))
            for first in range(0, groups, per):
                last = min(first + per, groups)
                start, end = size * first // groups, size * last // groups
                units.append(Unit(len(units), source, kind, start, end, (first, last)))
        else:
            units.append(Unit(len(units), source, kind, 0, size))
    return units


def _embedded_name(spec: str) -> str:
    return next(spec[len(p) :] for p in EMBEDDED_PREFIXES if spec.startswith(p))


def _row_groups(path: str) -> int:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        return 1  # read whole, where the missing pyarrow is reported
    try:
        return pq.ParquetFile(path).num_row_groups
    except Exception:  # read whole, where what is wrong with it is reported with its path
        return 1


def _kind(path: Path) -> str:
    if path.suffix in JSONL_SUFFIXES:
        return "jsonl"
    if path.suffix in PARQUET_SUFFIXES:
        return "parquet"
    return "text"


def _line_bounds(path: Path, size: int, piece: int) -> list[int]:
    """Offsets 0 < ... < size, each the start of a line, about `piece` bytes apart."""
    bounds = [0]
    with path.open("rb") as handle:
        target = piece
        while target < size:
            handle.seek(target - 1)
            handle.readline()  # to the end of the line holding byte target-1
            offset = handle.tell()
            if offset >= size:
                break
            if offset > bounds[-1]:
                bounds.append(offset)
            target = offset + piece
    bounds.append(size)
    return bounds


# ------------------------------------------------------------------------------ the workers


def _run_units(
    units: list[Unit], options: dict[str, Any], temporary: Path, workers: int
) -> Iterator[UnitResult]:
    """Each unit's result as it finishes (any order); in this process for one worker."""
    job = (options["tokenizer"], options["text_field"], str(temporary))
    if workers == 1 or len(units) == 1:
        _init_worker(options["tokenizer"], threads=None)
        for unit in units:
            yield _tokenize_unit(unit, *job)
        return
    threads = max(1, _cores() // workers)
    context = multiprocessing.get_context("spawn")  # no tokenizer thread pool forked mid-use
    with context.Pool(
        min(workers, len(units)),
        initializer=_init_worker,
        initargs=(options["tokenizer"], threads, os.getpid()),
    ) as pool:
        pending = [pool.apply_async(_tokenize_unit, (unit, *job)) for unit in units]
        # Results in input order: the progress is that of a prefix of the input, and a failure
        # is the first in input order, the same one for any number of workers.
        for result in pending:
            yield result.get()


def _cores() -> int:
    """The cores this job may use: RAYON_NUM_THREADS where set (a pod's CPU limit: a pod sees
    its node's cores), else the ones this process may run on."""
    given = os.environ.get("RAYON_NUM_THREADS", "")
    if given.isdigit() and int(given) > 0:
        return int(given)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


_WORKER: dict[str, Any] = {}


def _init_worker(tokenizer: str, threads: int | None, parent: int | None = None) -> None:
    if parent is not None:
        from trainer.children import die_with_parent

        die_with_parent(parent)  # a killed job leaves no worker writing on
    if threads is not None:
        # Set before the tokenizers library starts its pool; the processes share the cores.
        os.environ["RAYON_NUM_THREADS"] = str(threads)
    if _WORKER.get("spec") != tokenizer:
        from trainer.tokenizer import load_tokenizer

        _WORKER["spec"], _WORKER["tokenizer"] = tokenizer, load_tokenizer(tokenizer)


def _tokenize_unit(unit: Unit, tokenizer_spec: str, field: str, temporary: str) -> UnitResult:
    """Tokenize one unit into `part-N.tokens` (the ids, as the `.bin` holds them) and
    `part-N.lengths.npy` (each document's length); `_merge` makes the pair of them. Workers
    write raw arrays so that they need not import megatron (and torch) at all."""
    _init_worker(tokenizer_spec, threads=None)
    tokenizer = _WORKER["tokenizer"]
    dtype = token_dtype(tokenizer.vocab_size)
    part = Path(temporary) / f"part-{unit.index:06d}"
    documents = tokens = empty = 0
    lengths: list[np.ndarray] = []
    with open(f"{part}.tokens", "wb") as out:
        for batch in _batches(_documents(unit, field)):
            texts = [text for text in batch if text]
            empty += len(batch) - len(texts)
            if not texts:
                continue
            flat, batch_lengths = tokenizer.encode_with_lengths(texts)
            out.write(flat.astype(dtype, copy=False).tobytes())
            lengths.append(batch_lengths)
            documents += len(texts)
            tokens += int(flat.size)
    np.save(f"{part}.lengths.npy", np.concatenate(lengths) if lengths else np.zeros(0, np.int64))
    return UnitResult(unit.index, documents, tokens, empty, unit.size)


def _batches(documents: Iterator[str]) -> Iterator[list[str]]:
    batch: list[str] = []
    size = 0
    for text in documents:
        batch.append(text)
        size += len(text)
        if len(batch) >= BATCH_DOCUMENTS or size >= BATCH_BYTES:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _documents(unit: Unit, field: str) -> Iterator[str]:
    if unit.kind == "embedded":
        from trainer.tokenizer.corpus import embedded

        yield from embedded(_embedded_name(unit.source))
    elif unit.kind == "text":
        raw = Path(unit.source).read_bytes()
        try:
            yield raw.decode("utf-8")
        except UnicodeDecodeError as error:
            raise PrepareError(f"{unit.source}: not UTF-8 text ({error})") from None
    elif unit.kind == "parquet":
        yield from _parquet_documents(unit, field)
    else:
        yield from _jsonl_documents(unit, field)


def _jsonl_documents(unit: Unit, field: str) -> Iterator[str]:
    with open(unit.source, "rb") as handle:
        handle.seek(unit.start)
        position = unit.start
        number = 0  # lines into the unit; the file's line number is counted only on an error
        for line in handle:
            if position >= unit.end:
                break
            number += 1
            position += len(line)
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except (UnicodeDecodeError, json.JSONDecodeError) as error:
                where = _line_number(unit, number)
                raise PrepareError(f"{unit.source}:{where}: not a JSON line ({error})") from None
            text = record.get(field) if isinstance(record, dict) else None
            if not isinstance(text, str):
                where = _line_number(unit, number)
                raise PrepareError(
                    f'{unit.source}:{where}: expected an object with a "{field}" string'
                )
            yield text


def _line_number(unit: Unit, number: int) -> int:
    """The file's line number of the unit's `number`-th line (1-based)."""
    before = 0
    with open(unit.source, "rb") as handle:
        remaining = unit.start
        while remaining > 0:
            chunk = handle.read(min(remaining, 1 << 20))
            if not chunk:
                break
            before += chunk.count(b"\n")
            remaining -= len(chunk)
    return before + number


def _parquet_documents(unit: Unit, field: str) -> Iterator[str]:
    """The `field` column of the unit's row groups; a null is an empty document."""
    path = unit.source
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise PrepareError(
            f"{path}: reading Parquet needs pyarrow, which is not installed; convert it to "
            "JSONL or install pyarrow"
        ) from None
    try:
        parquet = pq.ParquetFile(path)
    except Exception as error:  # pyarrow's own errors (ArrowInvalid, ...) are not ValueErrors
        raise PrepareError(f"{path}: not a Parquet file ({error})") from None
    names = parquet.schema_arrow.names
    if field not in names:
        raise PrepareError(f"{path}: no column {field!r} (columns: {names})")
    first, last = unit.groups or (0, parquet.num_row_groups)
    row = sum(parquet.metadata.row_group(g).num_rows for g in range(first))
    for group in range(first, last):
        column = parquet.read_row_group(group, columns=[field]).column(0)
        for value in column.to_pylist():
            row += 1
            if value is None:
                yield ""
            elif isinstance(value, str):
                yield value
            else:
                raise PrepareError(f"{path}: row {row}: {field!r} is not a string")


# ------------------------------------------------------------------------------ the output


def _merge(units: list[Unit], temporary: Path, prefix: Path, dtype: type) -> None:
    """The units' parts into one pair, in input order, one document (one sequence) at a time."""
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    merged = temporary / prefix.name
    builder = IndexedDatasetBuilder(f"{merged}.bin", dtype=dtype)
    for unit in units:
        part = temporary / f"part-{unit.index:06d}"
        lengths = np.load(f"{part}.lengths.npy")
        if not lengths.size:
            continue
        tokens = np.memmap(f"{part}.tokens", dtype=dtype, mode="r")
        offset = 0
        for length in lengths.tolist():
            builder.add_document(tokens[offset : offset + length], [length])
            offset += length
        del tokens
    builder.finalize(f"{merged}.idx")


def _commit(temporary: Path, prefix: Path, sidecar: dict[str, Any]) -> None:
    """Rename the pair into place, the sidecar last: it is what says the pair is complete."""
    merged = temporary / prefix.name
    sidecar_path = Path(f"{prefix}.json")
    sidecar_path.unlink(missing_ok=True)  # an older pair here is no longer complete
    (temporary / "sidecar.json").write_text(json.dumps(sidecar, indent=1) + "\n")
    for suffix in (".bin", ".idx"):
        os.replace(f"{merged}{suffix}", f"{prefix}{suffix}")
    os.replace(temporary / "sidecar.json", sidecar_path)


def _remove_stale_temporaries(prefix: Path) -> None:
    """Temporary folders a killed run of this prefix left (one writer per prefix at a time)."""
    for stale in prefix.parent.glob(f".{prefix.name}{TMP_MARK}*"):
        shutil.rmtree(stale, ignore_errors=True)


def _reporter(options: dict[str, Any], prefix: Path) -> Any:
    from trainer.report import (
        INGEST_TOKEN_ENV,
        HttpSink,
        JsonlSink,
        MetricsReporter,
        TeeSink,
    )

    metrics, job = options["metrics"], options["job"]
    sinks: list[Any] = []
    job_id = str(job.get("id", "prepare"))
    if metrics.get("url"):
        token = metrics.get("token") or os.environ.get(INGEST_TOKEN_ENV) or None
        sinks.append(HttpSink(metrics["url"], job_id, token, float(metrics.get("timeout_s", 5))))
    if metrics.get("jsonl_path") or not sinks:
        sinks.append(JsonlSink(metrics.get("jsonl_path") or f"{prefix}.progress.jsonl"))
    sink = sinks[0] if len(sinks) == 1 else TeeSink(sinks)
    return MetricsReporter(sink, job=job_id, attempt=int(job.get("attempt", 0)))


# ------------------------------------------------------------------------------ the command


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m trainer.prepare",
        description="Tokenize text into a Megatron .bin/.idx pair; print the result as JSON.",
    )
    parser.add_argument("--config", required=True, help="the job's JSON config (see run_data_job)")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    try:
        config = json.loads(Path(args.config).read_text(encoding="utf-8"))
        result = run_data_job(config)
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

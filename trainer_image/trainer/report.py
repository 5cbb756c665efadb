"""Metrics out: one record per report, to the service's ingest API or to a JSONL file.

A record is exactly
`{"job", "attempt", "step", "stage", "phase", "tokens", "metrics": {name: value}}`; a
non-finite metric is sent as the string "NaN", "Infinity" or "-Infinity", so every record is
strict JSON. `MetricsReporter.report` only enqueues: a slow or dead service never holds up a
training step. `HttpSink` posts batches from a background thread, retrying connection errors,
5xx and 429 with capped, jittered exponential backoff; any other 4xx is logged and dropped,
since it will never succeed. Its buffer is bounded: when full, the oldest record is dropped
and the running count of drops rides along in the next record as `metrics/dropped`.

Delivery is at least once when a request times out after the service stored it; otherwise
each record arrives once, in order. Only global rank 0 reports; the trainer decides that.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

import httpx

from trainer.config import TrainerConfig

# Where a pod finds its ingest token (mounted from the workload's Secret).
INGEST_TOKEN_ENV = "PRETRAIN_INGEST_TOKEN"

log = logging.getLogger(__name__)

DROPPED_METRIC = "metrics/dropped"
# Records per POST: far below the service's default 1 MiB body limit.
MAX_BATCH = 200
# How long close() waits for the sender thread beyond its deadline (a request in flight).
JOIN_GRACE_S = 0.2


def encode_nonfinite(value: Any) -> Any:
    """`value` with every NaN/±inf float replaced by "NaN", "Infinity" or "-Infinity"."""
    if isinstance(value, float) and not math.isfinite(value):
        if math.isnan(value):
            return "NaN"
        return "Infinity" if value > 0 else "-Infinity"
    if isinstance(value, Mapping):
        return {key: encode_nonfinite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [encode_nonfinite(item) for item in value]
    return value


def make_record(
    *,
    job: str,
    attempt: int,
    step: int,
    stage: str,
    phase: str,
    tokens: int,
    metrics: Mapping[str, Any],
) -> dict[str, Any]:
    """One metric record; metric values become plain floats/ints (tensors and numpy included)."""
    values = {}
    for name, value in metrics.items():
        if not isinstance(name, str):
            raise TypeError(f"metric names must be strings, got {name!r}")
        values[name] = encode_nonfinite(_number(name, value))
    return {
        "job": job,
        "attempt": int(attempt),
        "step": int(step),
        "stage": stage,
        "phase": phase,
        "tokens": int(tokens),
        "metrics": values,
    }


def _number(name: str, value: Any) -> int | float:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int):
        return value
    try:
        return float(value)  # float, numpy scalars, one-element tensors
    except (TypeError, ValueError) as exc:
        raise TypeError(f"metric {name!r} is not a number: {value!r}") from exc


class Sink(Protocol):
    """Where records go."""

    def submit(self, record: dict[str, Any]) -> None: ...

    def flush(self, timeout: float) -> bool: ...

    def close(self, timeout: float) -> bool: ...


class MetricsReporter:
    """Builds records for one job attempt and hands them to a sink."""

    def __init__(self, sink: Sink, *, job: str, attempt: int) -> None:
        self.sink = sink
        self.job = job
        self.attempt = attempt
        self._closed = False

    @classmethod
    def from_config(cls, config: TrainerConfig) -> MetricsReporter:
        """The JSONL file always; also HTTP to the service when `metrics.url` is set."""
        metrics = config.metrics
        sink: Sink = JsonlSink(metrics.jsonl_path)
        if metrics.url:
            http = HttpSink(
                metrics.url,
                config.job.id,
                ingest_token(config),
                metrics.timeout_s,
                flush_interval_s=metrics.flush_interval_s,
                max_buffer=metrics.max_buffer,
            )
            sink = TeeSink([http, sink])
        return cls(sink, job=config.job.id, attempt=config.job.attempt)

    def report(
        self, step: int, stage: str, phase: str, tokens: int, metrics: Mapping[str, Any]
    ) -> None:
        """Enqueue one record and return; delivery happens elsewhere."""
        if self._closed:
            raise RuntimeError("the metrics reporter is closed")
        record = make_record(
            job=self.job,
            attempt=self.attempt,
            step=step,
            stage=stage,
            phase=phase,
            tokens=tokens,
            metrics=metrics,
        )
        self.sink.submit(record)

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait up to `timeout` s until every record so far is delivered (or given up on)."""
        return self.sink.flush(timeout)

    def close(self, timeout: float = 10.0) -> bool:
        """Deliver what is buffered within `timeout` s, then stop; True if nothing was left."""
        if self._closed:
            return True
        self._closed = True
        return self.sink.close(timeout)

    def __enter__(self) -> MetricsReporter:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def ingest_token(config: TrainerConfig) -> str | None:
    """The job's ingest token: from the config, else from the pod's Secret via the environment."""
    return config.metrics.token or os.environ.get(INGEST_TOKEN_ENV) or None


class TeeSink:
    """Every record to several sinks (the service, and a local file to read after the fact)."""

    def __init__(self, sinks: list[Sink]) -> None:
        self.sinks = sinks

    def submit(self, record: dict[str, Any]) -> None:
        for sink in self.sinks:
            sink.submit(record)

    def flush(self, timeout: float) -> bool:
        return all([sink.flush(timeout) for sink in self.sinks])

    def close(self, timeout: float) -> bool:
        return all([sink.close(timeout) for sink in self.sinks])


class JsonlSink:
    """Appends one record per line to a local file, flushed after each line."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a", encoding="utf-8")
        self._lock = threading.Lock()

    def submit(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, allow_nan=False, ensure_ascii=False)
        with self._lock:
            if self._file.closed:
                raise RuntimeError(f"the metrics file {self.path} is closed")
            self._file.write(line + "\n")
            self._file.flush()

    def flush(self, timeout: float) -> bool:
        with self._lock:
            if not self._file.closed:
                self._file.flush()
        return True

    def close(self, timeout: float) -> bool:
        with self._lock:
            self._file.close()
        return True


# ---------------------------------------------------------------- HTTP


@dataclass(frozen=True)
class Backoff:
    """Capped exponential backoff with jitter: attempt n waits between half and all of
    min(max_s, initial_s × multiplier^n), or longer when the server asks (Retry-After)."""

    initial_s: float = 0.5
    max_s: float = 30.0
    multiplier: float = 2.0

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        ceiling = min(self.max_s, self.initial_s * self.multiplier ** min(attempt, 64))
        delay = ceiling / 2 + random.uniform(0.0, ceiling / 2)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.max_s))
        return delay


class _Outcome(Enum):
    DELIVERED = "delivered"
    RETRY = "retry"
    REJECTED = "rejected"


def _post(
    client: httpx.Client, url: str, body: bytes, token: str | None, timeout: float
) -> tuple[_Outcome, float | None, httpx.Response | None]:
    """One POST, classified: delivered, worth retrying (with the server's Retry-After), or not;
    and the response, when there was one."""
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        response = client.post(url, content=body, headers=headers, timeout=timeout)
    except httpx.TransportError as exc:
        log.debug("POST %s failed: %r", url, exc)
        return _Outcome.RETRY, None, None
    status = response.status_code
    if 200 <= status < 300:
        return _Outcome.DELIVERED, None, response
    if status == 429 or status >= 500:
        log.debug("POST %s answered %d; will retry", url, status)
        return _Outcome.RETRY, _retry_after(response), response
    log.warning("POST %s answered %d, dropping it: %s", url, status, response.text[:300])
    return _Outcome.REJECTED, None, response


def _retry_after(response: httpx.Response) -> float | None:
    try:
        seconds = float(response.headers.get("Retry-After", ""))
    except ValueError:
        return None  # absent, or an HTTP date: our own backoff will do
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


class HttpSink:
    """POSTs batches of records to `{url}/v1/jobs/{job}/metrics` from a background thread."""

    def __init__(
        self,
        url: str,
        job_id: str,
        token: str | None = None,
        timeout: float = 5.0,
        *,
        flush_interval_s: float = 2.0,
        max_buffer: int = 10000,
        max_batch: int = MAX_BATCH,
        backoff: Backoff | None = None,
    ) -> None:
        if max_buffer < 1 or max_batch < 1:
            raise ValueError("max_buffer and max_batch must be at least 1")
        self.endpoint = f"{url.rstrip('/')}/v1/jobs/{quote(job_id, safe='')}/metrics"
        self.token = token
        self.timeout = timeout
        self.flush_interval_s = flush_interval_s
        self.max_buffer = max_buffer
        self.max_batch = max_batch
        self.backoff = backoff or Backoff()
        self._client = httpx.Client()
        self._cond = threading.Condition()
        self._buffer: deque[tuple[int, dict[str, Any]]] = deque()  # (sequence number, record)
        self._next_seq = 0
        self._flush_waiters = 0
        self._deadline: float | None = None  # set by close()
        self._stop = False
        self._sender_done = False
        self.dropped = 0  # records evicted from the full buffer
        self.rejected = 0  # records refused with a 4xx other than 429
        self.delivered = 0  # records the service accepted
        self.failures = 0  # POSTs that failed and were retried
        self.thread = threading.Thread(target=self._run, name="metrics-http-sink", daemon=True)
        self.thread.start()

    @property
    def pending(self) -> int:
        """Records waiting to be delivered."""
        with self._cond:
            return len(self._buffer)

    def buffered(self) -> list[dict[str, Any]]:
        """A copy of the records waiting to be delivered, oldest first."""
        with self._cond:
            return [record for _, record in self._buffer]

    def submit(self, record: dict[str, Any]) -> None:
        with self._cond:
            if self._deadline is not None:
                raise RuntimeError("the metrics sink is closed")
            if len(self._buffer) >= self.max_buffer:
                self._buffer.popleft()
                self.dropped += 1
                if self.dropped & (self.dropped - 1) == 0:  # 1, 2, 4, 8, ...: log, don't flood
                    log.warning(
                        "metrics buffer full (%d records): %d oldest dropped so far",
                        self.max_buffer,
                        self.dropped,
                    )
                record["metrics"][DROPPED_METRIC] = self.dropped
            self._buffer.append((self._next_seq, record))
            self._next_seq += 1
            if len(self._buffer) >= self.max_batch:
                self._cond.notify_all()

    def flush(self, timeout: float) -> bool:
        with self._cond:
            if not self._buffer:
                return True
            target = self._next_seq - 1
            self._flush_waiters += 1
            self._cond.notify_all()
            try:
                self._cond.wait_for(
                    lambda: not self._buffer or self._buffer[0][0] > target or self._sender_done,
                    timeout,
                )
                return not self._buffer or self._buffer[0][0] > target
            finally:
                self._flush_waiters -= 1

    def close(self, timeout: float) -> bool:
        """Send what is buffered until `timeout` s from now, then stop the thread."""
        with self._cond:
            if self._deadline is None:
                self._deadline = time.monotonic() + timeout
                self._cond.notify_all()
            deadline = self._deadline
            self._cond.wait_for(
                lambda: not self._buffer or self._sender_done,
                max(0.0, deadline - time.monotonic()),
            )
            drained = not self._buffer
            left = len(self._buffer)
            self._stop = True
            self._cond.notify_all()
        self.thread.join(max(0.0, deadline - time.monotonic()) + JOIN_GRACE_S)
        if not drained:
            log.warning("metrics sink closed with %d records undelivered", left)
        return drained

    # --- the sender thread -------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while self._wait_for_work():
                self._deliver_front()
        except Exception:
            log.exception("metrics sender thread died; records stay buffered")
        finally:
            self._client.close()
            with self._cond:
                self._sender_done = True
                self._cond.notify_all()

    def _past_deadline(self) -> bool:
        return self._deadline is not None and time.monotonic() >= self._deadline

    def _wait_for_work(self) -> bool:
        """Block until a batch is due; False when the thread should exit."""
        next_send = time.monotonic() + self.flush_interval_s
        with self._cond:
            while True:
                if self._stop or self._past_deadline():
                    return False
                urgent = self._flush_waiters > 0 or self._deadline is not None
                if self._buffer and (
                    urgent or len(self._buffer) >= self.max_batch or time.monotonic() >= next_send
                ):
                    return True
                if not self._buffer:
                    if self._deadline is not None:  # closing with nothing left
                        return False
                    next_send = time.monotonic() + self.flush_interval_s
                self._cond.wait(max(0.0, next_send - time.monotonic()))

    def _deliver_front(self) -> None:
        """Send the oldest batch until it is delivered, rejected, or the sink stops."""
        attempt = 0
        while True:
            with self._cond:
                if self._stop or self._past_deadline() or not self._buffer:
                    return
                # Rebuilt on every try: records evicted meanwhile are not resent.
                batch = [self._buffer[i] for i in range(min(self.max_batch, len(self._buffer)))]
                timeout = self.timeout
                if self._deadline is not None:
                    timeout = min(timeout, max(0.01, self._deadline - time.monotonic()))
            body = json.dumps([record for _, record in batch], allow_nan=False).encode()
            outcome, retry_after, _ = _post(self._client, self.endpoint, body, self.token, timeout)
            with self._cond:
                if outcome is not _Outcome.RETRY:
                    last = batch[-1][0]
                    while self._buffer and self._buffer[0][0] <= last:
                        self._buffer.popleft()
                    if outcome is _Outcome.DELIVERED:
                        self.delivered += len(batch)
                    else:
                        self.rejected += len(batch)
                    self._cond.notify_all()
                    return
                self.failures += 1
                wake_at = time.monotonic() + self.backoff.delay(attempt, retry_after)
                while not self._stop and time.monotonic() < wake_at and not self._past_deadline():
                    limit = wake_at if self._deadline is None else min(wake_at, self._deadline)
                    self._cond.wait(max(0.0, limit - time.monotonic()))
            attempt += 1


def post_checkpoint(
    url: str,
    job: str,
    token: str | None,
    payload: Mapping[str, Any],
    *,
    timeout: float = 5.0,
    deadline_s: float = 60.0,
    backoff: Backoff | None = None,
) -> dict[str, Any] | None:
    """Register a checkpoint: POST `{url}/v1/jobs/{job}/checkpoints`, retrying like `HttpSink`.

    Blocks for at most about `deadline_s`. The service's answer when it accepted it (a JSON
    object; `{}` when the body is not one), None when it did not: the checkpoint manager acts
    on the answer's `prune` list.
    """
    endpoint = f"{url.rstrip('/')}/v1/jobs/{quote(job, safe='')}/checkpoints"
    response = _post_until_delivered(
        endpoint, payload, token, timeout=timeout, deadline_s=deadline_s, backoff=backoff
    )
    if response is None:
        return None
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def post_result(
    url: str,
    job: str,
    token: str | None,
    payload: Mapping[str, Any],
    *,
    resource: str = "result",
    timeout: float = 10.0,
    deadline_s: float = 300.0,
    backoff: Backoff | None = None,
) -> bool:
    """Report what a batch workload made: POST `{url}/v1/jobs/{job}/{resource}` (`result`: a
    tokenizer or data job's result; `evaluations`: a checkpoint's benchmark scores), retrying like
    `HttpSink`. Blocks for at most about `deadline_s`; True when the service accepted it.
    """
    endpoint = f"{url.rstrip('/')}/v1/jobs/{quote(job, safe='')}/{resource}"
    response = _post_until_delivered(
        endpoint, payload, token, timeout=timeout, deadline_s=deadline_s, backoff=backoff
    )
    return response is not None


def _post_until_delivered(
    endpoint: str,
    payload: Mapping[str, Any],
    token: str | None,
    *,
    timeout: float,
    deadline_s: float,
    backoff: Backoff | None,
) -> httpx.Response | None:
    """POST until the service takes it (its response) or refuses it / the deadline passes (None)."""
    body = json.dumps(encode_nonfinite(payload), allow_nan=False).encode()
    backoff = backoff or Backoff()
    deadline = time.monotonic() + deadline_s
    with httpx.Client() as client:
        attempt = 0
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            outcome, retry_after, response = _post(
                client, endpoint, body, token, min(timeout, remaining)
            )
            if outcome is _Outcome.DELIVERED:
                return response
            if outcome is _Outcome.REJECTED:
                return None
            delay = backoff.delay(attempt, retry_after)
            if time.monotonic() + delay >= deadline:
                break
            time.sleep(delay)
            attempt += 1
    log.warning("gave up posting to %s after %.0f s", endpoint, deadline_s)
    return None

"""Metric records out: the JSONL file, and HTTP against a real server on 127.0.0.1."""

from __future__ import annotations

import json
import math
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from trainer.config import example_config
from trainer.report import (
    DROPPED_METRIC,
    Backoff,
    HttpSink,
    JsonlSink,
    MetricsReporter,
    make_record,
    post_checkpoint,
)

RECORD_KEYS = ["job", "attempt", "step", "stage", "phase", "tokens", "metrics"]
FAST = Backoff(initial_s=0.01, max_s=0.05)


def strict_loads(text: str | bytes) -> Any:
    """json.loads that refuses the bare NaN/Infinity tokens Python would otherwise accept."""

    def refuse(name: str) -> Any:
        raise AssertionError(f"bare {name} in JSON")

    return json.loads(text, parse_constant=refuse)


def wait_until(condition: Callable[[], bool], what: str) -> None:
    """Wait for another thread's progress; a generous bound only turns a hang into a failure."""
    give_up = time.monotonic() + 20
    while not condition():
        if time.monotonic() > give_up:
            raise AssertionError(f"never happened: {what}")
        time.sleep(0.005)


@dataclass
class Request:
    path: str
    headers: dict[str, str]
    body: bytes
    status: int


class IngestServer:
    """A real HTTP server that answers scripted statuses (then 201) and records every request."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses = deque(statuses)
        self.body = b"{}"  # what a 2xx answer carries
        self.requests: list[Request] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with server.lock:
                    status = server.statuses.popleft() if server.statuses else 201
                    server.requests.append(Request(self.path, dict(self.headers), body, status))
                self.send_response(status)
                if status == 429:
                    self.send_header("Retry-After", "0")
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(server.body if 200 <= status < 300 else b"{}")

            def log_message(self, *args: object) -> None:
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}"
        self.thread = threading.Thread(
            target=self.http.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self.thread.start()

    def accepted(self) -> list[dict[str, Any]]:
        """Records of the requests answered 2xx, in arrival order."""
        with self.lock:
            done = [r for r in self.requests if 200 <= r.status < 300]
        return [record for r in done for record in strict_loads(r.body)]

    def stop(self) -> None:
        self.http.shutdown()
        self.http.server_close()
        self.thread.join()


@pytest.fixture
def ingest() -> Iterator[Callable[..., IngestServer]]:
    servers: list[IngestServer] = []

    def start(statuses: list[int] = ()) -> IngestServer:  # type: ignore[assignment]
        servers.append(IngestServer(list(statuses)))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def dead_url() -> str:
    """A loopback port nobody listens on: connections are refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def http_reporter(url: str, **options: Any) -> tuple[MetricsReporter, HttpSink]:
    options = {"flush_interval_s": 60.0, "backoff": FAST, **options}
    sink = HttpSink(url, "job-1", "secret-token", 5.0, **options)
    return MetricsReporter(sink, job="job-1", attempt=2), sink


def report_steps(reporter: MetricsReporter, steps: range) -> None:
    for step in steps:
        reporter.report(step, "pretrain", "stable", 512 * (step + 1), {"loss": 2.0, "loss/en": 2.5})


# ---------------------------------------------------------------- records


def test_a_record_has_exactly_the_agreed_shape() -> None:
    record = make_record(
        job="j", attempt=1, step=3, stage="anneal", phase="decay", tokens=4096, metrics={"lr": 1e-4}
    )
    assert list(record) == RECORD_KEYS
    assert record == {
        "job": "j",
        "attempt": 1,
        "step": 3,
        "stage": "anneal",
        "phase": "decay",
        "tokens": 4096,
        "metrics": {"lr": 1e-4},
    }


def test_non_finite_metrics_become_strings_and_the_record_is_strict_json() -> None:
    record = make_record(
        job="j",
        attempt=0,
        step=0,
        stage="s",
        phase="warmup",
        tokens=0,
        metrics={"nan": math.nan, "inf": math.inf, "ninf": -math.inf, "ok": 1.5},
    )
    assert record["metrics"] == {"nan": "NaN", "inf": "Infinity", "ninf": "-Infinity", "ok": 1.5}
    json.dumps(record, allow_nan=False)


def test_tensors_and_numpy_scalars_become_plain_numbers() -> None:
    record = make_record(
        job="j",
        attempt=0,
        step=0,
        stage="s",
        phase="stable",
        tokens=0,
        metrics={
            "tensor": torch.tensor(2.5),
            "nan_tensor": torch.tensor(float("nan")),
            "np32": np.float32(0.5),
            "count": 7,
            "flag": True,
        },
    )
    assert record["metrics"] == {
        "tensor": 2.5,
        "nan_tensor": "NaN",
        "np32": 0.5,
        "count": 7,
        "flag": 1.0,
    }
    assert all(type(v) in (int, float, str) for v in record["metrics"].values())


def test_a_metric_that_is_not_a_number_is_refused() -> None:
    with pytest.raises(TypeError, match="metric 'loss' is not a number"):
        make_record(
            job="j", attempt=0, step=0, stage="s", phase="p", tokens=0, metrics={"loss": "low"}
        )


# ---------------------------------------------------------------- JSONL


def test_jsonl_sink_writes_one_parseable_line_per_record(tmp_path: Path) -> None:
    path = tmp_path / "out" / "metrics.jsonl"
    with MetricsReporter(JsonlSink(path), job="local", attempt=0) as reporter:
        reporter.report(0, "pretrain", "warmup", 128, {"loss": math.nan, "grad_norm": math.inf})
        reporter.report(1, "pretrain", "warmup", 256, {"loss": 5.5, "delta": -math.inf})
    lines = path.read_text().splitlines()
    records = [strict_loads(line) for line in lines]
    assert [list(r) for r in records] == [RECORD_KEYS, RECORD_KEYS]
    assert records[0]["metrics"] == {"loss": "NaN", "grad_norm": "Infinity"}
    assert records[1]["metrics"] == {"loss": 5.5, "delta": "-Infinity"}
    assert [r["tokens"] for r in records] == [128, 256]


def test_jsonl_sink_appends_to_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    for step in range(2):
        with MetricsReporter(JsonlSink(path), job="local", attempt=step) as reporter:
            reporter.report(step, "pretrain", "stable", 0, {"loss": 1.0})
    assert [strict_loads(line)["attempt"] for line in path.read_text().splitlines()] == [0, 1]


def test_each_record_is_on_disk_before_report_returns(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    reporter = MetricsReporter(JsonlSink(path), job="local", attempt=0)
    reporter.report(0, "pretrain", "stable", 0, {"loss": 1.0})
    assert len(path.read_text().splitlines()) == 1
    reporter.close()


def test_reporter_from_config_writes_jsonl_without_a_url(tmp_path: Path) -> None:
    config = example_config()
    config.metrics.jsonl_path = str(tmp_path / "m.jsonl")
    config.job.id, config.job.attempt = "job-9", 3
    reporter = MetricsReporter.from_config(config)
    assert isinstance(reporter.sink, JsonlSink)
    reporter.report(0, "pretrain", "warmup", 0, {"loss": 1.0})
    reporter.close()
    record = strict_loads((tmp_path / "m.jsonl").read_text())
    assert (record["job"], record["attempt"]) == ("job-9", 3)


def test_reporter_from_config_posts_to_the_service_and_keeps_a_local_file(ingest, tmp_path: Path) -> None:
    server = ingest()
    config = example_config()
    config.metrics.url = server.url + "/"
    config.metrics.token = "tok"
    config.metrics.max_buffer = 7
    config.metrics.jsonl_path = str(tmp_path / "m.jsonl")
    config.job.id = "job-9"
    reporter = MetricsReporter.from_config(config)
    http, jsonl = reporter.sink.sinks
    assert isinstance(http, HttpSink) and isinstance(jsonl, JsonlSink)
    assert http.endpoint == f"{server.url}/v1/jobs/job-9/metrics"
    assert http.max_buffer == 7
    reporter.report(0, "pretrain", "warmup", 0, {"loss": 1.0})
    assert reporter.close(timeout=10)
    assert [r["job"] for r in server.accepted()] == ["job-9"]
    assert server.requests[0].headers["Authorization"] == "Bearer tok"
    assert json.loads((tmp_path / "m.jsonl").read_text())["metrics"] == {"loss": 1.0}


def test_the_ingest_token_comes_from_the_pod_environment_when_the_config_has_none(monkeypatch) -> None:
    from trainer.report import ingest_token

    config = example_config()
    config.metrics.token = None
    monkeypatch.setenv("PRETRAIN_INGEST_TOKEN", "pto_from_secret")
    assert ingest_token(config) == "pto_from_secret"
    config.metrics.token = "pto_in_config"
    assert ingest_token(config) == "pto_in_config"


def test_report_after_close_is_an_error(tmp_path: Path) -> None:
    reporter = MetricsReporter(JsonlSink(tmp_path / "m.jsonl"), job="local", attempt=0)
    reporter.close()
    with pytest.raises(RuntimeError, match="closed"):
        reporter.report(0, "pretrain", "stable", 0, {})


# ---------------------------------------------------------------- HTTP


@pytest.mark.parametrize("status", [503, 500, 429])
def test_http_sink_retries_then_delivers_every_record_once_in_order(ingest, status: int) -> None:
    server = ingest([status, status])
    reporter, sink = http_reporter(server.url, max_batch=10)
    report_steps(reporter, range(25))
    assert reporter.flush(timeout=20)
    report_steps(reporter, range(25, 30))
    assert reporter.close(timeout=20)
    records = server.accepted()
    assert [r["step"] for r in records] == list(range(30))
    assert all(r["job"] == "job-1" and r["attempt"] == 2 for r in records)
    assert sink.failures == 2
    assert sink.delivered == 30 and sink.dropped == 0 and sink.rejected == 0
    assert [r.status for r in server.requests[:2]] == [status, status]
    for request in server.requests:
        assert request.path == "/v1/jobs/job-1/metrics"
        assert request.headers["Authorization"] == "Bearer secret-token"
        assert request.headers["Content-Type"] == "application/json"
        assert len(strict_loads(request.body)) <= 10


def test_http_sink_sends_non_finite_values_as_strings(ingest) -> None:
    server = ingest()
    reporter, _ = http_reporter(server.url)
    reporter.report(0, "pretrain", "warmup", 0, {"loss": math.nan, "grad_norm": math.inf})
    assert reporter.close(timeout=10)
    (record,) = server.accepted()
    assert record["metrics"] == {"loss": "NaN", "grad_norm": "Infinity"}


def test_http_sink_drops_a_rejected_batch_without_retrying(ingest) -> None:
    server = ingest([400])
    reporter, sink = http_reporter(server.url)
    report_steps(reporter, range(3))
    assert reporter.flush(timeout=10)  # resolved: nothing is left to retry
    assert len(server.requests) == 1
    assert sink.rejected == 3 and sink.failures == 0 and sink.pending == 0
    report_steps(reporter, range(3, 4))  # later records still go through
    assert reporter.close(timeout=10)
    assert [r["step"] for r in server.accepted()] == [3]
    assert len(server.requests) == 2


def test_http_sink_sends_on_its_own_after_the_flush_interval(ingest) -> None:
    server = ingest()
    reporter, _ = http_reporter(server.url, flush_interval_s=0.02)
    report_steps(reporter, range(2))
    wait_until(lambda: len(server.accepted()) == 2, "the timed flush")
    reporter.close(timeout=10)


def test_report_does_not_wait_for_a_dead_service_and_the_buffer_drops_the_oldest(
    dead_url: str,
) -> None:
    reporter, sink = http_reporter(dead_url, max_buffer=5, flush_interval_s=0.01)
    report_steps(reporter, range(3))
    wait_until(lambda: sink.failures >= 2, "the sender retrying")
    report_steps(reporter, range(3, 12))
    # Every report() came back while the sender was still failing: all 12 were enqueued,
    # the 7 oldest evicted, and none delivered.
    assert sink.thread.is_alive()
    assert sink.delivered == 0
    assert sink.pending == 5 and sink.dropped == 7
    buffered = sink.buffered()
    assert [r["step"] for r in buffered] == [7, 8, 9, 10, 11]
    # The running count of drops rides along in the records that followed them.
    assert [r["metrics"].get(DROPPED_METRIC) for r in buffered] == [3, 4, 5, 6, 7]
    assert not reporter.close(timeout=0.1)


def test_close_gives_up_at_its_deadline_and_stops_the_thread(dead_url: str) -> None:
    reporter, sink = http_reporter(
        dead_url, flush_interval_s=0.01, backoff=Backoff(initial_s=0.01, max_s=10.0)
    )
    report_steps(reporter, range(3))
    wait_until(lambda: sink.failures >= 1, "the first failed POST")
    assert reporter.close(timeout=0.2) is False
    assert not sink.thread.is_alive()
    assert sink.pending == 3 and sink.delivered == 0
    with pytest.raises(RuntimeError, match="closed"):
        sink.submit(
            make_record(job="j", attempt=0, step=0, stage="s", phase="p", tokens=0, metrics={})
        )


def test_close_delivers_everything_buffered(ingest) -> None:
    server = ingest()
    reporter, sink = http_reporter(server.url)  # a long flush interval: only close() sends
    report_steps(reporter, range(5))
    assert reporter.close(timeout=10) is True
    assert not sink.thread.is_alive()
    assert [r["step"] for r in server.accepted()] == [0, 1, 2, 3, 4]


def test_flush_with_nothing_buffered_returns_at_once(dead_url: str) -> None:
    reporter, sink = http_reporter(dead_url)
    assert reporter.flush(timeout=0)
    assert reporter.close(timeout=0.1) is True
    assert not sink.thread.is_alive()


# ---------------------------------------------------------------- checkpoints and backoff


def test_post_checkpoint_retries_then_registers_once(ingest) -> None:
    server = ingest([503])
    payload = {"step": 40, "path": "/ckpt/step-40", "loss": math.nan}
    assert post_checkpoint(server.url, "job-1", "tok", payload, backoff=FAST, deadline_s=20) == {}
    assert [r.status for r in server.requests] == [503, 201]
    request = server.requests[-1]
    assert request.path == "/v1/jobs/job-1/checkpoints"
    assert request.headers["Authorization"] == "Bearer tok"
    assert strict_loads(request.body) == {"step": 40, "path": "/ckpt/step-40", "loss": "NaN"}


def test_post_checkpoint_does_not_retry_a_4xx(ingest) -> None:
    server = ingest([404])
    assert post_checkpoint(server.url, "job-1", "tok", {"step": 1}, backoff=FAST) is None
    assert len(server.requests) == 1


def test_post_checkpoint_gives_up_at_its_deadline(dead_url: str) -> None:
    assert post_checkpoint(dead_url, "job-1", None, {"step": 1}, backoff=FAST, deadline_s=0.1) is None


def test_post_checkpoint_returns_the_services_answer_with_its_prune_list(ingest) -> None:
    server = ingest()
    prune = [{"path": "/ck/step-00000008", "step": 8, "attempt": 0, "manifest_sha256": "ab" * 32}]
    server.body = json.dumps({"id": 3, "step": 4, "prune": prune}).encode()
    answer = post_checkpoint(server.url, "job-1", "tok", {"step": 4}, backoff=FAST)
    assert answer == {"id": 3, "step": 4, "prune": prune}


@pytest.mark.parametrize("body", [b"", b"[1, 2]", b"not json"])
def test_a_registration_answer_that_is_not_an_object_means_nothing_to_prune(ingest, body) -> None:
    server = ingest()
    server.body = body
    assert post_checkpoint(server.url, "job-1", "tok", {"step": 4}, backoff=FAST) == {}


def test_backoff_grows_exponentially_with_jitter_up_to_its_cap() -> None:
    backoff = Backoff(initial_s=1.0, max_s=8.0)
    for attempt, ceiling in enumerate([1.0, 2.0, 4.0, 8.0, 8.0, 8.0]):
        delays = [backoff.delay(attempt) for _ in range(50)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(set(delays)) > 1
    assert backoff.delay(10_000) <= 8.0


def test_backoff_honours_retry_after_within_its_cap() -> None:
    backoff = Backoff(initial_s=0.01, max_s=8.0)
    assert backoff.delay(0, retry_after=3.0) == 3.0
    assert backoff.delay(0, retry_after=600.0) == 8.0

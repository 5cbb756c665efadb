"""`python -m trainer.job_result`: a finished workload hands its result to the service."""

from __future__ import annotations

import json
from pathlib import Path

from tests.trainer import test_report
from tests.trainer.test_report import FAST, strict_loads
from trainer import job_result
from trainer.report import post_result

# The scripted ingest server and the refused port of the reporter's tests.
ingest = test_report.ingest
dead_url = test_report.dead_url

RESULT = {"path": "/checkpoints/tok-7/tokenizer", "report": {"layout": {"vocab_size": 1010}}}


def result_file(tmp_path: Path, content: object = RESULT) -> str:
    path = tmp_path / "result.json"
    path.write_text(json.dumps(content))
    return str(path)


def run(tmp_path: Path, url: str, content: object = RESULT) -> int:
    return job_result.main(
        [result_file(tmp_path, content), "--url", url, "--job", "7", "--attempt", "1", "--deadline-s", "5"]
    )


def test_the_result_goes_to_the_jobs_result_route_with_the_pods_token(ingest, tmp_path, monkeypatch):
    server = ingest([503])
    monkeypatch.setenv("PRETRAIN_INGEST_TOKEN", "pto_secret")

    assert run(tmp_path, server.url) == 0

    assert [r.status for r in server.requests] == [503, 201]
    request = server.requests[-1]
    assert request.path == "/v1/jobs/7/result"
    assert request.headers["Authorization"] == "Bearer pto_secret"
    assert strict_loads(request.body) == {"attempt": 1, **RESULT}


def test_a_refused_result_fails_the_workload(ingest, tmp_path):
    server = ingest([409])
    assert run(tmp_path, server.url) == 1
    assert len(server.requests) == 1


def test_a_file_that_is_not_a_result_fails_without_posting(ingest, tmp_path, capsys):
    server = ingest()
    assert run(tmp_path, server.url, content={"layout": {}}) == 1
    assert server.requests == [] and "not a" in capsys.readouterr().err


def test_post_result_gives_up_at_its_deadline(dead_url):
    assert not post_result(dead_url, "7", None, {"attempt": 0}, backoff=FAST, deadline_s=0.1)

"""Every dashboard query, run by a real Prometheus against what two real API replicas exported
while a job trained, diverged on one channel and was rolled back by the watchdog."""

from __future__ import annotations

import json
import re
import time
import urllib.request

import pytest

from service import ingest, jobs
from service.db import repo
from service.db.models import Role
from service.db.session import get_sessionmaker
from service.tokens import Principal, mint_token
from tests.dashboards import training
from tests.dashboards.queries import fill_in, load_generator, queries
from tests.prometheus_server import SCRAPE_INTERVAL_S, Prometheus

ALICE = Principal(name="alice", role=Role.SUBMITTER)


def post(api_url: str, job_id: int, token: str, records: list[dict]) -> None:
    """Report records the way the trainer does: batches to the ingest endpoint with the job's token.

    Batches of 60 records: a diverging stretch goes in whole, for once the watchdog has rolled the
    attempt back, a later batch of the replaced attempt is refused (409)."""
    for start in range(0, len(records), 60):
        request = urllib.request.Request(
            f"{api_url}/v1/jobs/{job_id}/metrics",
            data=json.dumps(records[start : start + 60]).encode(),
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            assert response.status == 202


def scraped_since(prometheus: Prometheus, moment: float, scrapes: int = 2) -> None:
    """Wait until Prometheus has scraped the API `scrapes` times after `moment`."""

    def enough() -> bool:
        newest = prometheus.query("min(timestamp(up))")  # every replica
        return bool(newest) and float(newest[0]["value"][1]) > moment + (scrapes - 1) * SCRAPE_INTERVAL_S

    prometheus.wait_for(enough, what=f"{scrapes} scrapes after {moment:.0f}")


@pytest.fixture
def diverging_job(pg_url, tiny_spec):
    """A submitted job with checkpoints every 20 steps and its reporting token."""
    tiny_spec["checkpoint"]["keep_last"] = 20
    tiny_spec["watchdog"] = {"recover_window_steps": 10, "rollback_margin_steps": 5, "skip_steps_after": 15}
    with get_sessionmaker(pg_url)() as session:
        job = jobs.submit_job(session, raw={**tiny_spec, "evaluation": training.EVALUATION}, principal=ALICE)
        for step in range(20, 101, 20):
            ingest.record_checkpoint(
                session, job_id=job.id, attempt=0, step=step, tokens=step * training.TOKENS_PER_STEP,
                path=f"/ckpt/{step}", manifest_sha256=f"{step:064x}", actor="trainer",
            )  # fmt: skip
        training.score_checkpoints(session, job.id)
        _, token = mint_token(session, name="job-a0", role=Role.VIEWER, created_by="test", job_id=job.id)
        return job.id, token


def event_kinds(pg_url: str, job_id: int) -> list[str]:
    with get_sessionmaker(pg_url)() as session:
        return [e.kind for e in repo.list_events(session, job_id=job_id, limit=1000).items]


def test_every_dashboard_query_returns_data_from_a_real_prometheus(pg_url, diverging_job, api_replicas, prometheus):
    job_id, token = diverging_job
    api_server = api_replicas[0]  # takes the reports (and judges them); both export /metrics
    began = time.time()
    scraped_since(prometheus, began)  # the live job's counters are seen at zero first

    post(api_server.url, job_id, token, training.records(job_id, range(0, 60)))
    scraped_since(prometheus, time.time())
    # zh goes bad at step 70: the API's in-process watchdog judges it and rolls the job back.
    post(api_server.url, job_id, token, training.records(job_id, range(60, 110), bad_from=70))
    assert "job.rolled_back" in event_kinds(pg_url, job_id)
    scraped_since(prometheus, time.time())
    post(api_server.url, job_id, token, training.records(job_id, range(60, 80), attempt=1))
    scraped_since(prometheus, time.time())
    ended = time.time()

    values = {
        "job": str(job_id),
        "channel": ".+",
        "__rate_interval": "4s",  # Grafana's: max(4 × scrape interval, interval + scrape interval)
        "__interval": "1s",
        "__range": f"{int(ended - began) + 1}s",
    }
    results = {}
    for query in queries(load_generator().build_dashboards()):
        expr = fill_in(query.expr, values)
        if query.instant:
            result = prometheus.query(expr, time=str(ended))
        else:
            result = prometheus.query_range(expr, start=began, end=ended)
        assert result, f"{query} returned nothing from Prometheus: {expr}"
        if "variable 'channel'" not in query.where:  # Grafana takes label values as a set
            replicas = {series["metric"].get("instance") for series in result}
            assert replicas == {None}, f"{query} shows each replica apart: {expr}"
        results[str(query)] = result

    def label_values(where: str, label: str) -> set[str]:
        return {series["metric"][label] for series in results[where]}

    assert label_values("pretrain-channel-loss: panel 'Loss by channel' A", "channel") == {"all", *training.CHANNELS}
    assert label_values("pretrain-perplexity: panel 'Eval perplexity by channel' A", "channel") == {"all", *training.CHANNELS}
    assert {"spike", "divergence"} <= label_values("pretrain-channel-loss: annotation 'Verdicts'", "kind")
    assert label_values("pretrain-channel-loss: annotation 'Rollbacks'", "trigger") == {"watchdog"}
    assert label_values("pretrain-fleet: panel 'Rollbacks' A", "trigger") == {"watchdog", "oncall"}
    by_state = {s["metric"]["state"]: s["values"][-1][1] for s in results["pretrain-fleet: panel 'Jobs by state' A"]}
    assert by_state["pending"] == "1" and by_state["running"] == "0"  # once, not once per replica
    # The tokens seen fall back with the rollback: attempt 1 resumed at step 60.
    tokens = [float(v) for _, v in results["pretrain-channel-loss: panel 'Tokens seen' A"][0]["values"]]
    assert max(tokens) == 109 * training.TOKENS_PER_STEP and tokens[-1] == 79 * training.TOKENS_PER_STEP

    # Grafana lists the job by name and substitutes its id, split out of query_result's text.
    regex = re.compile(load_generator().JOB_REGEX.strip("/").replace("(?<", "(?P<"))
    (series,) = results["pretrain-channel-loss: variable 'job'"]
    labels = {k: v for k, v in series["metric"].items() if k != "__name__"}
    for separator in (",", ", "):  # how Grafana joins the labels has varied between versions
        text = "{" + separator.join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "} 109 1700000000000"
        match = regex.search(text)
        assert match and match["value"] == str(job_id) and match["text"] == "tiny-cpu", text

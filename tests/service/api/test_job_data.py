"""GET /v1/jobs/{id}/data: tokens per channel, planned against consumed, from latest_metrics."""

from __future__ import annotations

import pytest

from pretrainctl.output import show_job_data
from service.db.models import Role
from service.db.session import get_sessionmaker
from service.tokens import mint_token
from tests.conftest import EXAMPLES, auth

STEP_TOKENS = 2048  # examples/tiny-cpu.yaml: 16 × 128; pretrain 128 steps (.4 .4 .2), anneal 32 (.5 .3 .2)


def record(job_id: int, step: int, **consumed: float) -> dict:
    metrics = {"loss": 3.0, **{f"data/tokens/{channel}": value for channel, value in consumed.items()}}
    return {"job": str(job_id), "attempt": 0, "step": step, "stage": "pretrain", "phase": "stable",
            "tokens": STEP_TOKENS * (step + 1), "metrics": metrics}


@pytest.fixture
def job(app_client, tokens, tiny_spec, settings):
    """A submitted tiny job and its trainer's token."""
    response = app_client.post("/v1/jobs", json=tiny_spec, headers=auth(tokens["alice"]))
    job_id = response.json()["id"]
    with get_sessionmaker(settings.resolved_database_url)() as session:
        token = mint_token(session, name="trainer", role=Role.VIEWER, created_by="test", job_id=job_id)[1]
    return job_id, token


def test_planned_against_consumed_per_channel(app_client, tokens, job, capsys):
    job_id, trainer = job
    before = app_client.get(f"/v1/jobs/{job_id}/data", headers=auth(tokens["viewer"]))
    assert before.status_code == 200, before.text
    empty = before.json()
    assert (empty["step"], empty["tokens_consumed"], empty["tokens_expected"]) == (None, None, None)
    assert empty["tokens_planned"] == 160 * STEP_TOKENS
    assert [c["channel"] for c in empty["channels"]] == ["code", "en", "zh"]
    assert empty["plan"]["stages"][0]["sources"][0]["size_basis"] == "embedded"

    batch = [record(job_id, 9, code=8000, en=8500, zh=3980), record(job_id, 139, code=117_000, en=104_000, zh=65_000)]
    assert app_client.post(f"/v1/jobs/{job_id}/metrics", json=batch, headers=auth(trainer)).status_code == 202
    data = app_client.get(f"/v1/jobs/{job_id}/data", headers=auth(tokens["viewer"])).json()

    assert (data["attempt"], data["step"]) == (0, 139)
    code, en, zh = data["channels"]
    # 140 steps trained: all 128 of pretrain, then 12 of the anneal.
    assert code["tokens_expected"] == round(128 * STEP_TOKENS * 0.4 + 12 * STEP_TOKENS * 0.5)
    assert en["tokens_expected"] == round(128 * STEP_TOKENS * 0.4 + 12 * STEP_TOKENS * 0.3)
    assert zh["tokens_expected"] == round(140 * STEP_TOKENS * 0.2)
    assert data["tokens_expected"] == 140 * STEP_TOKENS
    assert (code["tokens_consumed"], en["tokens_consumed"], zh["tokens_consumed"]) == (117_000, 104_000, 65_000)
    assert data["tokens_consumed"] == 286_000
    assert zh["share_consumed"] == pytest.approx(65_000 / 286_000)
    assert zh["share_planned"] == pytest.approx(0.2)
    assert code["tokens_planned"] == round(128 * STEP_TOKENS * 0.4 + 32 * STEP_TOKENS * 0.5)
    assert en["paths"] == ["embedded://en"] and en["size_tokens"] == 466_196
    assert en["epochs_consumed"] == pytest.approx(104_000 / (466_196 * 0.969))  # of the train share

    show_job_data(data)  # `pretrainctl data`
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"job {job_id}: 327.7K tokens planned; at step 139 (attempt 0)"
    assert lines[4].split() == ["zh", "65.5K", "57.3K", "65.0K", "20.0%", "22.7%", "0.018"]  # 65K of the 96.9% of zh trained on


def test_no_such_job_is_404_and_a_tokenizer_job_409(app_client, tokens):
    assert app_client.get("/v1/jobs/999999/data", headers=auth(tokens["viewer"])).status_code == 404
    spec = (EXAMPLES / "tokenizer-zh.yaml").read_text()
    submitted = app_client.post("/v1/jobs", content=spec, headers={**auth(tokens["alice"]), "Content-Type": "application/yaml"})
    assert submitted.status_code == 201, submitted.text
    refused = app_client.get(f"/v1/jobs/{submitted.json()['id']}/data", headers=auth(tokens["viewer"]))
    assert refused.status_code == 409 and "tokenizer" in refused.json()["detail"]
    assert app_client.get("/v1/jobs/1/data").status_code == 401


def test_the_route_is_documented_with_every_status(app_client):
    operation = app_client.get("/openapi.json").json()["paths"]["/v1/jobs/{job_id}/data"]["get"]
    assert {"200", "401", "403", "404", "409", "422"} <= set(operation["responses"])


def test_the_plan_and_the_stored_job_carry_the_data_section(app_client, tokens, tiny_spec, job):
    tiny_spec["stages"][1]["data"][2]["path"] = "s3://corpus/zh"
    data = app_client.post("/v1/plan", json={**tiny_spec, "name": "other"}, headers=auth(tokens["viewer"])).json()["data"]
    assert set(data) == {"max_source_epochs", "train_share", "tokens", "stages", "sources"}
    assert set(data["stages"][0]) == {"stage", "tokens", "sources"}
    assert set(data["stages"][0]["sources"][0]) == {
        "channel", "path", "weight", "tokens_planned", "size_tokens", "size_basis", "size_note", "epochs"
    }
    assert set(data["sources"][0]) == {"path", "channels", "tokens_planned", "size_tokens", "epochs", "over_limit"}
    s3 = data["stages"][1]["sources"][2]
    assert (s3["size_tokens"], s3["epochs"], s3["size_basis"]) == (None, None, "unknown")
    stored = app_client.get(f"/v1/jobs/{job[0]}", headers=auth(tokens["viewer"])).json()["plan"]["data"]
    assert [s["path"] for s in stored["sources"]] == ["embedded://code", "embedded://en", "embedded://zh"]
    assert all(s["epochs"] is not None and not s["over_limit"] for s in stored["sources"])

"""The job API over real databases: submit, read, list, cancel, audit log, and what bad input does."""

from __future__ import annotations

import json

import pytest
import yaml
from sqlalchemy import func, select

from service.db.models import Attempt, Event, Job
from tests.conftest import auth


def count_rows(session, model) -> int:
    """Rows of `model`; for events only those about jobs (the token fixture logs its own)."""
    session.expire_all()
    query = select(func.count()).select_from(model)
    if model is Event:
        query = query.where(Event.job_id.is_not(None))
    return session.scalar(query)


def submit(client, spec, token):
    return client.post("/v1/jobs", json=spec, headers=auth(token))


def test_submit_stores_the_job_with_a_pending_attempt_and_an_event(app_client, tokens, tiny_spec, session):
    response = submit(app_client, tiny_spec, tokens["alice"])

    assert response.status_code == 201, response.text
    job = response.json()
    assert job["name"] == tiny_spec["name"]
    assert job["state"] == "pending"
    assert job["desired_state"] == "running"
    assert job["owner"] == "alice"
    assert len(job["spec_hash"]) == 64
    assert [a["number"] for a in job["attempts"]] == [0]
    assert job["attempts"][0]["reason"] == "launch"
    assert job["derived"]["world_size"] >= 1
    assert job["derived"]["model"]["num_layers"] >= 1
    assert count_rows(session, Job) == 1
    assert count_rows(session, Attempt) == 1
    kinds = [e.kind for e in session.scalars(select(Event).where(Event.job_id == job["id"]))]
    assert kinds == ["job.submitted"]


def test_submit_accepts_yaml(app_client, tokens, tiny_spec):
    response = app_client.post(
        "/v1/jobs",
        content=yaml.safe_dump(tiny_spec),
        headers={**auth(tokens["alice"]), "Content-Type": "application/yaml"},
    )
    assert response.status_code == 201, response.text
    assert response.json()["spec"]["name"] == tiny_spec["name"]


def test_same_spec_gives_the_same_hash(app_client, tokens, tiny_spec):
    first = submit(app_client, tiny_spec, tokens["alice"]).json()
    app_client.post(f"/v1/jobs/{first['id']}/cancel", headers=auth(tokens["alice"]))
    second = submit(app_client, tiny_spec, tokens["alice"]).json()
    assert first["spec_hash"] == second["spec_hash"]


def test_rejected_submission_writes_nothing(app_client, tokens, tiny_spec, session):
    tiny_spec["model"]["hidden_size"] = 1000
    tiny_spec["model"]["num_attention_heads"] = 7
    tiny_spec["batch"]["global_batch_size"] = 3

    response = submit(app_client, tiny_spec, tokens["alice"])

    assert response.status_code == 422
    detail = response.json()["detail"]
    assert len(detail) >= 2, detail
    assert all(p["loc"][0] == "body" and p["msg"] for p in detail)
    locs = {tuple(p["loc"][1:3]) for p in detail}
    assert ("batch", "global_batch_size") in locs
    for model in (Job, Attempt, Event):
        assert count_rows(session, model) == 0


def _sequence_parallel_on_cpu(spec: dict) -> None:
    spec["parallelism"].update(tensor=2, sequence_parallel=True)  # valid; no CPU kernels for it


@pytest.mark.parametrize(
    ("change", "loc"),
    [
        (_sequence_parallel_on_cpu, ["body", "parallelism", "sequence_parallel"]),
    ],
)
def test_a_spec_that_validates_but_cannot_be_launched_here_is_refused_naming_the_field(
    app_client, tokens, tiny_spec, session, change, loc
):
    change(tiny_spec)

    response = submit(app_client, tiny_spec, tokens["alice"])

    assert response.status_code == 422, response.text
    (problem,) = response.json()["detail"]
    assert problem["loc"] == loc and "cannot be launched here" in problem["msg"]
    assert count_rows(session, Job) == 0


def test_unknown_field_is_refused_with_its_path(app_client, tokens, tiny_spec):
    tiny_spec["batch"]["micro_batch"] = 4
    detail = submit(app_client, tiny_spec, tokens["alice"]).json()["detail"]
    assert ["body", "batch", "micro_batch"] in [p["loc"] for p in detail]


@pytest.mark.parametrize(
    "body, content_type",
    [
        (b"", "application/json"),
        (b"{not json", "application/json"),
        (b"name: [unclosed", "application/yaml"),
        (b"- just\n- a list\n", "application/yaml"),
        (b"\xff\xfe\x00garbage", "application/json"),
    ],
)
def test_unparseable_body_is_a_422_on_body(app_client, tokens, session, body, content_type):
    response = app_client.post(
        "/v1/jobs", content=body, headers={**auth(tokens["alice"]), "Content-Type": content_type}
    )
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == ["body"]
    assert count_rows(session, Job) == 0


def test_a_second_active_job_with_the_same_name_conflicts(app_client, tokens, tiny_spec, session):
    first = submit(app_client, tiny_spec, tokens["alice"])
    second = submit(app_client, tiny_spec, tokens["bob"])
    assert first.status_code == 201
    assert second.status_code == 409
    assert f"job {first.json()['id']}" in second.json()["detail"]
    assert count_rows(session, Job) == 1


def test_get_returns_the_stored_job(app_client, tokens, tiny_spec):
    created = submit(app_client, tiny_spec, tokens["alice"]).json()
    fetched = app_client.get(f"/v1/jobs/{created['id']}", headers=auth(tokens["viewer"]))
    assert fetched.status_code == 200
    assert fetched.json() == created


def test_get_unknown_job_is_404_naming_it(app_client, tokens):
    response = app_client.get("/v1/jobs/4242", headers=auth(tokens["viewer"]))
    assert response.status_code == 404
    assert response.json()["detail"] == "job 4242 not found"


@pytest.mark.parametrize(
    "method, path",
    [("post", "/v1/jobs/4242/cancel"), ("get", "/v1/jobs/4242/events")],
)
def test_actions_on_unknown_jobs_are_404(app_client, tokens, method, path):
    response = getattr(app_client, method)(path, headers=auth(tokens["oncall"]))
    assert response.status_code == 404
    assert "job 4242 not found" in response.text


def _submit_many(client, spec, token, names):
    ids = []
    for name in names:
        spec = {**spec, "name": name}
        response = submit(client, spec, token)
        assert response.status_code == 201, response.text
        ids.append(response.json()["id"])
    return ids


def test_list_pages_through_every_job_newest_first(app_client, tokens, tiny_spec):
    ids = _submit_many(app_client, tiny_spec, tokens["alice"], [f"job-{i}" for i in range(7)])
    seen, cursor, pages = [], None, 0
    while True:
        params = {"limit": 3, **({"cursor": cursor} if cursor else {})}
        page = app_client.get("/v1/jobs", params=params, headers=auth(tokens["viewer"])).json()
        assert page["count"] == 7
        assert len(page["data"]) <= 3
        seen += [j["id"] for j in page["data"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == sorted(ids, reverse=True)
    assert pages == 3


def test_list_caps_the_page_size_at_the_server_maximum(app_client, tokens, tiny_spec):
    _submit_many(app_client, tiny_spec, tokens["alice"], ["a-1", "a-2"])
    page = app_client.get("/v1/jobs", params={"limit": 10_000}, headers=auth(tokens["viewer"]))
    assert page.status_code == 200
    assert len(page.json()["data"]) == 2


def test_list_filters_by_state_and_owner(app_client, tokens, tiny_spec):
    alice_ids = _submit_many(app_client, tiny_spec, tokens["alice"], ["a-1", "a-2"])
    (bob_id,) = _submit_many(app_client, tiny_spec, tokens["bob"], ["b-1"])
    app_client.post(f"/v1/jobs/{alice_ids[0]}/cancel", headers=auth(tokens["alice"]))

    def ids(**params):
        page = app_client.get("/v1/jobs", params=params, headers=auth(tokens["viewer"])).json()
        return sorted(j["id"] for j in page["data"])

    assert ids(owner="bob") == [bob_id]
    assert ids(state="cancelled") == [alice_ids[0]]
    assert ids(state=["pending", "cancelled"]) == sorted([*alice_ids, bob_id])
    assert ids(owner="alice", state="pending") == [alice_ids[1]]


@pytest.mark.parametrize("params", [{"limit": 0}, {"cursor": -1}, {"state": "exploded"}])
def test_list_refuses_bad_query_parameters(app_client, tokens, params):
    response = app_client.get("/v1/jobs", params=params, headers=auth(tokens["viewer"]))
    assert response.status_code == 422


def test_cancel_of_a_pending_job_cancels_it_and_logs_who_and_why(app_client, tokens, tiny_spec):
    job = submit(app_client, tiny_spec, tokens["alice"]).json()

    response = app_client.post(
        f"/v1/jobs/{job['id']}/cancel", json={"reason": "wrong mixture"}, headers=auth(tokens["alice"])
    )

    assert response.status_code == 200
    cancelled = response.json()
    assert cancelled["state"] == "cancelled"
    assert cancelled["desired_state"] == "cancelled"
    assert cancelled["finished_at"] is not None
    assert cancelled["attempts"][0]["state"] == "cancelled"
    events = app_client.get(f"/v1/jobs/{job['id']}/events", headers=auth(tokens["viewer"])).json()
    assert [e["kind"] for e in events["data"]] == ["job.submitted", "job.cancelled"]
    assert events["data"][1]["actor"] == "alice"
    assert events["data"][1]["reason"] == "wrong mixture"


def test_cancelling_twice_is_a_409(app_client, tokens, tiny_spec):
    job = submit(app_client, tiny_spec, tokens["alice"]).json()
    app_client.post(f"/v1/jobs/{job['id']}/cancel", headers=auth(tokens["alice"]))
    again = app_client.post(f"/v1/jobs/{job['id']}/cancel", headers=auth(tokens["alice"]))
    assert again.status_code == 409
    assert again.json()["detail"] == f"job {job['id']} is already cancelled"


def test_a_cancelled_name_can_be_submitted_again(app_client, tokens, tiny_spec):
    job = submit(app_client, tiny_spec, tokens["alice"]).json()
    app_client.post(f"/v1/jobs/{job['id']}/cancel", headers=auth(tokens["alice"]))
    assert submit(app_client, tiny_spec, tokens["alice"]).status_code == 201


def test_another_submitter_may_not_cancel_but_oncall_may(app_client, tokens, tiny_spec, session):
    job = submit(app_client, tiny_spec, tokens["alice"]).json()
    refused = app_client.post(f"/v1/jobs/{job['id']}/cancel", headers=auth(tokens["bob"]))
    assert refused.status_code == 403
    assert count_rows(session, Event) == 1
    allowed = app_client.post(f"/v1/jobs/{job['id']}/cancel", headers=auth(tokens["oncall"]))
    assert allowed.status_code == 200


def test_cancel_refuses_unknown_fields(app_client, tokens, tiny_spec):
    job = submit(app_client, tiny_spec, tokens["alice"]).json()
    response = app_client.post(
        f"/v1/jobs/{job['id']}/cancel", json={"reasons": "typo"}, headers=auth(tokens["alice"])
    )
    assert response.status_code == 422
    assert app_client.get(f"/v1/jobs/{job['id']}", headers=auth(tokens["alice"])).json()["state"] == "pending"


def test_events_page_with_after(app_client, tokens, tiny_spec):
    ids = _submit_many(app_client, tiny_spec, tokens["alice"], ["e-1"])
    app_client.post(f"/v1/jobs/{ids[0]}/cancel", headers=auth(tokens["alice"]))
    first = app_client.get(f"/v1/jobs/{ids[0]}/events", params={"limit": 1}, headers=auth(tokens["viewer"])).json()
    assert len(first["data"]) == 1 and first["count"] == 2
    rest = app_client.get(
        f"/v1/jobs/{ids[0]}/events", params={"after": first["next_cursor"]}, headers=auth(tokens["viewer"])
    ).json()
    assert [e["kind"] for e in rest["data"]] == ["job.cancelled"]
    assert rest["next_cursor"] is None


def test_body_over_the_limit_is_413_and_writes_nothing(app_client, tokens, tiny_spec, session):
    tiny_spec["padding"] = "x" * (65 * 1024)
    response = app_client.post(
        "/v1/jobs", content=json.dumps(tiny_spec), headers={**auth(tokens["alice"]), "Content-Type": "application/json"}
    )
    assert response.status_code == 413
    assert "larger than 65536 bytes" in response.json()["detail"]
    assert count_rows(session, Job) == 0


def test_streamed_body_without_length_over_the_limit_is_413(app_client, tokens, session):
    def chunks():
        for _ in range(20):
            yield b"x" * 8192

    response = app_client.post(
        "/v1/jobs", content=chunks(), headers={**auth(tokens["alice"]), "Content-Type": "application/json"}
    )
    assert response.status_code == 413
    assert count_rows(session, Job) == 0


def test_nul_characters_are_refused_at_the_edge_not_by_the_database(app_client, tokens, tiny_spec, session):
    spec = json.loads(json.dumps(tiny_spec))
    spec["stages"][0]["data"][0]["path"] = "corpus\x00.bin"
    refused = submit(app_client, spec, tokens["alice"])
    assert refused.status_code == 422
    assert refused.json()["detail"][0]["loc"] == ["body", "stages", 0, "data", 0, "path"]
    assert count_rows(session, Job) == 0

    job = submit(app_client, tiny_spec, tokens["alice"]).json()
    cancel = app_client.post(f"/v1/jobs/{job['id']}/cancel", json={"reason": "a\x00b"}, headers=auth(tokens["alice"]))
    assert cancel.status_code == 422
    listing = app_client.get("/v1/jobs", params={"owner": "a\x00b"}, headers=auth(tokens["viewer"]))
    assert listing.status_code == 422

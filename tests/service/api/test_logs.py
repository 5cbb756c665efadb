"""GET /v1/jobs/{id}/logs: the trainer log of an attempt, read through the backend that ran it."""

from __future__ import annotations

import json

from fastapi.testclient import TestClient

from service.api.app import create_app
from service.controller.backends.local import TRAINER_LOG
from service.controller.manifests import workload_name
from tests.conftest import auth


def _trainer_wrote(settings, job: dict, attempt: int, text: str, *, stopped: bool = False) -> None:
    """Leave what the local backend leaves for an attempt: its folder, meta and log."""
    name = workload_name(job["name"], job["id"], attempt)
    root = settings.state_dir.resolve() / "workloads"
    folder = root / ".deleted" / f"{name}-1700000000000" if stopped else root / name
    folder.mkdir(parents=True)
    (folder / "meta.json").write_text(json.dumps({"job_id": job["id"], "attempt": attempt, "name": name}))
    (folder / TRAINER_LOG).write_text(text)


def test_logs_of_the_current_attempt_come_from_the_local_backend(app_client, settings, tokens, tiny_spec):
    job = app_client.post("/v1/jobs", json=tiny_spec, headers=auth(tokens["alice"])).json()
    _trainer_wrote(settings, job, 0, "".join(f"step {i}\n" for i in range(10)))

    response = app_client.get(f"/v1/jobs/{job['id']}/logs", params={"tail": 3}, headers=auth(tokens["viewer"]))

    assert response.status_code == 200, response.text
    assert response.json() == {"job_id": job["id"], "attempt": 0, "text": "step 7\nstep 8\nstep 9\n"}


def test_logs_of_a_stopped_attempt_are_still_served(app_client, settings, tokens, tiny_spec):
    job = app_client.post("/v1/jobs", json=tiny_spec, headers=auth(tokens["alice"])).json()
    _trainer_wrote(settings, job, 0, "saved at step 4\n", stopped=True)

    response = app_client.get(f"/v1/jobs/{job['id']}/logs", params={"attempt": 0}, headers=auth(tokens["viewer"]))

    assert response.status_code == 200 and response.json()["text"] == "saved at step 4\n"


def test_logs_of_an_attempt_that_has_not_started_or_does_not_exist_are_404(app_client, tokens, tiny_spec):
    job = app_client.post("/v1/jobs", json=tiny_spec, headers=auth(tokens["alice"])).json()

    not_started = app_client.get(f"/v1/jobs/{job['id']}/logs", headers=auth(tokens["viewer"]))
    no_attempt = app_client.get(f"/v1/jobs/{job['id']}/logs", params={"attempt": 5}, headers=auth(tokens["viewer"]))

    assert not_started.status_code == 404 and "has not started" in not_started.json()["detail"]
    assert no_attempt.status_code == 404 and no_attempt.json()["detail"] == f"job {job['id']} has no attempt 5"


def test_logs_need_a_token(app_client, tokens, tiny_spec):
    job = app_client.post("/v1/jobs", json=tiny_spec, headers=auth(tokens["alice"])).json()
    assert app_client.get(f"/v1/jobs/{job['id']}/logs").status_code == 401


def test_the_kubernetes_backend_answers_501_and_says_where_the_logs_are(settings, tokens, tiny_spec):
    on_kubernetes = settings.model_copy(update={"backend": "kubernetes", "namespace": "training"})
    with TestClient(create_app(on_kubernetes)) as client:
        job = client.post("/v1/jobs", json=tiny_spec, headers=auth(tokens["alice"])).json()
        response = client.get(f"/v1/jobs/{job['id']}/logs", headers=auth(tokens["viewer"]))

    assert response.status_code == 501
    detail = response.json()["detail"]
    assert detail.startswith("the kubernetes backend does not serve trainer logs through the API")
    assert f"kubectl logs -n training -l pretrain.io/job-id={job['id']},pretrain.io/attempt=0" in detail

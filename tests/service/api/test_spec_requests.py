"""POST /v1/jobs and /v1/plan under hostile or careless input: each request within its limits.

Each finding of issue 16 that these routes answer for is reproduced, then refused with a 4xx
that says why: content types, sizes per type, values and depth, integers Python cannot print,
the per-principal rate, the request budget; and a big body no longer stalls the event loop.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import select
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
import yaml
from fastapi.testclient import TestClient
from starlette.requests import Request

from service.api.app import create_app
from service.api.spec_body import _within_budget
from service.db.models import Job
from service.settings import Settings
from service.spec import Budget, SpecInvalid
from tests.conftest import ADMIN_TOKEN, auth
from tests.dashboards.conftest import serve_api
from tests.service.api.test_jobs import count_rows

SPEC_ROUTES = ["/v1/jobs", "/v1/plan"]


def post(client: TestClient, route: str, body: bytes | str, content_type: str | None, token: str) -> httpx.Response:
    headers = {**auth(token), **({"Content-Type": content_type} if content_type else {})}
    return client.post(route, content=body, headers=headers)


def only_problem(response: httpx.Response) -> dict:
    assert response.status_code == 422, response.text
    [problem] = response.json()["detail"]
    assert problem["loc"] == ["body"]
    return problem


@pytest.fixture
def client_with(settings: Settings):
    """A client on the test settings with some changed."""
    clients = []

    def make(**changes) -> TestClient:
        client = TestClient(create_app(settings.model_copy(update=changes)))
        clients.append(client.__enter__())
        return clients[-1]

    yield make
    for client in clients:
        client.__exit__(None, None, None)


@pytest.mark.parametrize("route", SPEC_ROUTES)
@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/xml", "multipart/form-data; boundary=x", None, "application/json; charset=latin-1"]
)
def test_a_spec_in_any_other_content_type_is_415(app_client, tokens, tiny_spec, session, route, content_type):
    # Before: the JSON body was read as JSON whatever the request said it was.
    response = post(app_client, route, json.dumps(tiny_spec), content_type, tokens["admin"])
    assert response.status_code == 415, response.text
    if "charset" in (content_type or ""):
        assert "UTF-8" in response.json()["detail"]
    else:
        assert "application/json, application/yaml" in response.json()["detail"]
    assert count_rows(session, Job) == 0


@pytest.mark.parametrize("content_type", ["application/json; charset=utf-8", "application/x-yaml", "text/yaml"])
def test_every_spec_content_type_is_read(app_client, tokens, tiny_spec, content_type):
    body = json.dumps(tiny_spec) if "json" in content_type else yaml.safe_dump(tiny_spec)
    response = post(app_client, "/v1/jobs", body, content_type, tokens["alice"])
    assert response.status_code == 201, response.text


def test_a_yaml_body_sent_as_json_is_refused_as_json(app_client, tokens, tiny_spec):
    response = post(app_client, "/v1/plan", yaml.safe_dump(tiny_spec), "application/json", tokens["viewer"])
    assert "invalid JSON at line 1" in only_problem(response)["msg"]


@pytest.mark.parametrize("route", SPEC_ROUTES)
@pytest.mark.parametrize("content_type", ["application/json", "application/yaml"])
def test_an_integer_python_cannot_print_is_a_422_not_a_500(app_client, tokens, tiny_spec, route, content_type):
    # Before: 4,301 digits raised Python's int-to-string limit inside the handler: 500.
    tiny_spec["model"]["num_layers"] = 424242
    text = json.dumps(tiny_spec) if content_type == "application/json" else yaml.safe_dump(tiny_spec)
    body = text.replace("424242", "9" * 4301)
    problem = only_problem(post(app_client, route, body, content_type, tokens["admin"]))
    assert "has 4301 digits; a job spec accepts at most 100" in problem["msg"]
    assert "line " in problem["msg"] and "column " in problem["msg"]


@pytest.mark.parametrize(
    "body, content_type",
    [("[" * 40 + "]" * 40, "application/json"), ("a: " + "[" * 40 + "]" * 40, "application/yaml")],
)
def test_deep_nesting_is_refused_while_parsing(app_client, tokens, body, content_type):
    problem = only_problem(post(app_client, "/v1/plan", body, content_type, tokens["viewer"]))
    assert problem["msg"] == "the job spec is nested more than 32 levels deep"


@pytest.mark.parametrize("content_type", ["application/json", "application/yaml"])
def test_too_many_values_are_refused_without_blaming_aliases(client_with, tokens, content_type):
    # Before: a large alias-free document was told to write itself out "without nested aliases".
    client = client_with(spec_budget_s=600)  # however busy the machine, the count must decide
    body = '{"padding": [' + ",".join(["0"] * 25_000) + "]}"
    problem = only_problem(post(client, "/v1/plan", body, content_type, tokens["viewer"]))
    assert problem["msg"] == "the job spec holds more than 20000 values"


def test_aliases_count_as_what_they_repeat(app_client, tokens):
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}]" for i in range(1, 12)]
    problem = only_problem(post(app_client, "/v1/plan", "\n".join(lines), "application/yaml", tokens["viewer"]))
    assert "once its YAML aliases are expanded" in problem["msg"]


def test_yaml_has_its_own_size_cap(client_with, tokens, tiny_spec):
    client = client_with(max_yaml_spec_bytes=4096)
    tiny_spec["description"] = "x" * 5000
    as_yaml = post(client, "/v1/plan", yaml.safe_dump(tiny_spec), "application/yaml", tokens["viewer"])
    assert as_yaml.status_code == 413
    assert as_yaml.json()["detail"] == "a YAML job spec is larger than 4096 bytes (PRETRAIN_MAX_YAML_SPEC_BYTES)"
    # The same spec as JSON is under the JSON cap, so it is read (and judged on its fields).
    assert post(client, "/v1/plan", json.dumps(tiny_spec), "application/json", tokens["viewer"]).status_code != 413


def test_a_principal_past_its_rate_gets_429_with_retry_after(client_with, tokens, tiny_spec, session):
    client = client_with(spec_rate_burst=2, spec_rate_per_s=0.01)
    answers = [post(client, "/v1/plan", json.dumps(tiny_spec), "application/json", tokens["viewer"]) for _ in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 429]
    assert int(answers[2].headers["Retry-After"]) >= 1
    assert "viewer sent more than 2 specs at once" in answers[2].json()["detail"]
    # The limit is the principal's own: another one is served.
    assert post(client, "/v1/jobs", json.dumps(tiny_spec), "application/json", tokens["alice"]).status_code == 201


@pytest.mark.parametrize("route", SPEC_ROUTES)
def test_a_spec_past_the_request_budget_is_a_422_that_says_so(client_with, tokens, tiny_spec, session, route):
    client = client_with(spec_budget_s=1e-6)
    problem = only_problem(post(client, route, yaml.safe_dump(tiny_spec), "application/yaml", tokens["admin"]))
    assert "took longer than this request's budget of 1e-06 s (PRETRAIN_SPEC_BUDGET_S)" in problem["msg"]
    assert count_rows(session, Job) == 0


def big_yaml(size: int) -> bytes:
    """An alias-free YAML document of about `size` bytes of short values: the slowest to compose."""
    return ("padding:\n" + "- y\n" * (size // 4)).encode()


def test_healthz_answers_while_a_big_yaml_spec_is_parsed(pg_url: str, tmp_path: Path):
    # Before: a 1 MiB YAML spec to /v1/plan (any viewer may) was parsed on the event loop, and
    # /healthz waited seconds for it. Here it must answer while that request is still running.
    body = big_yaml((1 << 20) - 4096)
    settings = {
        "PRETRAIN_MAX_YAML_SPEC_BYTES": str(1 << 20),
        "PRETRAIN_MAX_SPEC_VALUES": str(1 << 20),
        "PRETRAIN_SPEC_BUDGET_S": "600",
    }
    with serve_api(pg_url, tmp_path / "api", settings) as server:
        address = urlsplit(server.url)
        big = http.client.HTTPConnection(address.hostname, address.port, timeout=600)
        headers = {**auth(ADMIN_TOKEN), "Content-Type": "application/yaml"}
        big.request("POST", "/v1/plan", body=body, headers=headers)  # returns once it is sent
        health = httpx.get(f"{server.url}/healthz", timeout=600)
        big_answered = select.select([big.sock], [], [], 0)[0]
        response = big.getresponse()
        answer = response.read()
    assert health.status_code == 200
    assert not big_answered, "/healthz waited for the big spec to be parsed"
    assert response.status == 422, answer
    assert b"padding" in answer


def test_every_status_a_spec_route_answers_is_documented(app_client):
    # Before: schemathesis met 401, 403, 404 and 400 that the document did not list.
    paths = app_client.get("/openapi.json").json()["paths"]
    for path in SPEC_ROUTES:
        responses = paths[path]["post"]["responses"]
        assert {"400", "401", "403", "413", "415", "422", "429"} <= set(responses)
        assert responses["415"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}
    for path, operations in paths.items():
        for method, operation in operations.items():
            responses = operation["responses"]
            assert not operation.get("security") or {"401", "403"} <= set(responses), (method, path)
            assert "{" not in path or "404" in responses, (method, path)
            assert all(r.get("content") for code, r in responses.items() if code >= "400"), (method, path)


def test_a_method_a_path_does_not_serve_names_all_it_does(app_client, tokens):
    response = app_client.request("PUT", "/v1/jobs", headers=auth(tokens["viewer"]))
    assert response.status_code == 405
    assert response.headers["Allow"] == "GET, POST"


def test_a_client_that_goes_away_ends_the_wait_and_drops_the_queued_work():
    """The body was read; the next message is the disconnect: the request stops waiting at once."""
    async def gone() -> dict:
        return {"type": "http.disconnect"}

    async def scenario() -> asyncio.Future:
        never_done = asyncio.get_running_loop().create_future()
        with pytest.raises(SpecInvalid):
            # Without the watch it would wait out its 600 s: the guard turns that into a failure.
            await asyncio.wait_for(_within_budget(Request({"type": "http", "headers": []}, gone), never_done, Budget(600)), 120)
        return never_done

    assert asyncio.run(scenario()).cancelled()  # a spec still queued for a worker never starts

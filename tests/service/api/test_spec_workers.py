"""Specs are parsed and validated in worker processes, so that the server's GIL is never theirs.

What crosses to a worker and back must survive pickling whole: each refusal a worker makes is
answered exactly as the same refusal made in the server's own process was, before the move.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures.process import BrokenProcessPool
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient

from service import jobs
from service.admission import plan_spec
from service.api.app import _body_loc, create_app
from service.api.spec_body import WORKER_NICENESS, parse_then, spec_pool
from service.errors import Conflict, Forbidden, NotFound, ServiceError
from service.settings import Settings
from service.spec import Budget, ParseLimits, SpecFormat, SpecInvalid
from service.spec.problems import Problem
from tests.conftest import auth


def test_specs_run_in_shared_worker_processes_below_the_servers_priority(settings: Settings):
    pool = spec_pool(settings.spec_workers)
    assert spec_pool(settings.spec_workers) is pool  # every app of this process uses the one pool
    assert pool.submit(os.getpid).result(timeout=120) != os.getpid()
    assert pool.submit(os.nice, 0).result(timeout=120) == min(19, os.nice(0) + WORKER_NICENESS)


@pytest.mark.parametrize(
    "error",
    [
        SpecInvalid([Problem(loc=["parallelism", "tensor"], msg="must divide 4", type="value_error")]),
        ServiceError("bad request"),
        NotFound("no job 7"),
        Conflict("a job named x is still active"),
        Forbidden("not yours"),
    ],
    ids=lambda error: type(error).__name__,
)
def test_every_service_error_comes_back_from_a_worker_whole(error: ServiceError):
    back = pickle.loads(pickle.dumps(error))
    assert (type(back), str(back), back.status_code, vars(back)) == (type(error), str(error), error.status_code, vars(error))


def bad_tensor(spec: dict) -> None:
    spec["parallelism"]["tensor"] = 3


def etc_passwd(spec: dict) -> None:
    spec["stages"][0]["data"][0]["path"] = "/etc/passwd"


def bool_for_a_count(spec: dict) -> None:
    spec["resources"]["nodes"] = True


def unknown_field(spec: dict) -> None:
    spec["padding"] = ["y"] * 10


def as_it_is(spec: dict) -> None:
    """The spec is valid: the query asks what it cannot have."""


# (route, query, how the spec is spoiled, format): every kind of refusal a worker makes.
REFUSALS = [
    ("/v1/jobs", {}, bad_tensor, "json"),
    ("/v1/plan", {}, bad_tensor, "yaml"),
    ("/v1/jobs", {}, etc_passwd, "yaml"),
    ("/v1/plan", {}, etc_passwd, "json"),
    ("/v1/jobs", {}, bool_for_a_count, "json"),
    ("/v1/plan", {}, unknown_field, "yaml"),
    ("/v1/plan", {"deadline_days": 1e-9, "token_budget": 2**53}, as_it_is, "json"),
    ("/v1/jobs", {}, "a: [", "yaml"),
    ("/v1/plan", {}, '{"a": ' + "7" * 101 + "}", "json"),
]


def then_for(route: str, query: dict[str, Any], settings: Settings) -> Callable[[dict], object]:
    """What the route has the worker do after parsing, as the route builds it."""
    if route == "/v1/jobs":
        return partial(jobs.admit_submission, settings=settings)
    inverse = {"gpus": None, "days": None, "token_budget": None, "deadline_days": None} | query
    return partial(plan_spec, settings=settings, **inverse)


def in_process_detail(body: bytes, spec_format: SpecFormat, then: Callable[[dict], object], settings: Settings) -> list[dict]:
    """The refusal made in this process, as the API's SpecInvalid handler renders it."""
    limits = ParseLimits(max_nodes=settings.max_spec_values, max_depth=settings.max_spec_depth, budget=Budget(600))
    with pytest.raises(SpecInvalid) as caught:
        parse_then(body, spec_format, limits, then)
    return [{**p.model_dump(mode="json"), "loc": _body_loc(p.loc)} for p in caught.value.problems]


@pytest.mark.parametrize(("route", "query", "spoil", "spec_format"), REFUSALS)
def test_a_refusal_from_a_worker_is_the_one_made_in_process(app_client, settings, tokens, tiny_spec, route, query, spoil, spec_format):
    if isinstance(spoil, str):
        body = spoil.encode()
    else:
        spoil(tiny_spec)
        body = (json.dumps(tiny_spec) if spec_format == "json" else yaml.safe_dump(tiny_spec)).encode()
    content_type = "application/json" if spec_format == "json" else "application/yaml"
    response = app_client.post(route, params=query, content=body, headers={**auth(tokens["admin"]), "Content-Type": content_type})
    assert response.status_code == 422, response.text
    assert response.json()["detail"] == in_process_detail(body, spec_format, then_for(route, query, settings), settings)


def test_a_worker_that_dies_is_replaced_by_a_fresh_pool(settings: Settings, tokens, tiny_spec):
    # A pool whose worker died (killed for memory, say) refuses every later task: without the
    # replacement each spec after it would be a 500, until the server restarted.
    lone = settings.model_copy(update={"spec_workers": 1})
    os.kill(spec_pool(1).submit(os.getpid).result(timeout=120), signal.SIGKILL)
    deadline = time.monotonic() + 120
    while True:  # until the pool has seen the death: the next task, or its result, fails
        try:
            spec_pool(1).submit(os.getpid).result(timeout=120)
        except BrokenProcessPool:
            break
        assert time.monotonic() < deadline, "the pool never noticed its dead worker"
        time.sleep(0.1)
    with TestClient(create_app(lone)) as client:
        response = client.post("/v1/plan", json=tiny_spec, headers=auth(tokens["viewer"]))
    assert response.status_code == 200, response.text


def test_the_workers_end_when_a_signal_ends_the_server():
    # uvicorn re-raises SIGTERM after its shutdown, so the server never joins its pool: before,
    # its workers (children of the forkserver) waited for work forever, one set per restart.
    server = subprocess.run(
        [sys.executable, "-c", KILLED_SERVER], capture_output=True, text=True, timeout=300, check=False
    )
    assert server.returncode == -signal.SIGKILL, server.stderr
    workers = [int(pid) for pid in server.stdout.split()]
    assert len(workers) == 2
    deadline = time.monotonic() + 120
    while alive := [pid for pid in workers if Path(f"/proc/{pid}").exists() and not zombie(pid)]:
        assert time.monotonic() < deadline, f"workers {alive} outlived their server"
        time.sleep(0.2)


# A server with a warm pool of two, killed by a signal: it prints its workers' pids first.
KILLED_SERVER = """
import os, signal
from service.api.spec_body import spec_pool, warm_spec_pool
warm_spec_pool(2)
print(*spec_pool(2)._processes, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return False

"""Planning through the API: POST /v1/plan answers, and POST /v1/jobs refuses what cannot fit."""

from __future__ import annotations

import copy

import pytest
import yaml
from sqlalchemy import func, select

from service.db.models import Job
from tests.conftest import EXAMPLES, auth

REQUIRED_KEYS = [
    ("params", "total"),
    ("params", "non_embedding"),
    ("params", "active"),
    ("vocab", "padded"),
    ("vocab", "spare"),
    ("memory", "per_gpu_gib"),
    ("memory", "breakdown"),
    ("memory", "fits"),
    ("compute", "flops_6nd"),
    ("compute", "flops"),
    ("compute", "gpu_hours"),
    ("compute", "days"),
    ("advice", "critical_batch_tokens"),
    ("advice", "compute_optimal_tokens"),
]


def qwen2_7b_on_one_node(*, distributed_optimizer: bool, tensor: int) -> dict:
    """Qwen2-7B pretraining at 4k on one node of 8 × 80 GiB H100s."""
    spec = yaml.safe_load((EXAMPLES / "qwen2-7b-pretrain.yaml").read_text())
    spec = copy.deepcopy(spec)
    spec["name"] = f"qwen2-7b-do{int(distributed_optimizer)}-tp{tensor}"
    spec["resources"].update(nodes=1, gpus_per_node=8, gpu_type="H100", gpu_memory_gib=80)
    spec["parallelism"] = {
        "tensor": tensor,
        "pipeline": 1,
        "sequence_parallel": False,
        "distributed_optimizer": distributed_optimizer,
    }
    spec["batch"] = {"micro_batch_size": 1, "global_batch_size": 64}
    spec["stages"] = spec["stages"][:1]
    spec["stages"][0]["tokens"] = 64 * 4096 * 10_000
    spec["schedule"] = {"kind": "cosine", "warmup_tokens": 64 * 4096 * 500}
    return spec


def jobs_stored(session) -> int:
    session.expire_all()
    return session.scalar(select(func.count()).select_from(Job))


def test_plan_answers_every_documented_figure_and_stores_nothing(app_client, tokens, session):
    spec = yaml.safe_load((EXAMPLES / "qwen2-7b-pretrain.yaml").read_text())
    response = app_client.post("/v1/plan", json=spec, headers=auth(tokens["viewer"]))

    assert response.status_code == 200, response.text
    plan = response.json()
    for section, key in REQUIRED_KEYS:
        assert key in plan[section], (section, key)
    assert plan["params"]["total"] == 7_615_616_512
    assert [s["train_iters"] for s in plan["stages"]] == [1_668_800, 1_500, 596]
    assert plan["problems"] == []
    assert jobs_stored(session) == 0


def test_plan_answers_the_inverse_questions_when_asked(app_client, tokens):
    spec = yaml.safe_load((EXAMPLES / "qwen2-7b-pretrain.yaml").read_text())
    params = {"gpus": 1024, "days": 30, "deadline_days": 60}
    plan = app_client.post("/v1/plan", params=params, json=spec, headers=auth(tokens["viewer"])).json()
    budget = plan["inverse"]["tokens_for_budget"]
    assert budget["gpus"] == 1024 and budget["days"] == 30
    # 1024 GPUs × 30 days × 86,400 s × 989 TFLOP/s × 0.4 MFU, spent at the job's FLOPs per token.
    flops = 1024 * 30 * 86_400 * 989e12 * 0.4
    assert budget["tokens"] == pytest.approx(flops / plan["inverse"]["flops_per_token"], rel=1e-9)
    deadline = plan["inverse"]["gpus_for_deadline"]
    assert deadline["gpus"] % 8 == 0 and deadline["gpus"] >= deadline["gpus_exact"]


def test_plan_refuses_an_invalid_spec_like_submit(app_client, tokens, tiny_spec):
    tiny_spec["parallelism"]["tensor"] = 3
    response = app_client.post("/v1/plan", json=tiny_spec, headers=auth(tokens["viewer"]))
    assert response.status_code == 422
    assert ["body", "parallelism", "tensor"] in [p["loc"] for p in response.json()["detail"]]


def test_plan_needs_a_token(app_client, tiny_spec):
    assert app_client.post("/v1/plan", json=tiny_spec).status_code == 401


def test_submit_refuses_a_7b_job_that_cannot_fit_and_says_what_would(app_client, tokens, session):
    spec = qwen2_7b_on_one_node(distributed_optimizer=False, tensor=1)

    response = app_client.post("/v1/jobs", json=spec, headers=auth(tokens["alice"]))

    assert response.status_code == 422, response.text
    (problem,) = response.json()["detail"]
    assert problem["loc"] == ["body", "resources", "gpu_memory_gib"]
    message = problem["msg"]
    assert "80" in message and "GiB" in message
    assert "optimizer" in message  # the biggest component: weights and optimizer state
    assert "distributed_optimizer" in message  # a knob that would fix it
    assert jobs_stored(session) == 0


def test_submit_accepts_the_same_7b_job_with_distributed_optimizer_and_tp2(app_client, tokens):
    spec = qwen2_7b_on_one_node(distributed_optimizer=True, tensor=2)

    response = app_client.post("/v1/jobs", json=spec, headers=auth(tokens["alice"]))

    assert response.status_code == 201, response.text
    job = response.json()
    assert job["plan"]["memory"]["fits"] is True
    assert job["plan"]["memory"]["per_gpu_gib"] < 0.95 * 80
    fetched = app_client.get(f"/v1/jobs/{job['id']}", headers=auth(tokens["viewer"])).json()
    assert fetched["plan"] == job["plan"]


def test_allow_over_memory_accepts_with_a_warning(app_client, tokens):
    spec = qwen2_7b_on_one_node(distributed_optimizer=False, tensor=1)
    spec["allow_over_memory"] = True

    response = app_client.post("/v1/jobs", json=spec, headers=auth(tokens["alice"]))

    assert response.status_code == 201, response.text
    job = response.json()
    assert job["plan"]["memory"]["fits"] is False
    assert any(w["loc"] == ["plan"] for w in job["warnings"])


@pytest.mark.parametrize("example", ["tiny-cpu.yaml", "qwen2-7b-pretrain.yaml"])
def test_the_examples_are_accepted_at_submission(app_client, tokens, example):
    spec = yaml.safe_load((EXAMPLES / example).read_text())
    response = app_client.post("/v1/jobs", json=spec, headers=auth(tokens["alice"]))
    assert response.status_code == 201, response.text

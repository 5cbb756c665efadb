"""Data job specs (`kind: data`): admitted, refused naming the field, rendered for both backends."""

from __future__ import annotations

import json
from typing import Any

import kubernetes_validate
import pytest
import yaml

from service.admission import OverMemory, admit
from service.controller.backends.kubernetes.kinds import WORKLOAD_KINDS, kind_of
from service.controller.data_config import render_data_config
from service.controller.manifests import (
    DATA_CONFIG_PATH,
    TOKEN_ENV,
    DataWorkload,
    render_data_manifests,
    render_for_review,
)
from service.controller.workload import build_workload, unsaved_attempt, unsaved_job
from service.settings import Settings
from service.spec import DataJobSpec, SpecInvalid, ValidatedDataSpec, parse_spec_text, validate_spec
from tests.conftest import EXAMPLES
from tests.service.controller.test_manifests import FULL_SETTINGS, KUBERNETES_VERSION, OWNER_UID
from tests.service.controller.test_trainer_config import TOKEN, make_settings


def data_spec(**changes: Any) -> dict[str, Any]:
    return {
        "name": "web-data",
        "kind": "data",
        "inputs": ["web/en.jsonl", "embedded:zh"],
        "tokenizer": "tokenizer-zh-7/tokenizer",
        "resources": {"cpu": 16, "memory_gib": 24},
    } | changes


def problems_at(raw: dict[str, Any], settings: Settings | None = None) -> dict[str, str]:
    with pytest.raises(SpecInvalid) as caught:
        admit(raw, over_memory=OverMemory.REFUSE, settings=settings or Settings())
    return {".".join(map(str, p.loc)): p.msg for p in caught.value.problems}


def test_a_data_spec_is_admitted_with_its_defaults_and_no_plan(tmp_path):
    admission = admit(data_spec(), over_memory=OverMemory.REFUSE, settings=Settings(state_dir=tmp_path))
    assert isinstance(admission.validated, ValidatedDataSpec) and admission.plan is None
    spec = admission.validated.spec
    assert (spec.output, spec.text_field, spec.workers) == ("data", "text", None)
    assert admission.derived_document == {} and admission.warnings == []


def test_the_data_example_is_valid():
    validated = validate_spec(parse_spec_text((EXAMPLES / "data-prep.yaml").read_text()))
    assert isinstance(validated, ValidatedDataSpec)


@pytest.mark.parametrize(
    ("changes", "loc", "says"),
    [
        ({"workers": 0}, "workers", "greater than 0"),
        ({"inputs": []}, "inputs", "at least 1"),
        ({"inputs": ["embedded:fr"]}, "inputs.0", "unknown embedded corpus"),
        ({"inputs": ["/etc/passwd"]}, "inputs.0", "outside the allowed roots"),
        ({"inputs": ["../secrets.jsonl"]}, "inputs.0", "'..' segment"),
        ({"tokenizer": "/etc/tok.json"}, "tokenizer", "outside the allowed roots"),
        ({"output": "../elsewhere"}, "output", "use lowercase letters"),
        ({"output": "a/b"}, "output", "use lowercase letters"),
        ({"text_field": ""}, "text_field", "at least 1"),
        ({"shards": 4}, "shards", "unknown field 'shards'"),
        ({"resources": {"cpu": 0}}, "resources.cpu", "greater than 0"),
    ],
)
def test_a_bad_data_spec_is_refused_naming_the_field(changes, loc, says):
    problems = problems_at(data_spec(**changes))
    assert loc in problems, problems
    assert says in problems[loc]


def test_planning_a_data_spec_says_there_is_no_plan():
    with pytest.raises(SpecInvalid) as caught:
        admit(data_spec(), over_memory=OverMemory.REPORT, settings=Settings(), require_plan=True)
    (problem,) = caught.value.problems
    assert problem.loc == ["kind"] and "a data job has no memory or compute plan" in problem.msg


def test_more_workers_than_cores_is_a_warning():
    validated = validate_spec(data_spec(workers=32))
    assert [w.loc for w in validated.warnings] == [["workers"]]


def stored(settings: Settings, **changes: Any):
    spec = DataJobSpec.model_validate(data_spec(**changes)).model_dump(mode="json")
    return unsaved_job(name="web-data", kind="data", spec=spec, derived={}, plan=None, job_id=42)


def test_the_config_puts_the_pair_in_the_jobs_own_directory_and_resolves_every_path():
    settings = make_settings(**FULL_SETTINGS)
    config = render_data_config(stored(settings), 1, settings)
    assert config == {
        "inputs": ["/data/web/en.jsonl", "embedded:zh"],
        "output": "/checkpoints/web-data-42/data/data",
        "tokenizer": "/checkpoints/tokenizer-zh-7/tokenizer",
        "text_field": "text",
        "workers": 16,
        "job": {"id": "42", "attempt": 1},
        "metrics": {"url": settings.ingest_url},
    }
    assert render_data_config(stored(settings, tokenizer="byte", workers=3), 0, settings)[
        "tokenizer"
    ] == "byte"


def manifests(owner_uid: str | None = None) -> dict[str, dict[str, Any]]:
    settings = make_settings(**FULL_SETTINGS)
    workload = build_workload(stored(settings), unsaved_attempt(), settings, ingest_token=TOKEN)
    assert isinstance(workload, DataWorkload)
    assert kind_of(workload) is WORKLOAD_KINDS["data"]
    return render_data_manifests(workload, settings, owner_uid=owner_uid)


def test_a_data_job_runs_as_a_batch_job_like_a_tokenizer_job():
    for owner_uid in (None, OWNER_UID):
        for manifest in manifests(owner_uid).values():
            kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)
    rendered = manifests()
    job = rendered["job"]
    assert (job["apiVersion"], job["kind"], job["metadata"]["name"]) == ("batch/v1", "Job", "web-data-42-a0")
    assert job["spec"]["backoffLimit"] == 0
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["name"] == "data"
    amounts = {"cpu": "16", "memory": f"{24 * 1024}Mi"}
    assert container["resources"] == {"requests": amounts, "limits": amounts}
    script, *arguments = container["command"][2:]
    assert "-m trainer.prepare --config" in script and "-m trainer.job_result" in script
    assert arguments == [
        "data-job", "python", DATA_CONFIG_PATH, "/checkpoints/web-data-42/data",
        "http://pretrain-api:8000", "42", "0",
    ]  # fmt: skip
    env = {e["name"]: e for e in container["env"]}
    assert env[TOKEN_ENV]["valueFrom"]["secretKeyRef"]["name"] == "web-data-42-a0-token"
    assert TOKEN not in json.dumps(job) + json.dumps(rendered["configmap"])
    config = json.loads(rendered["configmap"]["data"]["data.json"])
    assert config["output"] == "/checkpoints/web-data-42/data/data"
    for manifest in rendered.values():
        assert manifest["metadata"]["labels"]["pretrain.io/kind"] == "data"


def test_pretrainctl_render_of_a_data_spec_shows_its_batch_job():
    text = render_for_review(yaml.safe_dump(data_spec()), settings=Settings(**FULL_SETTINGS))
    documents = list(yaml.safe_load_all(text))
    assert [d["kind"] for d in documents] == ["Job", "ConfigMap", "Secret"]
    assert "data.json" in documents[1]["data"]



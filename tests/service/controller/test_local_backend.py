"""The embedded default end to end: `pretrainctl serve` runs the controller and the local backend.

A tiny CPU job goes in through the API and trains as real trainer processes; its trainer, killed
mid-run, is resumed from its last checkpoint by a new attempt, automatically, and the job trains to
completion. Tokenizer jobs run as batch processes beside it, on the same server.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import EXAMPLES
from tests.pretrainctl.test_cli import Server, clean_env

RUN_TIMEOUT_S = 240


def small_job(name: str, *, steps: int, checkpoint_every: int) -> dict:
    """The tiny CPU example cut down to one process and `steps` steps of 8 × 64 tokens."""
    spec = yaml.safe_load((EXAMPLES / "tiny-cpu.yaml").read_text())
    spec["name"] = name
    spec["resources"]["gpus_per_node"] = 1
    spec["batch"] = {"micro_batch_size": 4, "global_batch_size": 8}
    spec["schedule"] = {"kind": "constant", "warmup_tokens": 8 * 64 * 2}
    spec["stages"] = [{**spec["stages"][0], "seq_length": 64, "tokens": 8 * 64 * steps}]
    spec["checkpoint"] = {"interval_steps": checkpoint_every, "keep_last": 3}
    spec["eval"] = {"interval_steps": steps, "samples_per_channel": 4}
    return spec


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    """One `pretrainctl serve` for the module: every test submits jobs of its own names."""
    tmp_path = tmp_path_factory.mktemp("embedded")
    server = Server(cwd=tmp_path, env=clean_env())
    token = (tmp_path / ".pretrain" / "admin-token").read_text().strip()
    client = httpx.Client(
        base_url=server.url, headers={"Authorization": f"Bearer {token}"}, timeout=30
    )
    yield client, tmp_path
    client.close()
    server.stop()


def wait_for(client: httpx.Client, job_id: int, predicate, what: str) -> dict:
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if predicate(job):
            return job
        assert job["state"] not in ("failed", "cancelled") or predicate(job), job
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} never {what}: {client.get(f'/v1/jobs/{job_id}').json()}")


def kinds(client: httpx.Client, job_id: int) -> list[str]:
    return [
        e["kind"]
        for e in client.get(f"/v1/jobs/{job_id}/events", params={"limit": 500}).json()["data"]
    ]


def _trainer_pid(root: Path, job_id: int, attempt: int) -> int:
    """The trainer's own process: the child of the workload's launcher (its pid file)."""
    (folder,) = list((root / ".pretrain" / "workloads").glob(f"*-{job_id}-a{attempt}"))
    launcher = int((folder / "pid").read_text())
    children = Path(f"/proc/{launcher}/task/{launcher}/children").read_text().split()
    return int(children[0])


def test_a_killed_trainer_is_resumed_from_its_last_checkpoint_and_the_job_completes(embedded):
    client, root = embedded
    job = client.post(
        "/v1/jobs", json=small_job("local-resume", steps=16, checkpoint_every=4)
    ).json()
    job_id = job["id"]
    wait_for(
        client,
        job_id,
        lambda j: any(c["step"] >= 4 for c in client.get(f"/v1/jobs/{j['id']}/checkpoints").json()),
        "wrote a checkpoint at step 4",
    )

    os.kill(_trainer_pid(root, job_id, 0), signal.SIGKILL)

    done = wait_for(client, job_id, lambda j: j["state"] == "succeeded", "succeeded after the kill")
    first, second = done["attempts"]
    assert first["state"] == "failed" and "SIGKILL" in first["state_reason"]
    assert second["reason"] == "pod_failure" and second["state"] == "succeeded"
    checkpoints = {c["id"]: c for c in client.get(f"/v1/jobs/{job_id}/checkpoints").json()}
    resumed_from = checkpoints[second["resume_from_checkpoint_id"]]
    assert resumed_from["attempt"] == 0 and resumed_from["step"] >= 4
    # The new attempt trained only the steps after its checkpoint.
    steps = [
        p["step"]
        for p in client.get(
            f"/v1/jobs/{job_id}/metrics", params={"name": "loss", "attempt": 1}
        ).json()
    ]
    assert steps == list(range(resumed_from["step"], 16))
    events = kinds(client, job_id)
    for kind in (
        "job.submitted",
        "workload.created",
        "attempt.opened",
        "attempt.running",
        "checkpoint.published",
        "attempt.failed",
        "attempt.succeeded",
        "job.succeeded",
    ):
        assert kind in events, events
    # Every fourth step was saved, whichever attempt saved it (the newest ones are kept).
    assert {c["step"] for c in checkpoints.values()} <= {4, 8, 12, 16}
    assert 16 in {c["step"] for c in checkpoints.values()}


def tokenizer_job(name: str, corpora: list[str]) -> dict:
    """A tokenizer job small enough to train in seconds: a 1000-token BPE on 200 kB a corpus."""
    return {
        "name": name,
        "kind": "tokenizer",
        "mode": "train",
        "corpora": corpora,
        "options": {"vocab_size": 1000, "spare": 10, "max_bytes_per_corpus": 200_000},
        "resources": {"cpu": 1, "memory_gib": 2},
    }


def test_a_tokenizer_job_trains_and_stores_its_result_on_the_job(embedded):
    client, root = embedded
    spec = tokenizer_job("local-tokenizer", ["embedded:code", "embedded:en", "embedded:zh"])
    job = client.post("/v1/jobs", json=spec).json()

    done = wait_for(client, job["id"], lambda j: j["state"] == "succeeded", "succeeded")

    result = done["result"]
    assert result["attempt"] == 0
    expected = root / ".pretrain" / "checkpoints" / f"local-tokenizer-{job['id']}" / "tokenizer"
    assert Path(result["path"]) == expected.resolve()
    assert (expected / "tokenizer.json").is_file()
    assert json.loads((expected / "result.json").read_text())["path"] == result["path"]
    layout = result["report"]["layout"]
    assert layout["pad_to_multiple_of"] == 128
    assert layout["padded_vocab_size"] % 128 == 0
    assert layout["padded_vocab_size"] >= layout["vocab_size"] == 1000 + 10
    assert layout["spare_rows"]["reserved"] == 10
    assert layout["spare_rows"]["total"] == layout["padded_vocab_size"] - 1000
    assert [a["state"] for a in done["attempts"]] == ["succeeded"]
    events = kinds(client, job["id"])
    order = [events.index(k) for k in ("workload.created", "result.reported", "job.succeeded")]
    assert order == sorted(order), events
    (log,) = (root / ".pretrain" / "workloads").glob(f"*-{job['id']}-a0/tokenizer.log")
    assert "reported the result" in log.read_text()


def test_a_tokenizer_job_on_a_missing_corpus_fails_with_the_librarys_message(embedded):
    client, root = embedded
    # Under the state directory, an allowed root: the spec is accepted, the file is not there.
    missing = str((root / ".pretrain" / "no-such-corpus").resolve())
    job = client.post("/v1/jobs", json=tokenizer_job("local-no-corpus", [missing])).json()

    done = wait_for(client, job["id"], lambda j: j["state"] == "failed", "failed")

    assert done["result"] is None
    assert "exited with code 2" in done["state_reason"]
    assert missing in done["state_reason"]

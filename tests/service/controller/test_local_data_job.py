"""A data job on the embedded default: submitted through the API, run by the local backend, its
pair in the job's own directory, its progress as metrics and its sidecar as the job's result."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from tests.pretrainctl.test_cli import clean_env, pretrainctl
from tests.service.controller.test_local_backend import embedded, kinds, wait_for  # noqa: F401


def test_a_data_job_prepares_its_pair_and_stores_the_sidecar_as_its_result(embedded):  # noqa: F811
    client, root = embedded
    corpus = root / ".pretrain" / "corpus.jsonl"  # under the state directory, an allowed root
    texts = [f"document {i}: " + "words " * (i % 9) for i in range(50)] + [""]
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    spec = {
        "name": "local-data",
        "kind": "data",
        "inputs": [str(corpus.resolve())],
        "output": "web",
        "workers": 1,
        "resources": {"cpu": 1, "memory_gib": 1},
    }
    (root / "data.yaml").write_text(yaml.safe_dump(spec))
    env = clean_env(PRETRAIN_API_URL=str(client.base_url))
    submitted = pretrainctl("submit", "data.yaml", "--json", cwd=root, env=env)
    assert submitted.returncode == 0, submitted.stderr
    job = json.loads(submitted.stdout)

    done = wait_for(client, job["id"], lambda j: j["state"] == "succeeded", "succeeded")

    folder = root / ".pretrain" / "checkpoints" / f"local-data-{job['id']}" / "data"
    result = done["result"]
    assert Path(result["path"]) == (folder / "web").resolve()
    sidecar = json.loads((folder / "web.json").read_text())
    assert result["report"] == sidecar
    assert (sidecar["documents"], sidecar["tokenizer"]) == (50, "byte")
    assert sidecar["tokens"] == sum(len(t.encode()) + 1 for t in texts if t)
    assert (folder / "web.bin").stat().st_size == 2 * sidecar["tokens"]  # uint16
    assert (folder / "web.idx").is_file()
    assert [a["state"] for a in done["attempts"]] == ["succeeded"]
    events = kinds(client, job["id"])
    order = [events.index(k) for k in ("workload.created", "result.reported", "job.succeeded")]
    assert order == sorted(order), events
    points = client.get(f"/v1/jobs/{job['id']}/metrics", params={"name": "prep/tokens"}).json()
    assert points and points[-1]["value"] == sidecar["tokens"]
    (log,) = (root / ".pretrain" / "workloads").glob(f"*-{job['id']}-a0/data.log")
    assert "reported the result" in log.read_text()

    # The verbs that work for tokenizer jobs work for data jobs.
    shown = pretrainctl("get", str(job["id"]), cwd=root, env=env)
    assert shown.returncode == 0 and "(data)" in shown.stdout, shown.stderr
    assert f"prepared   50 documents, {sidecar['tokens']:,} tokens (uint16)" in shown.stdout
    logs = pretrainctl("logs", str(job["id"]), cwd=root, env=env)
    assert logs.returncode == 0 and "prepared" in logs.stdout and "1 empty skipped" in logs.stdout
    followed = pretrainctl("follow", str(job["id"]), cwd=root, env=env)
    assert followed.returncode == 0 and "tokens/s" in followed.stdout and "(100%)" in followed.stdout
    rendered = pretrainctl("render", "data.yaml", cwd=root, env=env)
    assert rendered.returncode == 0, rendered.stderr
    assert "trainer.prepare" in rendered.stdout and "kind: Job" in rendered.stdout

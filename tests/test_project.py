"""Layers are enforced, not hoped for: nothing below the API imports it; the trainer stands alone."""

from __future__ import annotations

import ast
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The composition root sits above the API and builds it.
ABOVE_API = {"service/main.py"}
# The one client module that starts the service's processes, importing it inside each command.
SERVER_COMMANDS = "pretrainctl/server.py"


def imported_modules(path: Path) -> set[str]:
    modules = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules.add(node.module)
    return modules


def python_files(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


def test_nothing_below_the_api_imports_it():
    offenders = [
        str(path.relative_to(ROOT))
        for path in python_files("service")
        if "api" not in path.relative_to(ROOT / "service").parts[:1]
        and str(path.relative_to(ROOT)) not in ABOVE_API
        and any(m == "service.api" or m.startswith("service.api.") for m in imported_modules(path))
    ]
    assert offenders == []


def module_level_imports(path: Path) -> set[str]:
    """What importing the module imports at once (not what its functions import when called)."""
    modules = set()
    for node in ast.parse(path.read_text(), filename=str(path)).body:
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules.add(node.module)
    return modules


def is_service(module: str) -> bool:
    return module == "service" or module.startswith("service.")


def test_the_client_speaks_http_only():
    """`pretrainctl` imports nothing of the server but in its server commands, and there only
    inside the commands, so the client commands never load it."""
    files = python_files("pretrainctl")
    assert (ROOT / SERVER_COMMANDS) in files, "the server commands module is missing"
    offenders = [
        str(path.relative_to(ROOT))
        for path in files
        if any(map(is_service, module_level_imports(path)))
        or (str(path.relative_to(ROOT)) != SERVER_COMMANDS and any(map(is_service, imported_modules(path))))
    ]
    assert offenders == []


def test_the_server_holds_no_cli_code():
    """The command line is `pretrainctl`'s; the server's processes are built in service/main.py."""
    offenders = [
        str(path.relative_to(ROOT))
        for path in python_files("service")
        if any(m == "click" or m.startswith("click.") for m in imported_modules(path))
    ]
    assert offenders == []


def test_the_trainer_imports_nothing_from_the_service():
    offenders = [
        str(path.relative_to(ROOT))
        for path in python_files("trainer_image")
        if any(m == "service" or m.startswith("service.") for m in imported_modules(path))
    ]
    assert python_files("trainer_image"), "the trainer package is missing"
    assert offenders == []


def test_only_settings_reads_the_environment():
    readers = [
        str(path.relative_to(ROOT))
        for path in python_files("service")
        if path.name != "settings.py" and ("os.environ" in path.read_text() or "getenv" in path.read_text())
    ]
    assert readers == []


def test_the_configuration_table_is_generated_from_settings():
    import importlib.util

    spec = importlib.util.spec_from_file_location("settings_table", ROOT / "scripts" / "settings_table.py")
    table = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(table)
    from service.settings import Settings

    configuration = (ROOT / "docs" / "configuration.md").read_text()
    assert table.render() in configuration, "docs/configuration.md is stale: run python scripts/settings_table.py"
    assert all(f"`PRETRAIN_{name.upper()}`" in table.render() for name in Settings.model_fields)


def test_nothing_in_the_repository_reads_outside_it():
    """A clone stands alone: no tracked file points at a folder beside the checkout."""
    # Spelled in two pieces so this file does not find itself.
    beside = ".." + "/shared"
    tracked = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, check=True, capture_output=True
    ).stdout.decode().split("\0")
    assert len(tracked) > 100, "git ls-files listed almost nothing: not a checkout?"
    readers = [
        name
        for name in tracked
        if name and (ROOT / name).is_file() and beside.encode() in (ROOT / name).read_bytes()
    ]
    assert readers == []


def test_every_link_in_the_readme_and_docs_resolves():
    """A moved or renamed file breaks the page that links to it here, not in a reader's browser."""
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    assert len(pages) > 5, "docs/ is missing"
    broken = [
        f"{page.relative_to(ROOT)}: {target}"
        for page in pages
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text())
        if "://" not in target and not (page.parent / target).exists()
    ]
    assert broken == []

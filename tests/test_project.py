"""Layers are enforced, not hoped for: nothing below the API imports it; the trainer stands alone."""

from __future__ import annotations

import ast
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


def test_the_readme_settings_table_is_generated_from_settings():
    import importlib.util

    spec = importlib.util.spec_from_file_location("settings_table", ROOT / "scripts" / "settings_table.py")
    table = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(table)
    from service.settings import Settings

    readme = (ROOT / "README.md").read_text()
    assert table.render() in readme, "README's settings table is stale: run python scripts/settings_table.py"
    assert all(f"`PRETRAIN_{name.upper()}`" in table.render() for name in Settings.model_fields)

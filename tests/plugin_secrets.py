"""Pytest plugin: the suite's admin token never shows in a log line or a test's output.

Every test runs with `tests.conftest.ADMIN_TOKEN` as the admin token of the apps it builds. A
handler on the root logger sees every record at INFO or above of every test (the service's, the
API's, uvicorn's, the libraries'), and each test's captured stdout, stderr and log sections are
read too; a test during which the token appeared in any of them fails, naming where.

Register it from tests/conftest.py with ``pytest_plugins = ["tests.plugin_secrets"]``.
"""

from __future__ import annotations

import logging

import pytest


class SecretWatch(logging.Handler):
    """Notes each log record whose message (or traceback) holds the secret."""

    def __init__(self, secret: str) -> None:
        super().__init__(logging.INFO)
        self.secret = secret
        self.leaks: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage() + (logging.Formatter().formatException(record.exc_info) if record.exc_info else "")
        if self.secret in text:
            self.leaks.append(f"log record of {record.name} at {record.pathname}:{record.lineno}")


WATCH_KEY = pytest.StashKey[SecretWatch]()


def watch(secret: str) -> SecretWatch:
    """A SecretWatch on the root logger, which lets INFO records through to it from now on."""
    handler = SecretWatch(secret)
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(min(root.level or logging.WARNING, logging.INFO))
    return handler


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    report = outcome.get_result()
    handler: SecretWatch | None = item.config.stash.get(WATCH_KEY, None)
    if handler is None:
        return
    found = [f"{name} section" for name, content in report.sections if handler.secret in content]
    found += handler.leaks
    handler.leaks = []
    if found and report.outcome != "failed":
        report.outcome = "failed"
        report.longrepr = f"the admin token of the suite appeared in: {', '.join(found)}"


def pytest_configure(config: pytest.Config) -> None:
    from tests.conftest import ADMIN_TOKEN

    config.stash[WATCH_KEY] = watch(ADMIN_TOKEN)

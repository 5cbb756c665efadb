"""The suite's secret watch (tests/plugin_secrets.py) fails a test that leaks the admin token
into a log record or its output, and only such a test."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT

LEAKY_TESTS = '''
import logging

from tests.conftest import ADMIN_TOKEN


def test_logs_it_as_a_warning():
    logging.getLogger("service.api").warning("refused %s", ADMIN_TOKEN)


def test_logs_it_at_info_where_no_one_captures_it():
    logging.getLogger("uvicorn.access").info("Authorization: Bearer %s", ADMIN_TOKEN)


def test_prints_it():
    print("token:", ADMIN_TOKEN)


def test_logs_its_traceback():
    try:
        raise ValueError(ADMIN_TOKEN)
    except ValueError:
        logging.getLogger("service.tasks").exception("failed")


def test_keeps_it_to_itself():
    logging.getLogger("service.api").warning("refused a token")
    assert ADMIN_TOKEN
'''


def test_the_watch_fails_each_test_that_shows_the_admin_token_and_no_other(tmp_path: Path) -> None:
    (tmp_path / "test_leaky.py").write_text(LEAKY_TESTS)
    run = subprocess.run(
        [sys.executable, "-m", "pytest", str(tmp_path), "-p", "tests.plugin_secrets", "-p", "no:cacheprovider",
         "-q", "-rA", "--rootdir", str(tmp_path), "-c", "/dev/null"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    failed = {line.split("::")[1].split()[0] for line in run.stdout.splitlines() if line.startswith("FAILED")}
    assert failed == {
        "test_logs_it_as_a_warning",
        "test_logs_it_at_info_where_no_one_captures_it",
        "test_prints_it",
        "test_logs_its_traceback",
    }, run.stdout + run.stderr
    assert "PASSED" in run.stdout and "test_keeps_it_to_itself" in run.stdout
    assert "the admin token of the suite appeared in" in run.stdout

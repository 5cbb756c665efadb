"""The throwaway Prometheus of tests/prometheus_server.py: found, started, and gone afterwards."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests import prometheus_server, servers
from tests.servers import ServerStartError, free_port


def test_throwaway_prometheus_answers_queries_and_is_gone_afterwards() -> None:
    with prometheus_server.throwaway_prometheus([f"127.0.0.1:{free_port()}"]) as prometheus:
        assert prometheus.query("vector(42)")[0]["value"][1] == "42"
        (tmpdir,) = [
            path for path in Path(servers._base_tmpdir()).glob("pretrain-test-prometheus-*")
            if (path / "owner.pid").read_text().strip() == str(os.getpid())
        ]  # fmt: skip
        pid = int((tmpdir / "server.pid").read_text())
        assert "prometheus" in Path(f"/proc/{pid}/cmdline").read_text()
    assert not tmpdir.exists()
    assert not Path(f"/proc/{pid}").exists() or "prometheus" not in Path(f"/proc/{pid}/cmdline").read_text()


def test_test_prometheus_bin_wins_and_must_be_executable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    binary = tmp_path / "prometheus"
    binary.write_text("#!/bin/sh\n")
    monkeypatch.setenv("TEST_PROMETHEUS_BIN", str(binary))
    with pytest.raises(ServerStartError, match="not an executable"):
        prometheus_server.find_prometheus()
    binary.chmod(0o755)
    assert prometheus_server.find_prometheus() == str(binary)

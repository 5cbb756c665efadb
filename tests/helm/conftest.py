"""Each scenario of the chart rendered once per session (Helm's engine takes a moment)."""

from __future__ import annotations

import pytest

from tests.helm.chart import MONITORING_API, SCENARIOS, Rendered, render, scenario_values

SCENARIO_NAMES = ["default", *SCENARIOS]


@pytest.fixture(scope="session")
def renders() -> dict[str, Rendered]:
    """Every scenario, on a cluster that serves the Prometheus Operator's API."""
    return {
        name: render(scenario_values(name), api_versions=[MONITORING_API])
        for name in SCENARIO_NAMES
    }


@pytest.fixture(scope="session")
def default(renders: dict[str, Rendered]) -> Rendered:
    return renders["default"]

"""Fixtures of the controller tests that run against the Kubernetes emulator."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from service.controller.loop import Controller
from tests.service.controller.k8s_emulator import EmulatorHandle, running_emulator
from tests.service.controller.on_cluster import NAMESPACE, make_controller


@pytest.fixture
def cluster() -> Iterator[tuple[str, EmulatorHandle]]:
    """The emulator's URL and its handle, with the jobs namespace in it."""
    with running_emulator(NAMESPACE) as started:
        yield started


@pytest.fixture
def controller(settings, cluster) -> Controller:
    """A controller against the emulator, with the test file's `settings`."""
    return make_controller(settings, cluster)

"""What the evaluator does about a job's evaluations: `plan` over row states and workloads, no I/O."""

from __future__ import annotations

import pytest

from service.controller.evaluations import Fail, Remove, Start, plan
from service.controller.reconcile import Phase, WorkloadStatus


def workload(step: int, phase: Phase, reason: str | None = None) -> WorkloadStatus:
    return WorkloadStatus(f"tiny-7-e{step}", step, phase, reason=reason)


@pytest.mark.parametrize(
    ("states", "observed", "expected"),
    [
        # the oldest pending step starts; one at a time
        ({40: {"pending"}, 80: {"pending"}}, {}, [Start(40)]),
        ({40: {"running"}, 80: {"pending"}}, {40: workload(40, Phase.RUNNING)}, []),
        # scores arrived (rows succeeded) while the workload still exits: wait for it
        ({40: {"succeeded"}, 80: {"pending"}}, {40: workload(40, Phase.RUNNING)}, []),
        # it exited: removed, and the next starts
        (
            {40: {"succeeded"}, 80: {"pending"}},
            {40: workload(40, Phase.SUCCEEDED)},
            [Remove(40), Start(80)],
        ),
        # a failure's reason goes on the rows
        (
            {40: {"running"}, 80: {"pending"}},
            {40: workload(40, Phase.FAILED, "OOMKilled")},
            [Fail(40, "OOMKilled"), Remove(40), Start(80)],
        ),
        # succeeded without reporting: failed all the same
        (
            {40: {"running"}},
            {40: workload(40, Phase.SUCCEEDED)},
            [Fail(40, "the evaluation ended without reporting its scores"), Remove(40)],
        ),
        # a running evaluation whose workload vanished
        (
            {40: {"running"}, 80: {"pending"}},
            {},
            [Fail(40, "the evaluation workload is gone"), Start(80)],
        ),
        # a workload created by a pass that died before marking its rows running is adopted
        ({40: {"pending"}}, {40: workload(40, Phase.RUNNING)}, []),
        ({40: {"failed"}, 80: {"succeeded"}}, {}, []),
    ],
)
def test_plan(states, observed, expected):
    assert plan(states, observed) == expected

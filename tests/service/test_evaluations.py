"""Which checkpoints a job's benchmarks score: the policy as a pure function of what was saved."""

from __future__ import annotations

import pytest

from service.evaluations import choose_steps
from service.spec import EvaluationCheckpointsSpec

SAVED = [0, 100, 200, 300, 400, 500, 600]
STAGE_ENDS = [250, 600]


@pytest.mark.parametrize(
    ("policy", "saved", "finished", "expected"),
    [
        # the default: only the newest, and only once the job has finished
        ({}, SAVED, False, []),
        ({}, SAVED, True, [600]),
        ({}, [], True, []),
        # every 2nd checkpoint at interval 100: multiples of 200, never step 0
        ({"every": 2, "final": False}, SAVED, False, [200, 400, 600]),
        # pruning does not shift which steps count (the rule is of the step, not the list)
        ({"every": 2, "final": False}, [400, 500, 600], False, [400, 600]),
        # a stage end without a checkpoint of its own: the newest before it, once run past
        ({"stage_ends": True, "final": False}, SAVED, False, [200, 600]),
        ({"stage_ends": True, "final": False}, [0, 100, 200], False, []),
        ({"stage_ends": True, "final": False}, [0, 100, 200], True, [200]),
        # rules add up, each step once
        ({"every": 3, "stage_ends": True}, SAVED, True, [200, 300, 600]),
        # a job that stopped early: final is its newest checkpoint
        ({"every": 5}, [0, 100, 200, 300], True, [300]),
    ],
)
def test_choose_steps(policy, saved, finished, expected):
    chosen = choose_steps(
        EvaluationCheckpointsSpec(**policy),
        interval_steps=100,
        stage_end_steps=STAGE_ENDS,
        saved_steps=saved,
        finished=finished,
    )
    assert chosen == expected

"""Skip and corrupt ranges: one merge and one step-to-batch rule for the trainer and the service."""

from __future__ import annotations

import subprocess
import sys

import pytest

from trainer.ranges import batch_index, merge_ranges


@pytest.mark.parametrize(
    ("ranges", "merged"),
    [
        ([], []),
        ([(3, 7)], [(3, 7)]),
        ([[3, 7]], [(3, 7)]),  # JSON gives lists
        ([(10, 12), (5, 7)], [(5, 7), (10, 12)]),  # sorted
        ([(5, 7), (6, 8)], [(5, 8)]),  # overlapping
        ([(5, 7), (7, 9)], [(5, 9)]),  # adjacent: [5, 7) and [7, 9) leave no batch between
        ([(5, 7), (8, 9)], [(5, 7), (8, 9)]),  # batch 7 lies between: kept apart
        ([(5, 20), (8, 9)], [(5, 20)]),  # contained
        ([(3, 3)], []),  # empty: a rollback that skips no steps
        ([(3, 3), (1, 2)], [(1, 2)]),
        ([(0, 1)], [(0, 1)]),
        ([(10, 12), (5, 7), (6, 8), (8, 9), (3, 3)], [(5, 9), (10, 12)]),
    ],
)
def test_merge_ranges(ranges, merged) -> None:
    assert merge_ranges(ranges) == merged


@pytest.mark.parametrize(
    ("ranges", "message"),
    [
        # The service's copy stored these as they came; the trainer then refused the config.
        ([(5, 3)], r"bad range \[5, 3\)"),
        ([(-2, 3)], r"bad range \[-2, 3\)"),
        ([(1, 4), (9, 8)], r"bad range \[9, 8\)"),
        ([(1, 2, 3)], r"a range is \[start, end\), got \[1, 2, 3\]"),
        ([(1,)], r"a range is \[start, end\)"),
    ],
)
def test_merge_ranges_refuses_bad_ranges(ranges, message) -> None:
    with pytest.raises(ValueError, match=message):
        merge_ranges(ranges)


@pytest.mark.parametrize(
    ("step", "ranges", "expected"),
    [
        (0, [], 0),
        (7, [], 7),
        (4, [(5, 8)], 4),
        (5, [(5, 8)], 8),
        (6, [(5, 8)], 9),
        (5, [(5, 8), (8, 10)], 10),  # adjacent ranges skip as one
        (5, [(8, 10), (5, 8)], 10),  # in any order
        (5, [(5, 5)], 5),  # an empty range skips nothing
        (0, [(0, 3)], 3),
    ],
)
def test_batch_index(step, ranges, expected) -> None:
    assert batch_index(step, ranges) == expected


def test_batch_index_refuses_a_negative_step() -> None:
    with pytest.raises(ValueError, match="step must be >= 0"):
        batch_index(-1)


def test_the_service_and_the_trainer_use_this_one_implementation() -> None:
    from service.watchdog import rollback
    from trainer import data

    assert rollback.merge_ranges is data.merge_ranges is merge_ranges
    assert rollback.batch_index is data.batch_index is batch_index


def test_ranges_import_without_torch() -> None:
    code = "import sys\nsys.modules['torch'] = None\nimport trainer.ranges\n"
    subprocess.run([sys.executable, "-c", code], check=True)

"""Half-open `[start, end)` ranges of batch indices: merging them, and mapping steps through them.

Pure Python (no torch) because both sides use it: the trainer to skip and corrupt batches,
the service's rollback to add a skip range to those in force and to turn steps into batch
indices. One implementation, so the two cannot disagree about which batch a step consumes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def merge_ranges(ranges: Iterable[Sequence[int]]) -> list[tuple[int, int]]:
    """Half-open ranges sorted, empty ones dropped, overlapping or adjacent ones merged.

    `[a, a)` is empty and dropped (a rollback that skips no steps adds one); a range that
    is not a pair, starts below 0 or ends before it starts is a `ValueError`, never stored.
    """
    pairs = []
    for bounds in ranges:
        if len(bounds) != 2:
            raise ValueError(f"a range is [start, end), got {list(bounds)}")
        start, end = int(bounds[0]), int(bounds[1])
        if start < 0 or end < start:
            raise ValueError(f"bad range [{start}, {end}): needs 0 <= start <= end")
        pairs.append((start, end))
    merged: list[tuple[int, int]] = []
    for start, end in sorted(pairs):
        if start == end:
            continue
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def batch_index(step: int, skip_ranges: Iterable[Sequence[int]] = ()) -> int:
    """The global batch index that training step `step` consumes.

    Skip ranges are half-open ranges `[a, b)` of *global batch indices*. Step `t` consumes
    the `t`-th (0-based) index that lies in no skip range, so a skip range drops exactly the
    batches whose indices are in it and nothing else: with `[5, 8)`, steps 0-4 consume
    batches 0-4, step 5 consumes batch 8, step 6 batch 9. The rule depends on the step alone,
    so ranges that lie wholly before a resume point still shift every later step. In a run
    that has never skipped, batch index equals step, so a range of steps from the original
    timeline can be passed as is; after earlier skips, express a new range in batch indices
    (`batch_index` of its first and last step).
    """
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    index = step
    for start, end in merge_ranges(skip_ranges):
        if start > index:
            break
        index += end - start
    return index

"""Fault injection for demos, tests and on-call drills: faults of the run, not of its data.

(Bad data lives with the data: a source's `corrupt_steps`.) Every plan of a spec with a fault
carries a warning.
"""

from __future__ import annotations

from pydantic import Field

from service.spec.fields import NonNegativeSteps, Section


class FaultsSpec(Section):
    """Faults the trainer injects on purpose; none by default."""

    hang_at_step: NonNegativeSteps | None = Field(
        None,
        description="The job's first attempt stops making progress at this step, as a hung NCCL "
        "collective would: it sleeps, holding no locks, until it is stopped. Later attempts pass "
        "the step, so the stall watchdog's restart recovers the run.",
    )

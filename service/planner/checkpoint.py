"""How big a checkpoint is, how long it takes to write, and so how long a pod needs after SIGTERM.

A preempted or drained pod gets `terminationGracePeriodSeconds` after SIGTERM; the trainer
finishes its step and saves in that time (its `on SIGTERM` path), or the kubelet kills it and
the work since the last checkpoint is lost. The grace period is therefore one step plus the
checkpoint's write time with a safety factor, within a floor and a ceiling.
"""

from __future__ import annotations

import math

from pydantic import BaseModel, Field

from service.planner.compute import StageEstimate
from service.planner.memory import GIB
from service.planner.params import Params

# A megatron-core distributed checkpoint holds the 16-bit weights (2 bytes a parameter) and the
# optimizer's fp32 main weights and two Adam moments (12 bytes): 14 bytes a parameter in all.
CHECKPOINT_BYTES_PER_PARAMETER = 14
# Sustained write speed of one node to checkpoint storage, GiB/s. A conservative figure: NFS
# and object-store mounts sustain about 1 GiB/s a node; parallel filesystems (Lustre, GPFS,
# Weka) and local NVMe reach 2-10 GiB/s (vendors' published client throughputs). Every node
# writes its share of the shards at once (`dist_checkpointing` fully parallel save).
WRITE_GIB_PER_S_PER_NODE = 1.0
# Storage shared with other jobs is slower on a bad day: allow twice the nominal write time.
WRITE_SAFETY_FACTOR = 2.0
# Below a minute a slow filesystem flush or a long step already cuts the save short; past an
# hour a drain waits too long for one pod (cluster operators cap grace periods about there).
MIN_TERMINATION_GRACE_S = 60
MAX_TERMINATION_GRACE_S = 3600


class CheckpointEstimate(BaseModel):
    """A checkpoint's size and write time, and the grace period a pod gets after SIGTERM."""

    size_gib: float = Field(description="Whole checkpoint: 14 bytes a parameter.")
    per_node_gib: float = Field(description="The share each node writes.")
    write_gib_per_s_per_node: float = Field(description="Assumed sustained write speed of a node.")
    write_s: float = Field(description="per_node_gib / write speed.")
    step_s: float = Field(description="The slowest stage's estimated step time.")
    termination_grace_s: int = Field(
        description=f"step_s + {WRITE_SAFETY_FACTOR:g} × write_s, within "
        f"[{MIN_TERMINATION_GRACE_S}, {MAX_TERMINATION_GRACE_S}] s: the pods' grace period "
        "after SIGTERM unless resources.termination_grace_s sets it."
    )


def estimate_checkpoint(params: Params, stages: list[StageEstimate], *, nodes: int) -> CheckpointEstimate:
    """The checkpoint's size and write time over `nodes`, and the grace period it needs."""
    size_gib = params.total * CHECKPOINT_BYTES_PER_PARAMETER / GIB
    per_node = size_gib / nodes
    write_s = per_node / WRITE_GIB_PER_S_PER_NODE
    step_s = max(
        (stage.days * 86_400 / stage.train_iters for stage in stages if stage.train_iters > 0),
        default=0.0,
    )
    grace = grace_period_s(step_s=step_s, write_s=write_s)
    return CheckpointEstimate(
        size_gib=size_gib,
        per_node_gib=per_node,
        write_gib_per_s_per_node=WRITE_GIB_PER_S_PER_NODE,
        write_s=write_s,
        step_s=step_s,
        termination_grace_s=grace,
    )


def grace_period_s(*, step_s: float, write_s: float) -> int:
    """One step to finish plus the write with its safety factor, within the floor and ceiling."""
    wanted = math.ceil(step_s + WRITE_SAFETY_FACTOR * write_s)
    return min(MAX_TERMINATION_GRACE_S, max(MIN_TERMINATION_GRACE_S, wanted))

"""Process groups: torch.distributed plus megatron-core's model-parallel state."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed

from trainer.compat import enable_cpu_mode
from trainer.config import ParallelConfig


@dataclass(frozen=True)
class Layout:
    """Where this process sits: its ranks in every parallel group."""

    rank: int
    world_size: int
    tensor_rank: int
    pipeline_rank: int
    data_rank: int
    data_size: int
    is_first_stage: bool
    is_last_stage: bool

    @property
    def reports(self) -> bool:
        """Only global rank 0 talks to the outside world."""
        return self.rank == 0


def init(parallel: ParallelConfig, seed: int) -> Layout:
    """Start torch.distributed (nccl on GPU, gloo on CPU) and megatron's groups; seed the RNGs."""
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        backend = "nccl"
    else:
        enable_cpu_mode()
        backend = "gloo"
    if not dist.is_initialized():
        if "RANK" not in os.environ:  # a plain `python -m trainer.train`: a world of one
            os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1")
            os.environ.setdefault("MASTER_PORT", str(_free_port()))
        dist.init_process_group(backend)
    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=parallel.tensor,
        pipeline_model_parallel_size=parallel.pipeline,
        virtual_pipeline_model_parallel_size=parallel.virtual_pipeline,
        context_parallel_size=parallel.context,
        expert_model_parallel_size=parallel.expert,
    )
    # Megatron's tracker needs this after the groups exist: TP ranks get different dropout
    # streams, DP replicas the same initial weights.
    model_parallel_cuda_manual_seed(seed)
    torch.manual_seed(seed + 100 * parallel_state.get_pipeline_model_parallel_rank())
    return current_layout()


def current_layout() -> Layout:
    return Layout(
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        tensor_rank=parallel_state.get_tensor_model_parallel_rank(),
        pipeline_rank=parallel_state.get_pipeline_model_parallel_rank(),
        data_rank=parallel_state.get_data_parallel_rank(),
        data_size=parallel_state.get_data_parallel_world_size(),
        is_first_stage=parallel_state.is_pipeline_first_stage(ignore_virtual=True),
        is_last_stage=parallel_state.is_pipeline_last_stage(ignore_virtual=True),
    )


def device() -> torch.device:
    """Where tensors for collectives live: NCCL reduces only CUDA tensors, gloo CPU ones."""
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def shutdown() -> None:
    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]

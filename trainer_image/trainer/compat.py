"""Let megatron-core run on CPU: route its hard-coded CUDA calls to the CPU.

megatron-core assumes a GPU in a few places: `device="cuda"` literals and
`torch.cuda.current_device()` as a device, `torch.cuda` RNG state in the tensor-parallel RNG
tracker, `.cuda()` calls, streams, `synchronize()`, and `t.type() == "torch.cuda.FloatTensor"`
assertions. `enable_cpu_mode()` patches exactly
those, once, and only when CUDA is absent; with CUDA present it does nothing, so the GPU path
is the library's own. A `TorchFunctionMode` maps CUDA device arguments to the CPU; it costs
about 1% of a CPU step.

Importing this module first also imports megatron-core without compiling its fusion kernels
when CUDA is absent (`_import_megatron_on_cpu`): the process entry points (`trainer.train`,
`trainer.export`) import it before anything from megatron.
"""

from __future__ import annotations

import contextlib
import sys
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

_enabled = False
_mode: TorchFunctionMode | None = None


def _import_megatron_on_cpu() -> None:
    """Import megatron-core with `torch.compile` as the identity, on a machine without CUDA.

    megatron-core decorates its fused kernels (bias-GeLU, SwiGLU, cross-entropy, ...) with
    `torch.compile` as it imports them. The decoration alone imports Inductor, Dynamo and SymPy:
    about 2.3 s of CPU, 40% of a trainer process's start. On CPU those kernels run eagerly
    either way (compiling is semantics-preserving, and the trainer turns the fusions off there),
    so the compiler is not imported at all. With CUDA present megatron-core imports as it is.
    """
    if "megatron.core" in sys.modules or torch.cuda.is_available():
        return
    compile_ = torch.compile
    torch.compile = _no_compile
    try:
        import megatron.core  # noqa: F401
    finally:
        torch.compile = compile_


def _no_compile(model: Any = None, **_: Any) -> Any:
    """`torch.compile` as the identity, used bare (`@torch.compile`) or with options."""
    return model if model is not None else (lambda fn: fn)


_import_megatron_on_cpu()


def _is_cuda_device(device: Any) -> bool:
    if isinstance(device, int) and not isinstance(device, bool):
        return True
    if isinstance(device, str):
        return device.startswith("cuda")
    if isinstance(device, torch.device):
        return device.type == "cuda"
    return False


class _CudaToCpu(TorchFunctionMode):
    """Rewrite `device=` arguments (and `.to(...)`/`.cuda()` targets) that name CUDA."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.Tensor.type and len(args) == 1 and not kwargs:
            # Megatron asserts `t.type() == "torch.cuda.FloatTensor"`; answer as a GPU would.
            name = func(*args)
            return name.replace("torch.", "torch.cuda.", 1) if not name.startswith("torch.cuda.") else name
        if "device" in kwargs and _is_cuda_device(kwargs["device"]):
            kwargs = {**kwargs, "device": "cpu"}
        if func in (torch.Tensor.to, torch.Tensor.cuda) or getattr(func, "__name__", "") in ("to", "cuda"):
            if func is torch.Tensor.cuda or getattr(func, "__name__", "") == "cuda":
                return args[0]
            args = tuple("cpu" if _is_cuda_device(a) else a for a in args)
        return func(*args, **kwargs)


class _NullStream:
    """Stands in for a CUDA stream on CPU: everything is already ordered."""

    def __init__(self, *_: Any, **__: Any) -> None: ...

    def wait_stream(self, _stream: Any) -> None: ...

    def wait_event(self, _event: Any) -> None: ...

    def synchronize(self) -> None: ...

    def record_event(self, event: Any = None) -> Any:
        return event or _NullEvent()

    def __enter__(self) -> _NullStream:
        return self

    def __exit__(self, *_: object) -> None: ...


class _NullEvent:
    def __init__(self, *_: Any, **__: Any) -> None: ...

    def record(self, *_: Any) -> None: ...

    def wait(self, *_: Any) -> None: ...

    def synchronize(self) -> None: ...

    def query(self) -> bool:
        return True

    def elapsed_time(self, _other: Any) -> float:
        return 0.0


def enable_cpu_mode() -> bool:
    """Patch megatron-core's CUDA assumptions when CUDA is absent; True if it patched."""
    global _enabled, _mode
    if torch.cuda.is_available():
        return False
    if _enabled:
        return True
    cuda = torch.cuda
    cuda.current_device = lambda: 0
    cuda.synchronize = lambda *_, **__: None
    cuda.current_stream = lambda *_, **__: _NullStream()
    cuda.default_stream = lambda *_, **__: _NullStream()
    cuda.Stream = _NullStream  # a class: libraries write `torch.cuda.Stream | None`
    cuda.stream = lambda *_, **__: contextlib.nullcontext()
    cuda.Event = _NullEvent
    cuda.get_rng_state = lambda *_, **__: torch.get_rng_state()
    cuda.set_rng_state = lambda state, *_, **__: torch.set_rng_state(state)
    # torch.manual_seed itself calls cuda.manual_seed_all, so seed the CPU generator directly.
    cuda.manual_seed = lambda seed: torch.default_generator.manual_seed(int(seed))
    cuda.manual_seed_all = lambda seed: None
    cuda.empty_cache = lambda: None
    cuda.memory_allocated = lambda *_, **__: 0
    cuda.max_memory_allocated = lambda *_, **__: 0
    torch.nn.Module.cuda = lambda self, *_, **__: self

    from megatron.core.tensor_parallel import random as tp_random

    tp_random._get_cuda_rng_state = lambda *_, **__: torch.get_rng_state()
    tp_random._set_cuda_rng_state = lambda state, *_, **__: torch.set_rng_state(state)

    _mode = _CudaToCpu()
    _mode.__enter__()
    _enabled = True
    return True


def cpu_mode_enabled() -> bool:
    return _enabled

"""Where and how code runs: device choice, attention kernels, seeds, threads, autocast, distributed setup, and
the signals that stop a run (`StopRequests`).

Torch is imported inside the functions, so importing this module costs nothing.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import signal
import threading
from dataclasses import dataclass
from typing import Any

from nmtkit.errors import ConfigError, Stopped

log = logging.getLogger("nmtkit")


def pick_device(name: str = "auto"):
    """`auto` picks CUDA, then Apple's MPS, then the CPU; otherwise any torch device string."""
    import torch

    if name == "auto":
        if torch.cuda.is_available():
            return _with_attention_for(torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))))
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"--device {name!r} is not a device; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: CUDA is not available on this machine")
    return _with_attention_for(device)


def _with_attention_for(device):
    """The device, with attention set up for the shapes nmtkit's work has: on CUDA, cuDNN's fused attention is
    left out of `scaled_dot_product_attention` (see `attention_shapes`)."""
    if device.type == "cuda":
        _cudnn_attention(False)
    return device


def _cudnn_attention(enabled: bool) -> bool:
    """Allow cuDNN in `scaled_dot_product_attention` or not; returns whether it was allowed before."""
    import torch

    backends = torch.backends.cuda
    if not hasattr(backends, "enable_cudnn_sdp"):  # torch without cuDNN attention
        return False
    before = backends.cudnn_sdp_enabled()
    backends.enable_cudnn_sdp(enabled)
    return before


@contextlib.contextmanager
def attention_shapes(device, *, fixed: bool):
    """Within the block, the attention kernels suit the shapes of the work: `fixed` shapes (pretraining windows,
    all the same) may use cuDNN's fused attention, which builds a graph for every new shape (about 80 ms of host
    time on an H200, then 0.06 ms a call); variable shapes (bucketed batches, validation, every step of a search)
    use the flash and memory-efficient kernels, which plan nothing per shape (0.15 ms a call). Outside CUDA
    nothing changes. docs/architecture.md says why."""
    if device.type != "cuda":
        yield
        return
    before = _cudnn_attention(fixed)
    try:
        yield
    finally:
        _cudnn_attention(before)


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    torch.manual_seed(seed)


def autocast(device, enabled: bool = True):
    """bf16 autocast on GPUs that support it; a no-op elsewhere (it slows the CPU down)."""
    import torch

    if enabled and device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@dataclass(frozen=True)
class Distributed:
    """The process's place in a `torchrun` job (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device) -> Distributed:
    """Join the process group `torchrun` describes in the environment (gloo on CPU, nccl on CUDA)."""
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Distributed()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Distributed(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def peak_memory_mb(device) -> float:
    """The most memory this process has used so far, in MiB: on a GPU the tensors torch allocated on it; on a
    CPU the process's peak resident size (everything: tensors, data, Python)."""
    import resource
    import sys

    import torch

    if device.type == "cuda":
        return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return round(peak / (2**20 if sys.platform == "darwin" else 2**10), 1)


def measured_peak_flops(device) -> float | None:
    """The device's bf16 matrix-multiply FLOP/s, measured (what MFU is reported against); None off CUDA."""
    import time

    import torch

    if device.type != "cuda":
        return None
    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize(device)
    t, n = time.perf_counter(), 20
    for _ in range(n):
        a @ b
    torch.cuda.synchronize(device)
    return 2 * 8192**3 * n / (time.perf_counter() - t)


class StopEvaluation(BaseException):
    """Raised by the signal handler in the middle of an evaluation (a BaseException: nothing on the way swallows it)."""


class StopRequests:
    """While active (in the main thread), SIGINT and SIGTERM set `signum` instead of stopping the process, so
    the loop can finish its step and save; during an evaluation (`evaluating`) the evaluation stops at once
    (`StopEvaluation`); a second signal raises `Stopped` at once."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signum = 0
        self.evaluating = False
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum:
            raise Stopped(signum)
        self.signum = signum
        if self.evaluating:
            log.warning("%s: stopping the evaluation to save a checkpoint (again to stop at once)",
                        signal.Signals(signum).name)
            raise StopEvaluation
        log.warning("%s: stopping after this step to save a checkpoint (again to stop at once, losing the "
                    "work since the last checkpoint)", signal.Signals(signum).name)

    def __enter__(self) -> "StopRequests":
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc: Any) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)

"""The process groups of a tensor-parallel run and the collectives the model needs.

torch.distributed is the transport: gloo on CPU, NCCL on CUDA, started from torchrun's
environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT or its rendezvous). A second gloo
group carries the small control messages (rank 0's forward calls, `driver`); it waits as long as
an interactive user may think, while the compute group's collectives time out quickly
(LLAMA3_TP_TIMEOUT seconds, default 120): a rank that hangs or dies ends the others with one
`TensorParallelError` instead of a hang.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from ..errors import TensorParallelError
from .plan import ShardPlan

#: seconds a compute collective may wait for the other ranks
DEFAULT_TIMEOUT_S = 120.0
#: control messages: rank 0 may wait for a user's next line this long
CONTROL_TIMEOUT = timedelta(days=7)

_current: TensorParallel | None = None


@dataclass
class TensorParallel:
    rank: int
    world: int
    device: torch.device
    group: Any = None  # the compute group (the default group)
    control: Any = None  # gloo, for objects
    #: set on rank 0 of a run whose other ranks follow it (`driver.Driver`), else None
    driver: Any = None
    #: every rank runs the same program (Meta's `Llama.build` under torchrun): sampled token ids
    #: are taken from rank 0 so all ranks agree, whatever their random generators hold
    lockstep: bool = False
    plan: ShardPlan | None = field(default=None)

    # ---- collectives ---------------------------------------------------------------------------
    def _run(self, what: str, op: Callable[[], Any]) -> Any:
        try:
            return op()
        except TensorParallelError:
            raise
        except Exception as e:  # gloo/NCCL raise RuntimeError subclasses with long texts
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise TensorParallelError(
                f"tensor-parallel rank {self.rank} of {self.world}: {what} failed ({first})",
                "another rank stopped, was killed or hangs; its own output says why "
                f"(raise LLAMA3_TP_TIMEOUT, now {timeout_seconds():.0f} s, for slow links)",
            ) from None

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        """Sum `x` over the ranks, in place (the row-parallel products' partial sums)."""
        if x.dtype == torch.bfloat16 and x.device.type == "cpu":
            y = x.float()  # gloo sums bfloat16 in bfloat16; sum the partials in float32
            self._run("all-reduce", lambda: dist.all_reduce(y, group=self.group))
            x.copy_(y)
            return x
        self._run("all-reduce", lambda: dist.all_reduce(x, group=self.group))
        return x

    def gather_last(self, x: torch.Tensor, full: int, chunk: int) -> torch.Tensor:
        """Concatenate each rank's slice of the last dim (each `chunk` wide, padded where the
        last rank's is shorter) and cut to `full` (the vocab-parallel head's logits)."""
        x = x.contiguous()
        if x.shape[-1] < chunk:
            x = torch.nn.functional.pad(x, (0, chunk - x.shape[-1]))
        parts = [torch.empty_like(x) for _ in range(self.world)]
        self._run("all-gather", lambda: dist.all_gather(parts, x, group=self.group))
        return torch.cat(parts, dim=-1)[..., :full]

    def broadcast_tensor(self, x: torch.Tensor) -> torch.Tensor:
        """Rank 0's `x` on every rank (in place)."""
        self._run("broadcast", lambda: dist.broadcast(x, src=0, group=self.group))
        return x

    def broadcast_object(self, obj: Any = None) -> Any:
        """Rank 0's `obj` on every rank, over the control group."""
        box = [obj]
        self._run(
            "control message", lambda: dist.broadcast_object_list(box, src=0, group=self.control)
        )
        return box[0]

    def barrier(self) -> None:
        self._run("barrier", lambda: dist.barrier(group=self.control))


def timeout_seconds() -> float:
    raw = os.environ.get("LLAMA3_TP_TIMEOUT")
    try:
        return float(raw) if raw else DEFAULT_TIMEOUT_S
    except ValueError:
        raise TensorParallelError(
            f"LLAMA3_TP_TIMEOUT={raw!r} is not a number", "give seconds, e.g. 120"
        ) from None


def world_size_from_env() -> int:
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def current() -> TensorParallel | None:
    """This process's tensor-parallel context, once `init` ran (torchrun), else None."""
    return _current


def init(device: str | torch.device | None = None) -> TensorParallel:
    """Join the run torchrun started (or return the context already joined). CUDA ranks use
    NCCL on cuda:LOCAL_RANK; CPU ranks gloo."""
    global _current
    if _current is not None:
        return _current
    world = world_size_from_env()
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", str(rank)))
    want_cuda = torch.cuda.is_available() if device is None else torch.device(device).type == "cuda"
    if want_cuda:
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    else:
        dev = torch.device("cpu")
    timeout = timedelta(seconds=timeout_seconds())
    try:
        if not dist.is_initialized():
            dist.init_process_group(
                "nccl" if want_cuda else "gloo",
                timeout=timeout,
                **({"device_id": dev} if want_cuda else {}),
            )
        control = dist.new_group(backend="gloo", timeout=CONTROL_TIMEOUT)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise TensorParallelError(
            f"rank {rank} of {world} could not join the tensor-parallel run ({first})",
            "start every rank with torchrun (--nproc-per-node N; --nnodes/--rdzv-endpoint "
            "across machines) and check that MASTER_ADDR:MASTER_PORT is reachable",
        ) from None
    _current = TensorParallel(
        rank=dist.get_rank(), world=dist.get_world_size(), device=dev, control=control
    )
    return _current


def shutdown() -> None:
    """Leave the run (rank 0 first tells its followers to stop)."""
    global _current
    tp, _current = _current, None
    if tp is None:
        return
    if tp.driver is not None:
        tp.driver.close()
    if dist.is_initialized():
        try:
            dist.destroy_process_group()
        except Exception:  # a peer already gone: nothing left to tear down cleanly
            pass

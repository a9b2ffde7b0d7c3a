"""Data-parallel fine-tuning under torchrun: DDP over the LoRA matrices.

`--batch-size` (or `--batch-tokens`) stays the global micro-batch: every rank builds the same
data plan (a function of the seed), takes its contiguous share of each micro-batch's rows and
scales its loss sum by world / (labelled tokens of the whole optimizer step). DDP averages the
gradients over the ranks, so the update is the single-process one: the sum over every rank's
tokens divided by the step's label count, equal up to the order of the float additions.

Only the LoRA matrices are DDP's (broadcast from rank 0 at the start, all-reduced in buckets
during the backward); the frozen base is loaded by every rank and never sent. Rank 0 alone writes
checkpoints, metrics and the adapter; the logged loss and the Ctrl-C stop flag are summed over the
ranks every step so they all agree on what happened and when to stop.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ..errors import InvalidRequestError, TensorParallelError
from .data import Batch
from .forward import IGNORE, loss_sum


class LossModule(nn.Module):
    """`loss_sum` as a module's forward, so DDP can wrap it (its hooks run on `__call__`)."""

    def __init__(self, model: nn.Module, checkpointing: bool = False) -> None:
        super().__init__()
        self.model, self.checkpointing = model, checkpointing

    def forward(self, tokens, labels, positions=None, segments=None):
        return loss_sum(self.model, tokens, labels, positions, segments, self.checkpointing)


@dataclass
class DataParallel:
    """This process's place in the run (rank 0 of 1 without torchrun: every method a no-op)."""

    rank: int = 0
    world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def main(self) -> bool:
        return self.rank == 0

    def check_batch(self, batch_size: int, batch_tokens: int | None) -> None:
        """`--batch-size` sequences must split evenly over the ranks."""
        if self.world > 1 and batch_tokens is None and batch_size % self.world:
            raise InvalidRequestError(
                f"--batch-size {batch_size} cannot be split across {self.world} ranks",
                f"pass a multiple of {self.world} (it is the global batch; each rank takes "
                f"batch-size/{self.world} rows), or --batch-tokens",
            )

    def wrap(self, loss: LossModule) -> nn.Module:
        """`loss` under DDP with only its trainable parameters synchronised."""
        if self.world == 1:
            return loss
        from torch.nn.parallel import DistributedDataParallel as DDP

        trainable = {n for n, p in loss.named_parameters() if p.requires_grad}
        frozen = [n for n, _ in loss.named_parameters() if n not in trainable]
        frozen += [n for n, _ in loss.named_buffers()]
        DDP._set_params_and_buffers_to_ignore_for_model(loss, frozen)
        ids = [self.device.index] if self.device.type == "cuda" else None
        return self._run("DDP setup", lambda: DDP(loss, device_ids=ids, broadcast_buffers=False))

    def no_sync(self, ddp: nn.Module, sync: bool):
        """DDP's gradient all-reduce only on the step's last micro-batch."""
        return contextlib.nullcontext() if sync or self.world == 1 else ddp.no_sync()

    def shard(self, b: Batch) -> Batch:
        """This rank's contiguous rows of `b`, cut after their last labelled column (causal
        attention: later tokens change no loss). A rank left without rows gets one unlabelled
        row, so it still joins the all-reduce with a zero gradient."""
        if self.world == 1:
            return b
        k = -(-b.tokens.shape[0] // self.world)
        rows = slice(self.rank * k, (self.rank + 1) * k)
        labels = b.labels[rows]
        if labels.shape[0] == 0:
            return Batch(torch.zeros(1, 2, dtype=torch.long), torch.full((1, 2), IGNORE))
        cols = (labels != IGNORE).any(0).nonzero()
        end = max(2, int(cols[-1]) + 1) if len(cols) else 2
        cut = (rows, slice(0, end))
        opt = [None if t is None else t[cut] for t in (b.positions, b.segments)]
        return Batch(b.tokens[cut], labels[:, :end], *opt)

    def all_sum(self, values: list[float]) -> list[float]:
        if self.world == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self._comm_device)
        self._run("all-reduce", lambda: dist.all_reduce(t))
        return t.tolist()

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's `obj`, in rank order (on every rank)."""
        if self.world == 1:
            return [obj]
        out: list[Any] = [None] * self.world
        self._run("gather", lambda: dist.all_gather_object(out, obj))
        return out

    def barrier(self) -> None:
        if self.world > 1:
            self._run("barrier", dist.barrier)

    @property
    def _comm_device(self) -> torch.device:
        return self.device if self.device.type == "cuda" else torch.device("cpu")

    def _run(self, what: str, op):
        try:
            return op()
        except Exception as e:  # gloo/NCCL raise RuntimeError subclasses with long texts
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise TensorParallelError(
                f"data-parallel rank {self.rank} of {self.world}: {what} failed ({first})",
                "another rank stopped or was killed; its own output says why",
            ) from None


def init(device: str | None = None) -> DataParallel:
    """Join the torchrun job (gloo on CPU, NCCL on cuda:LOCAL_RANK), or a world of one."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    want_cuda = torch.cuda.is_available() if device is None else device.startswith("cuda")
    if world <= 1:
        return DataParallel(device=torch.device(device or ("cuda" if want_cuda else "cpu")))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", str(rank)))
    dev = torch.device("cuda", local) if want_cuda else torch.device("cpu")
    if want_cuda:
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        try:
            dist.init_process_group("nccl" if want_cuda else "gloo", timeout=timedelta(minutes=30))
        except Exception as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise TensorParallelError(
                f"rank {rank} of {world} could not join the data-parallel run ({first})",
                "start every rank with torchrun --nproc-per-node N -m llama3 finetune ...",
            ) from None
    return DataParallel(rank=dist.get_rank(), world=dist.get_world_size(), device=dev)


def shutdown() -> None:
    if dist.is_initialized():
        with contextlib.suppress(Exception):  # a peer already gone: nothing left to tidy
            dist.destroy_process_group()

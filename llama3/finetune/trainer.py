"""The supervised fine-tuning loop: AdamW over the LoRA matrices only, warm-up + cosine learning
rate, gradient accumulation, eval loss, metrics, atomic checkpoints and exact resume.

A checkpoint is a folder `checkpoint-NNNNNN/` holding the adapter (PEFT format, usable as it is)
and `trainer_state.pt` (optimizer, scheduler, RNG state, data position). It is written under a
temporary name and renamed when complete, so a run killed at any moment leaves whole checkpoints
only; `resume` continues from the newest and, on CPU, reaches the same weights bit for bit as a
run never interrupted (the data order of each epoch is a function of the seed and the epoch).
SIGINT (Ctrl-C) finishes the optimizer step under way, saves a checkpoint and stops.
Under torchrun the same loop runs data-parallel on every rank (`distributed`).
"""

from __future__ import annotations

import json
import math
import shutil
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..errors import InvalidRequestError, Llama3Error
from ..lora import (
    LoRAConfig,
    adapters,
    attach,
    read_adapter,
    save_adapter,
    trainable_parameters,
)
from ..model.transformer import Transformer
from ..utils.memory import release_freed_memory
from .data import Batch, Example, batches, epoch_order, groups, pack_rows
from .distributed import DataParallel, LossModule
from .forward import loss_sum

STATE = "trainer_state.pt"
#: settings a resumed run may change without changing what it computes
_FREE_ON_RESUME = ("save_every", "eval_every", "keep_checkpoints", "log_every")
METRICS = "metrics.jsonl"


class Interrupted(Llama3Error):
    """Training stopped on SIGINT after saving a checkpoint."""

    exit_code = 130


@dataclass(frozen=True)
class TrainConfig:
    lr: float = 2e-4
    warmup_steps: int = 0
    epochs: int = 1
    max_steps: int | None = None
    batch_size: int = 4
    #: micro-batches of at most this many (padded) tokens instead of `batch_size` sequences
    batch_tokens: int | None = None
    grad_accum: int = 1
    max_seq_len: int = 1024
    seed: int = 0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    save_every: int = 0
    eval_every: int = 0
    keep_checkpoints: int = 2
    packing: bool = False
    checkpointing: bool = False
    log_every: int = 1

    def __post_init__(self) -> None:
        for name in ("batch_size", "grad_accum", "epochs", "max_seq_len"):
            if getattr(self, name) < 1:
                flag = f"--{name.replace('_', '-')}"
                raise InvalidRequestError(f"{flag} must be 1 or more", f"pass {flag} 1 or more")
        if self.batch_tokens is not None and self.batch_tokens < 1:
            raise InvalidRequestError("--batch-tokens must be 1 or more", "--batch-tokens 4096")
        if self.max_steps is not None and self.max_steps < 1:
            raise InvalidRequestError("--max-steps must be 1 or more", "leave it out for epochs")
        if not self.lr > 0:
            raise InvalidRequestError(f"--lr must be positive, got {self.lr}", "--lr 2e-4")


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warm-up over `warmup` steps, then cosine decay to 0 at `total` (transformers')."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


class Trainer:
    def __init__(
        self,
        model: Transformer,
        lora: LoRAConfig,
        train: list[Example],
        cfg: TrainConfig,
        out: Path,
        *,
        eval_examples: list[Example] | None = None,
        log: Callable[[str], None] | None = None,
        dp: DataParallel | None = None,
    ) -> None:
        self.model, self.lora, self.train, self.cfg, self.out = model, lora, train, cfg, Path(out)
        self.eval_examples = eval_examples or []
        self.log = log or (lambda s: print(s, file=sys.stderr, flush=True))
        self.dp = dp or DataParallel(device=model.device)
        self.dp.check_batch(cfg.batch_size, cfg.batch_tokens)
        torch.manual_seed(cfg.seed)  # the LoRA init (and dropout after it) follow the seed
        attach(model, lora)
        if self.dp.rank:  # rank 0's init is broadcast; each rank's dropout masks its own
            torch.manual_seed(cfg.seed + 7919 * self.dp.rank)
        self.params = trainable_parameters(model)
        self.loss = self.dp.wrap(LossModule(model, cfg.checkpointing))
        self.optimizer = torch.optim.AdamW(
            self.params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.999)
        )
        self.total_steps = self._total_steps()
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, cfg.warmup_steps, self.total_steps)
        )
        self.step = 0
        self.epoch, self.index = 0, 0  # the next micro-batch: index into `epoch`'s batches
        self.tokens = 0
        self._stop = False

    # ---- the data plan --------------------------------------------------------------------------
    def _epoch_batches(self, epoch: int) -> list[Batch]:
        order = epoch_order(len(self.train), self.cfg.seed, epoch)
        return batches(
            [self.train[i] for i in order],
            self.cfg.batch_size,
            packing=self.cfg.packing,
            max_seq_len=self.cfg.max_seq_len,
            batch_tokens=self.cfg.batch_tokens,
        )

    def _total_steps(self) -> int:
        if self.cfg.max_steps is not None:
            return self.cfg.max_steps
        total, cfg = 0, self.cfg
        for e in range(cfg.epochs):
            exs = self.train
            if cfg.packing or cfg.batch_tokens:  # the grouping depends on the epoch's order
                exs = [self.train[i] for i in epoch_order(len(exs), cfg.seed, e)]
            items: list = list(exs)
            if cfg.packing:
                items = pack_rows(exs, cfg.max_seq_len)
            lengths = [sum(len(x.ids) for x in r) if cfg.packing else len(r.ids) for r in items]
            n = len(groups(items, lengths, cfg.batch_size, cfg.batch_tokens))
            total += math.ceil(n / cfg.grad_accum)
        return total

    # ---- checkpoints ----------------------------------------------------------------------------
    def checkpoints(self) -> list[Path]:
        return sorted(self.out.glob("checkpoint-[0-9]*[0-9]"))

    def save_checkpoint(self) -> Path:
        final = self.out / f"checkpoint-{self.step:06d}"
        tmp = self.out / f".checkpoint-{self.step:06d}.tmp"
        rngs = self.dp.gather(torch.get_rng_state())  # each rank's dropout stream
        if not self.dp.main:
            self.dp.barrier()  # rank 0 writes; the others wait for the folder to be whole
            return final
        shutil.rmtree(tmp, ignore_errors=True)
        save_adapter(self.model, tmp, self.lora)
        state = {
            "step": self.step,
            "epoch": self.epoch,
            "index": self.index,
            "tokens": self.tokens,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": rngs[0],
            "rng_ranks": rngs,
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None,
            "config": asdict(self.cfg),
        }
        torch.save(state, tmp / STATE)
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        for old in self.checkpoints()[: -self.cfg.keep_checkpoints]:
            shutil.rmtree(old, ignore_errors=True)
        self.dp.barrier()
        return final

    def resume(self) -> int | None:
        """Continue from the newest checkpoint in `out`; its step, or None without one."""
        found = self.checkpoints()
        if not found:
            return None
        ck = found[-1]
        state = torch.load(ck / STATE, map_location="cpu", weights_only=True)
        changed = [
            k
            for k, v in asdict(self.cfg).items()
            if k not in _FREE_ON_RESUME and state["config"].get(k) != v
        ]
        if changed:
            was = ", ".join(f"{k}={state['config'].get(k)!r}" for k in changed)
            raise InvalidRequestError(
                f"{ck} was written with other training settings ({was})",
                "resume with the flags of the run it came from, or start a new --out",
            )
        adapter = read_adapter(ck, self.model.params)
        with torch.no_grad():
            for name, lora in adapters(self.model).items():
                if name not in adapter.weights:
                    raise InvalidRequestError(
                        f"{ck} was trained with other LoRA targets",
                        "resume with the same --target/--lora-r, or start a new --out",
                    )
                a, b = adapter.weights[name]
                lora.A.copy_(a)
                lora.B.copy_(b)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        rngs = state.get("rng_ranks") or [state["rng"]]
        if self.dp.rank < len(rngs):  # a rank the run did not have keeps its seeded stream
            torch.set_rng_state(rngs[self.dp.rank])
        if state.get("cuda_rng") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        self.step, self.epoch, self.index = state["step"], state["epoch"], state["index"]
        self.tokens = state["tokens"]
        if self.dp.main:
            self._trim_metrics()
        return self.step

    def _trim_metrics(self) -> None:
        """Drop what a killed run logged after its last checkpoint (it is done again)."""
        f = self.out / METRICS
        if f.is_file():
            keep = [ln for ln in f.read_text().splitlines() if json.loads(ln)["step"] <= self.step]
            f.write_text("".join(ln + "\n" for ln in keep))

    # ---- the loop -------------------------------------------------------------------------------
    def eval_loss(self) -> float | None:
        if not self.eval_examples:
            return None
        self.model.eval()
        total, n = 0.0, 0
        with torch.no_grad():
            found = batches(self.eval_examples, self.cfg.batch_size, max_seq_len=10**9)
            for b in found[self.dp.rank :: self.dp.world]:  # each rank its share of batches
                dev = self.model.device
                s, k = loss_sum(self.model, b.tokens.to(dev), b.labels.to(dev))
                total, n = total + float(s), n + k
        total, n = self.dp.all_sum([total, n])
        return total / max(1, n)

    def _micro_step(self, b: Batch, n_total: int, sync: bool) -> float:
        """Forward and backward of this rank's share of `b`; its loss sum. `n_total` counts the
        labels of the whole step on all ranks (world x the mean DDP takes = their sum)."""
        b, dev = self.dp.shard(b), self.model.device
        opt = [None if t is None else t.to(dev) for t in (b.positions, b.segments)]
        with self.dp.no_sync(self.loss, sync):
            s, _ = self.loss(b.tokens.to(dev), b.labels.to(dev), *opt)
            (s * self.dp.world / n_total).backward()
        return float(s.detach())

    def run(self) -> Path:
        """Train to the end (or SIGINT) and write the final adapter into `out`."""
        self.out.mkdir(parents=True, exist_ok=True)
        previous = signal.getsignal(signal.SIGINT)
        try:
            signal.signal(signal.SIGINT, self._on_sigint)
        except ValueError:  # not the main thread: no Ctrl-C handling
            previous = None
        try:
            self._loop()
        finally:
            release_freed_memory()  # the activations' heap, once training is over
            if previous is not None:
                signal.signal(signal.SIGINT, previous)
        if self.dp.main:
            save_adapter(self.model, self.out, self.lora)
        self.dp.barrier()
        return self.out

    def _on_sigint(self, signum, frame) -> None:
        if self._stop:  # a second Ctrl-C: stop now, without the checkpoint
            raise KeyboardInterrupt
        self._stop = True
        self.log("interrupted: saving a checkpoint after this step (Ctrl-C again to quit now)")

    def _loop(self) -> None:
        cfg = self.cfg
        t0, start_step, start_tokens = time.perf_counter(), self.step, self.tokens
        epoch_batches = self._epoch_batches(self.epoch)
        while self.step < self.total_steps:
            if self.index >= len(epoch_batches):
                self.epoch, self.index = self.epoch + 1, 0
                epoch_batches = self._epoch_batches(self.epoch)
                continue
            group = epoch_batches[self.index : self.index + cfg.grad_accum]
            n_total = sum(b.n_labels for b in group)
            self.model.train()
            last_b = len(group) - 1
            total = sum(self._micro_step(b, n_total, i == last_b) for i, b in enumerate(group))
            if cfg.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(self.params, cfg.max_grad_norm)
            lr = self.optimizer.param_groups[0]["lr"]
            self.optimizer.step()
            self.scheduler.step()
            # no malloc_trim here: each step reuses the last one's freed heap, and handing it
            # back and faulting it in again cost ~10 % of a step (peak memory is the same)
            self.optimizer.zero_grad(set_to_none=True)
            self.model.eval()
            if self.dp.world > 1:  # every rank agrees on the loss and on stopping
                total, stops = self.dp.all_sum([total, float(self._stop)])
                self._stop = stops > 0
            self.step += 1
            self.index += len(group)
            self.tokens += sum(b.n_tokens for b in group)
            last = self.step == self.total_steps
            eval_loss = None
            if self.eval_examples and (
                last or (cfg.eval_every and self.step % cfg.eval_every == 0)
            ):
                eval_loss = self.eval_loss()
            elapsed = time.perf_counter() - t0
            rate = (self.tokens - start_tokens) / elapsed if elapsed > 0 else 0.0
            left = (self.total_steps - self.step) * elapsed / max(1, self.step - start_step)
            if self.dp.main:
                self._record(total / max(1, n_total), eval_loss, lr, rate, elapsed)
            if self.dp.main and (last or self.step % cfg.log_every == 0 or eval_loss is not None):
                ev = f" eval {eval_loss:.4f}" if eval_loss is not None else ""
                self.log(
                    f"step {self.step}/{self.total_steps} loss {total / max(1, n_total):.4f}{ev}"
                    f" lr {lr:.2e} {rate:.0f} tok/s ETA {_duration(left)}"
                )
            if self._stop or (cfg.save_every and self.step % cfg.save_every == 0 and not last):
                ck = self.save_checkpoint()
                if self._stop:
                    raise Interrupted(
                        f"stopped at step {self.step}; checkpoint saved in {ck}",
                        "run the same command with --resume to continue",
                    )

    def _record(self, loss, eval_loss, lr, rate, elapsed) -> None:
        rec = {"step": self.step, "loss": round(loss, 6), "lr": lr, "tokens": self.tokens}
        rec.update(tok_per_s=round(rate, 1), elapsed_s=round(elapsed, 3))
        if eval_loss is not None:
            rec["eval_loss"] = round(eval_loss, 6)
        with open(self.out / METRICS, "a") as f:
            f.write(json.dumps(rec) + "\n")


def _duration(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}h{s // 60 % 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"

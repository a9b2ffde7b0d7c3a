"""Meta's model-parallel layout for N shards: which rows or columns of each tensor shard r holds.

Column-parallel weights (output, tok_embeddings, w1/w3, wq/wk/wv) split on dim 0, row-parallel
ones (w2, wo) on the last dim, norms are replicated (`checkpoint.names.shard_dim`, SEEDS §1.5).
With more shards than kv heads, Meta repeats each kv head's rows on `N // n_kv_heads`
consecutive shards, so shard r holds kv head `r // rep` (the reader keeps `parts[::rep]`).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..checkpoint.names import shard_dim
from ..config import ModelArgs
from ..errors import InvalidRequestError

_KV = ("attention.wk.weight", "attention.wv.weight")


def _divisors(n: int) -> str:
    return ", ".join(str(d) for d in range(1, n + 1) if n % d == 0)


@dataclass(frozen=True)
class MetaShardPlan:
    args: ModelArgs
    world: int

    @classmethod
    def make(cls, args: ModelArgs, world: int) -> MetaShardPlan:
        """Check that `world` shards fit the model; raise InvalidRequestError naming both numbers."""

        def need(n: int, what: str) -> None:
            if n % world:
                raise InvalidRequestError(
                    f"--shards {world} does not divide {what} {n}",
                    f"use a shard count that divides {n} (one of {_divisors(n)})",
                )

        need(args.n_heads, "n_heads")
        if world <= args.kv_heads:
            need(args.kv_heads, "n_kv_heads")
        elif world % args.kv_heads:
            raise InvalidRequestError(
                f"--shards {world} is more than n_kv_heads {args.kv_heads} but not a multiple of it",
                f"kv heads are repeated across shards only by whole copies: use a multiple of "
                f"{args.kv_heads} (up to n_heads {args.n_heads}) or a divisor of {args.kv_heads}",
            )
        need(args.dim, "dim")
        need(args.hidden_dim, "the feed-forward hidden size")
        need(args.vocab_size, "vocab_size")
        return cls(args, world)

    @property
    def kv_repeats(self) -> int:
        """How many consecutive shards hold a copy of each kv head (1 = no repetition)."""
        return max(1, self.world // self.args.kv_heads)

    def cut(self, name: str, rank: int, shape: tuple[int, ...]) -> tuple[int, int, int] | None:
        """(dim, start, stop) of `name` (full shape `shape`) on shard `rank`; None = the whole."""
        if self.world == 1:
            return None
        dim = shard_dim(name)
        if dim is None:
            return None
        size = shape[dim]
        if name.endswith(_KV) and self.kv_repeats > 1:
            rows = size // self.args.kv_heads  # one kv head
            head = rank // self.kv_repeats
            return (0, head * rows, (head + 1) * rows)
        step = size // self.world
        return (dim, rank * step, (rank + 1) * step)

    def file_name(self, rank: int, aime: bool) -> str:
        if aime:
            return f"merged.{self.world}GPUs.{rank:02d}.pth"
        return f"consolidated.{rank:02d}.pth"

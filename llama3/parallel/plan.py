"""Which rows and columns of each weight one tensor-parallel rank holds (Meta's layout).

Column-parallel weights (wq/wk/wv, w1/w3, the token table and the output head) are split by
output rows; row-parallel weights (wo, w2) by input columns, their products summed across ranks.
When there are more ranks than kv heads, each kv head is repeated on consecutive ranks, as
Meta's model-parallel code requires. Pure arithmetic: no process group, no tensors.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from ..config import ModelArgs
from ..errors import ConfigError

_LAYER = re.compile(r"^layers\.\d+\.(.+)$")


@dataclass(frozen=True)
class ShardPlan:
    rank: int
    world: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    hidden: int
    vocab: int

    @classmethod
    def make(cls, args: ModelArgs, rank: int, world: int) -> ShardPlan:
        """The plan for `rank` of `world`; a world size the model cannot split is a ConfigError
        naming both numbers."""
        if world < 1 or not 0 <= rank < world:
            raise ConfigError(f"rank {rank} of world size {world}", "launch with torchrun")
        nh, nkv, hidden = args.n_heads, args.kv_heads, args.hidden_dim
        hint = "run on a number of ranks that divides it (torchrun --nproc-per-node N)"
        if nh % world:
            raise ConfigError(
                f"{world} tensor-parallel ranks do not divide the model's {nh} attention heads",
                hint,
            )
        if nkv % world and world % nkv:
            raise ConfigError(
                f"{world} tensor-parallel ranks and the model's {nkv} kv heads: neither divides "
                "the other (each rank needs whole kv heads, repeated when ranks outnumber them)",
                hint,
            )
        if hidden % world:
            raise ConfigError(
                f"{world} tensor-parallel ranks do not divide the feed-forward size {hidden}", hint
            )
        return cls(rank, world, nh, nkv, args.head_dim, hidden, args.vocab_size)

    # ---- sizes on this rank --------------------------------------------------------------------
    @property
    def local_heads(self) -> int:
        return self.n_heads // self.world

    @property
    def local_kv_heads(self) -> int:
        return max(1, self.n_kv_heads // self.world)

    @property
    def kv_head_start(self) -> int:
        """The first kv head this rank holds (ranks > kv heads: each head on world/n_kv ranks)."""
        if self.world <= self.n_kv_heads:
            return self.rank * self.local_kv_heads
        return self.rank // (self.world // self.n_kv_heads)

    def vocab_range(self, rank: int | None = None) -> tuple[int, int]:
        """Token-table rows of `rank` (default this one): even chunks, the last one shorter
        when the world size does not divide the vocabulary."""
        r = self.rank if rank is None else rank
        chunk = math.ceil(self.vocab / self.world)
        return min(self.vocab, r * chunk), min(self.vocab, (r + 1) * chunk)

    @property
    def vocab_chunk(self) -> int:
        return math.ceil(self.vocab / self.world)

    def local_args(self, args: ModelArgs) -> ModelArgs:
        """The config of this rank's layers: its heads, kv heads and feed-forward rows (the
        vocabulary stays global: token ids are checked against it)."""
        return args.replace(
            n_heads=self.local_heads,
            n_kv_heads=self.local_kv_heads,
            ffn_hidden_dim=self.hidden // self.world,
            head_dim_override=self.head_dim,
        )

    # ---- what to read --------------------------------------------------------------------------
    def cut(self, name: str) -> tuple[int, int, int] | None:
        """(dim, start, stop) of Meta-named tensor `name` on this rank; None = replicated."""
        hd, r = self.head_dim, self.rank
        q_rows = (r * self.local_heads * hd, (r + 1) * self.local_heads * hd)
        kv = self.kv_head_start
        kv_rows = (kv * hd, (kv + self.local_kv_heads) * hd)
        h = self.hidden // self.world
        f_rows = (r * h, (r + 1) * h)
        if name in ("tok_embeddings.weight", "output.weight"):
            return (0, *self.vocab_range())
        m = _LAYER.match(name)
        leaf = m.group(1) if m else ""
        return {
            "attention.wq.weight": (0, *q_rows),
            "attention.wk.weight": (0, *kv_rows),
            "attention.wv.weight": (0, *kv_rows),
            "attention.wo.weight": (-1, *q_rows),
            "feed_forward.w1.weight": (0, *f_rows),
            "feed_forward.w3.weight": (0, *f_rows),
            "feed_forward.w2.weight": (-1, *f_rows),
        }.get(leaf)

"""ModelRunner: turns a `SchedulerOutput` into one forward pass over a flat batch of tokens.

The only engine module that touches tensors. Every scheduled sequence contributes its new tokens
(a decode token or a prompt chunk) to one row; positions, KV slots and per-sequence key slots come
from the block manager. Logits are computed only where a next token is sampled.
"""

from __future__ import annotations

import torch

from ..model.paged_cache import PagedBatch, PagedKVPool, Segment
from ..model.transformer import Transformer
from .block_manager import BlockManager
from .scheduler import SchedulerOutput


class ModelRunner:
    def __init__(self, model: Transformer, pool: PagedKVPool, block_manager: BlockManager) -> None:
        self.model, self.pool, self.block_manager = model, pool, block_manager
        self.device = model.tok_embeddings.weight.device

    def run(self, out: SchedulerOutput) -> torch.Tensor:
        """Logits (n_sampled, vocab), one row per scheduled entry with `sample`, in schedule order."""
        bm, dev = self.block_manager, self.device
        tokens: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        segments: list[Segment] = []
        sample_rows: list[int] = []
        for s in out.scheduled:
            seq, start, n = s.seq, s.start, s.num_new_tokens
            q_start = len(tokens)
            tokens += seq.token_ids[start : start + n]
            positions += range(start, start + n)
            slots += bm.slots(seq, start, start + n)
            key_slots = torch.tensor(bm.slots(seq, 0, start + n), dtype=torch.long, device=dev)
            segments.append(Segment(q_start, n, key_slots))
            if s.sample:
                sample_rows.append(q_start + n - 1)
        batch = PagedBatch(self.pool, torch.tensor(slots, dtype=torch.long, device=dev), segments)
        logits = self.model(
            torch.tensor([tokens], dtype=torch.long, device=dev),
            cache=batch,
            positions=torch.tensor(positions, dtype=torch.long, device=dev),
            logits_indices=torch.tensor(sample_rows, dtype=torch.long, device=dev),
        )
        return logits[0]

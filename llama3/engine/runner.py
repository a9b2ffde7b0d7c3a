"""ModelRunner: turns a `SchedulerOutput` into one forward pass over a flat batch of tokens.

The only engine module that touches tensors. Every scheduled sequence contributes its new tokens
(a decode token or a prompt chunk) to one row; positions, KV slots and per-sequence key slots come
from the block manager. Logits are computed only where a next token is sampled.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import TYPE_CHECKING

import torch

from ..model import native_decode
from ..model.paged_cache import PagedBatch, PagedKVPool, Segment
from ..model.transformer import Transformer
from .block_manager import BlockManager
from .scheduler import ScheduledSeq, SchedulerOutput

if TYPE_CHECKING:
    from ..lora.multi import LoRABank


class ModelRunner:
    def __init__(
        self,
        model: Transformer,
        pool: PagedKVPool,
        block_manager: BlockManager,
        lora: LoRABank | None = None,
    ) -> None:
        self.model, self.pool, self.block_manager = model, pool, block_manager
        self.device = model.device
        #: the adapters sequences may run with (`Sequence.lora_id`), if any
        self.lora = lora

    def run(
        self, out: SchedulerOutput
    ) -> tuple[torch.Tensor, dict[object, tuple[int, torch.Tensor]]]:
        """Logits (n_sampled, vocab), one row per scheduled entry with `sample`, in schedule order;
        and for sequences that want prompt logprobs, {seq_id: (first position, logits of the
        chunk's prompt positions that predict another prompt token)}.

        Where the native layer stack takes decode-only steps, a step's decode rows and its prompt
        chunks run as two passes: a decode then gets the same bits whether or not its step also
        held someone's prompt (the stack and the modules agree only to ~1e-4), so a greedy answer
        never depends on what it was batched with."""
        entries = list(out.scheduled)
        decodes, prompts = [], []
        for s in entries:
            (decodes if _is_decode(s) else prompts).append(s)
        if not decodes or not prompts or not self._native_decodes():
            return self._forward(entries)
        (dl, dp), (pl, pp) = self._forward(decodes), self._forward(prompts)
        # the passes' sampled rows (decodes', then prompts'), back in schedule order
        row = {id(s): i for i, s in enumerate(s for s in decodes + prompts if s.sample)}
        order = [row[id(s)] for s in entries if s.sample]
        logits = torch.cat([dl, pl])[torch.tensor(order, dtype=torch.long, device=dl.device)]
        return logits, dp | pp

    def _native_decodes(self) -> bool:
        return self.pool.native and native_decode.eligible(self.model)

    def _forward(
        self, entries: list[ScheduledSeq]
    ) -> tuple[torch.Tensor, dict[object, tuple[int, torch.Tensor]]]:
        """`run` for these scheduled entries as one flat batch."""
        bm, dev = self.block_manager, self.device
        tokens: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        segments: list[Segment] = []
        sample_rows: list[int] = []
        prompt_rows: list[tuple[object, int, int, int]] = []  # (seq id, first pos, row, count)
        for s in entries:
            seq, start, n = s.seq, s.start, s.num_new_tokens
            q_start = len(tokens)
            tokens += seq.token_ids[start : start + n]
            positions += range(start, start + n)
            slots += bm.slots(seq, start, start + n)
            key_slots = torch.tensor(bm.slots(seq, 0, start + n), dtype=torch.long, device=dev)
            segments.append(Segment(q_start, n, key_slots, _is_decode(s)))
            if s.sample:
                sample_rows.append(q_start + n - 1)
            if seq.prompt_logprobs:
                # positions p < num_prompt_tokens - 1 predict prompt token p + 1
                k = min(start + n, seq.num_prompt_tokens - 1) - start
                if k > 0:
                    prompt_rows.append((seq.seq_id, start, q_start, k))
        batch = PagedBatch(self.pool, torch.tensor(slots, dtype=torch.long, device=dev), segments)
        extra = [r for _, _, q, k in prompt_rows for r in range(q, q + k)]
        routed = nullcontext()
        if self.lora is not None and self.lora.loaded:  # else: not one extra op
            routed = self.lora.route([(s.seq.lora_id, s.num_new_tokens) for s in entries])
        with routed:
            logits = self.model(
                torch.tensor([tokens], dtype=torch.long, device=dev),
                cache=batch,
                positions=torch.tensor(positions, dtype=torch.long, device=dev),
                logits_indices=torch.tensor(sample_rows + extra, dtype=torch.long, device=dev),
            )[0]
        prompt: dict[object, tuple[int, torch.Tensor]] = {}
        at = len(sample_rows)
        for sid, first, _, k in prompt_rows:
            prompt[sid] = (first, logits[at : at + k])
            at += k
        return logits[: len(sample_rows)], prompt


def _is_decode(s: ScheduledSeq) -> bool:
    """A generated token fed back (one token past the prompt), not a prompt's last token left
    alone by a prefix-cache hit or a chunk boundary."""
    return s.num_new_tokens == 1 and s.start >= s.seq.num_prompt_tokens

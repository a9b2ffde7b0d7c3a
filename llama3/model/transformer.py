"""The Llama 3 architecture with Meta's parameter names: pure architecture, no cache ownership.

`Transformer.forward(tokens, start_pos, cache)` mirrors Meta's signature; the key/value cache is passed
in by the caller, so the model can be built on the meta device and its weights assigned from a
memory-mapped checkpoint without a second copy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from ..parallel.group import TensorParallel
    from ..parallel.plan import ShardPlan

from .. import kernels
from ..config import ModelArgs
from ..quant import bf16_rows
from . import native_decode
from .attention import causal_attention
from .kv_cache import KVCache
from .linear import Linear
from .paged_cache import PagedBatch
from .rope import apply_rope, inverse_frequencies, rope_cos_sin


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if kernels.native_elementwise(x, self.weight):  # one pass instead of ~6 ops
            return torch.ops.llama3_kernels.rms_norm(x, self.weight, self.eps)
        # Normalise in float32 (half-precision sums of squares lose too much), as Meta does.
        xf = x.float()
        out = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return out.type_as(x) * self.weight

    def bf16(
        self, x: torch.Tensor, residual: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(h, this norm of h rounded to bfloat16), h = x + residual (x without one), in one
        native pass: for inputs of bfloat16 products (`TransformerBlock.bf16_inputs`)."""
        return torch.ops.llama3_kernels.rms_norm_bf16(x, residual, self.weight, self.eps)


def _float_product(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """layer(x) for the residual stream: bfloat16 rows (a norm's `bf16` output on the prompt
    path) reach a quantized layer as they are and come back float32 (`float_product`)."""
    if x.dtype == torch.bfloat16 and isinstance(layer, bf16_rows.PromptProducts):
        return layer.float_product(x)
    return layer(x)


class Attention(nn.Module):
    def __init__(self, args: ModelArgs, layer_id: int) -> None:
        super().__init__()
        self.layer_id = layer_id
        self.n_heads = args.n_heads
        self.n_kv_heads = args.kv_heads
        self.head_dim = args.head_dim
        self.wq = Linear(args.dim, self.n_heads * self.head_dim, bias=False)
        self.wk = Linear(args.dim, self.n_kv_heads * self.head_dim, bias=False)
        self.wv = Linear(args.dim, self.n_kv_heads * self.head_dim, bias=False)
        self.wo = Linear(self.n_heads * self.head_dim, args.dim, bias=False)
        #: q, k and v in one product, when a quantizer fused them (then wq/wk/wv are gone)
        self.wqkv: nn.Module | None = None
        #: set by quantization: prompts attend in bfloat16 where their products run in it (CPUs
        #: with AMX, `quant.bf16_rows`); float models keep float32 (their logits match HF's)
        self.bf16_prompts = False
        #: tensor parallelism: this rank's heads only; the products of wo are summed over ranks
        self.tp: TensorParallel | None = None

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        start_pos: int,
        cache: KVCache | PagedBatch | None,
    ) -> torch.Tensor:
        bsz, seqlen, _ = x.shape
        if self.wqkv is not None:
            kv = self.n_kv_heads * self.head_dim
            qkv = _float_product(self.wqkv, x)
            q, k, v = qkv.split([self.n_heads * self.head_dim, kv, kv], dim=-1)
        else:
            q, k, v = self.wq(x), self.wk(x), self.wv(x)
        q = q.reshape(bsz, seqlen, self.n_heads, self.head_dim)
        k = k.reshape(bsz, seqlen, self.n_kv_heads, self.head_dim)
        v = v.reshape(bsz, seqlen, self.n_kv_heads, self.head_dim)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        # (bsz, heads, seqlen, head_dim) for SDPA
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        if self.bf16_prompts and bf16_rows.attention_applies(q, cache):
            # bfloat16 queries: the AMX attention kernel (or SDPA, converting the keys and values
            # to them; the cache keeps its own dtype) runs 3-4x faster than float32 SDPA
            q = q.to(torch.bfloat16)
        if cache is None:
            out = causal_attention(q, k, v)
        else:
            out = cache.attend(self.layer_id, start_pos, q, k, v)
        # bfloat16 x (the prompt path): bfloat16 rows in, what the product rounds to anyway
        out = _float_product(self.wo, out.transpose(1, 2).reshape(bsz, seqlen, -1).to(x.dtype))
        return out if self.tp is None else self.tp.all_reduce(out)


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.w1 = Linear(dim, hidden_dim, bias=False)
        self.w2 = Linear(hidden_dim, dim, bias=False)
        self.w3 = Linear(dim, hidden_dim, bias=False)
        #: w1 and w3 in one product, when a quantizer fused them (then w1/w3 are gone)
        self.w13: nn.Module | None = None
        #: tensor parallelism: this rank's hidden rows only; w2's products are summed over ranks
        self.tp: TensorParallel | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self._local(x)
        return out if self.tp is None else self.tp.all_reduce(out)

    def _local(self, x: torch.Tensor) -> torch.Tensor:
        if self.w13 is not None:
            # quantized layers on AMX CPUs: a prompt's SwiGLU stays bfloat16 between products
            if isinstance(self.w13, bf16_rows.PromptProducts) and isinstance(
                self.w2, bf16_rows.PromptProducts
            ):
                hidden = self.w13.prompt_swiglu(x)
                if hidden is not None:
                    return self.w2.float_product(hidden)
            gate, up = _float_product(self.w13, x).chunk(2, dim=-1)
            return self.w2(F.silu(gate) * up)
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class TransformerBlock(nn.Module):
    def __init__(self, layer_id: int, args: ModelArgs) -> None:
        super().__init__()
        self.attention = Attention(args, layer_id)
        self.feed_forward = FeedForward(args.dim, args.hidden_dim)
        self.attention_norm = RMSNorm(args.dim, eps=args.norm_eps)
        self.ffn_norm = RMSNorm(args.dim, eps=args.norm_eps)

    def forward(
        self, x, cos, sin, start_pos: int, cache: KVCache | PagedBatch | None
    ) -> torch.Tensor:
        if self.bf16_inputs(x):
            # the norms hand their products bfloat16 rows (which those products would round
            # their input to anyway) and the first residual add joins the second norm: the same
            # values as below, in one pass where there were three
            _, normed = self.attention_norm.bf16(x)
            h, normed = self.ffn_norm.bf16(x, self.attention(normed, cos, sin, start_pos, cache))
            return h + self.feed_forward(normed)
        h = x + self.attention(self.attention_norm(x), cos, sin, start_pos, cache)
        return h + self.feed_forward(self.ffn_norm(h))

    def bf16_inputs(self, x: torch.Tensor) -> bool:
        """Whether this layer's products take `x` (a prompt chunk) in bfloat16: a quantized
        layer with fused projections on a CPU with AMX (`quant.bf16_rows`), the kernels loaded,
        not under autograd (fine-tuning wraps layers this path does not know)."""
        att, ff = self.attention, self.feed_forward
        return (
            att.bf16_prompts
            and not torch.is_grad_enabled()
            and all(
                isinstance(p, bf16_rows.PromptProducts) for p in (att.wqkv, att.wo, ff.w13, ff.w2)
            )
            and kernels.native_elementwise(x, self.attention_norm.weight, self.ffn_norm.weight)
            and bf16_rows.applies(x.reshape(-1, x.shape[-1]))
        )


def _embedding(vocab_size: int, dim: int) -> nn.Embedding:
    """nn.Embedding, without its random init when built on the meta device (a model about to be
    loaded): there it would only import torch._dynamo (see `Linear.reset_parameters`)."""
    table = torch.empty(vocab_size, dim)
    if table.is_meta:
        return nn.Embedding(vocab_size, dim, _weight=table)
    return nn.Embedding(vocab_size, dim)


class Transformer(nn.Module):
    def __init__(self, params: ModelArgs, shard: ShardPlan | None = None) -> None:
        """`shard`: one tensor-parallel rank's part (then `params` is `shard.local_args`): the
        token table and the head hold that rank's vocabulary rows (`attach_tp`)."""
        super().__init__()
        self.params = params
        self.vocab_size = params.vocab_size
        self.n_layers = params.n_layers
        self.shard = shard
        rows = (
            params.vocab_size if shard is None else shard.vocab_range()[1] - shard.vocab_range()[0]
        )
        self.tok_embeddings = _embedding(rows, params.dim)
        self.layers = nn.ModuleList(TransformerBlock(i, params) for i in range(params.n_layers))
        self.norm = RMSNorm(params.dim, eps=params.norm_eps)
        self.output = Linear(params.dim, rows, bias=False)
        #: the tensor-parallel run this model is one rank of (`attach_tp`), else None
        self.tp: TensorParallel | None = None
        # Per-frequency divisors from GGUF `rope_freqs.weight` (Llama 3.1 GGUFs), if any.
        self.rope_freq_factors: torch.Tensor | None = None
        self._inv_freq: torch.Tensor | None = None
        #: whether decode steps run the native layer kernel (native_decode.eligible decides)
        self._native_decode: bool | None = None
        self._native_weights: list[tuple] | None = None  # each layer's tensors, when native
        #: decode steps the native kernel ran (read by tests and the serving engine's checks)
        self.native_steps = 0
        #: set by `lora.multi.LoRABank.route` while a step has rows for a served adapter: the
        #: native kernel reads the base weights only, so those steps take the module path
        self._adapter_rows = False

    @property
    def device(self) -> torch.device:
        """Where the model runs (its final norm's device; embeddings may be int8)."""
        return self.norm.weight.device

    @property
    def dtype(self) -> torch.dtype:
        """The dtype activations and caches use (the final norm's; embeddings may be int8)."""
        return self.norm.weight.dtype

    def attach_tp(self, tp: TensorParallel) -> None:
        """Make this shard one rank of `tp`: sums after wo and w2, the vocab-parallel token
        table and head, and (on a driving rank 0) each call announced to the followers."""
        self.tp = tp
        self._native_decode = None  # decided again: the native step cannot reduce
        for layer in self.layers:
            layer.attention.tp = tp
            layer.feed_forward.tp = tp

    def _embed(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.tp is None or self.shard is None:
            return self.tok_embeddings(tokens)
        lo, hi = self.shard.vocab_range()
        local = tokens - lo
        inside = (local >= 0) & (local < hi - lo)
        h = self.tok_embeddings(torch.where(inside, local, torch.zeros_like(local)))
        # each id's row lives on one rank: the others add exact zeros
        return self.tp.all_reduce(h.masked_fill(~inside.unsqueeze(-1), 0))

    def _head(self, h: torch.Tensor) -> torch.Tensor:
        logits = self.output(self.norm(h))
        if self.tp is None or self.shard is None:
            return logits
        return self.tp.gather_last(logits, self.vocab_size, self.shard.vocab_chunk)

    def tie_weights(self) -> None:
        """Share the output projection with the embedding (Llama 3.2 1B/3B, SmolLM2)."""
        self.output.weight = self.tok_embeddings.weight

    def inv_freq(self, device: torch.device) -> torch.Tensor:
        if self._inv_freq is None or self._inv_freq.device != device:
            p = self.params
            self._inv_freq = inverse_frequencies(
                p.head_dim, p.rope_theta, p.rope_scaling, self.rope_freq_factors
            ).to(device)
        return self._inv_freq

    @torch.inference_mode()
    def forward(
        self,
        tokens: torch.Tensor,
        start_pos: int = 0,
        cache: KVCache | PagedBatch | None = None,
        *,
        last_only: bool = False,
        positions: torch.Tensor | None = None,
        logits_indices: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits (float32) for `tokens` (bsz, seqlen) placed at positions start_pos.. .

        `positions` overrides the positions per token (the engine's flat batches of several
        sequences). Logits are computed for every position, only the last (`last_only`, shape
        (bsz, 1, vocab)), or only at `logits_indices` along the sequence dim.
        """
        return self.logits(
            tokens,
            start_pos,
            cache,
            last_only=last_only,
            positions=positions,
            logits_indices=logits_indices,
        )

    def logits(
        self,
        tokens: torch.Tensor,
        start_pos: int | torch.Tensor = 0,
        cache: KVCache | PagedBatch | None = None,
        *,
        last_only: bool = False,
        positions: torch.Tensor | None = None,
        logits_indices: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """`forward` without entering inference mode (torch.compile traces this under no_grad)."""
        if self.tp is not None and self.tp.driver is not None:
            self.tp.driver.announce(tokens, start_pos, cache, last_only, positions, logits_indices)
        seqlen = tokens.shape[1]
        if positions is None:
            positions = torch.arange(start_pos, start_pos + seqlen, device=tokens.device)
        fused = False  # whether h already holds logits (the native step ran the head)
        if native_decode.usable(self, cache, tokens, positions):
            h, fused = native_decode.decode(self, tokens, positions, cache)
        else:
            cos, sin = rope_cos_sin(self.inv_freq(tokens.device), positions)
            h = self._embed(tokens)
            # A serving step's rows are whatever was batched with whom: its prompt rows keep
            # the kernels a lone request takes, so batching never changes a token.
            with bf16_rows.batch_invariant(isinstance(cache, PagedBatch)):
                for layer in self.layers:
                    h = layer(h, cos, sin, start_pos, cache)
        if logits_indices is not None:
            h = h[:, logits_indices]
        elif last_only:
            h = h[:, -1:]
        return (h if fused else self._head(h)).float()

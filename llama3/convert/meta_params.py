"""Meta's params.json for a model read from any format.

Meta states the feed-forward size indirectly (multiple_of, ffn_dim_multiplier, from 4*dim); Hugging
Face and GGUF state it directly. A pair that reproduces the stated size is searched for, trying the
published Llama 3 values first, so an 8B model gets 1024 / 1.3 as in Meta's own file.
"""

from __future__ import annotations

from typing import Any

from ..config import ModelArgs, RopeScaling
from ..errors import InvalidRequestError

_MULTIPLIERS: tuple[float | None, ...] = (1.3, 1.2, 1.5, 1.0, None, 1.25, 1.1, 1.4, 2.0)
_MULTIPLE_OF = (1024, 4096, 256, 512, 2048, 128, 64, 32, 16, 8, 4, 2, 1)


def meta_params(args: ModelArgs) -> dict[str, Any]:
    if args.head_dim_override is not None:
        raise InvalidRequestError(
            f"head_dim {args.head_dim} is not dim / n_heads, which Meta's params.json cannot say",
            "convert this model to --to hf or --to gguf instead",
        )
    multiple_of, multiplier = _ffn_rule(args)
    params: dict[str, Any] = {
        "dim": args.dim,
        "n_layers": args.n_layers,
        "n_heads": args.n_heads,
        "n_kv_heads": args.kv_heads,
        "vocab_size": args.vocab_size,
        "multiple_of": multiple_of,
        "ffn_dim_multiplier": multiplier,
        "norm_eps": args.norm_eps,
        "rope_theta": args.rope_theta,
    }
    s = args.rope_scaling
    if s is not None:
        default = RopeScaling()
        if (s.low_freq_factor, s.high_freq_factor, s.original_max_position_embeddings) != (
            default.low_freq_factor,
            default.high_freq_factor,
            default.original_max_position_embeddings,
        ):
            raise InvalidRequestError(
                "the model's RoPE scaling has low/high frequency factors or an original context "
                "other than Llama 3.1's (1, 4, 8192), which Meta's params.json cannot say",
                "convert this model to --to hf or --to gguf instead",
            )
        params["use_scaled_rope"] = True
        if s.factor != default.factor:
            params["rope_scaling_factor"] = s.factor
    return params


def _ffn_rule(args: ModelArgs) -> tuple[int, float | None]:
    if args.ffn_hidden_dim is None:
        return args.multiple_of, args.ffn_dim_multiplier
    own = args.replace(ffn_hidden_dim=None)
    if own.hidden_dim == args.hidden_dim:
        return own.multiple_of, own.ffn_dim_multiplier
    for multiplier in _MULTIPLIERS:
        for multiple_of in _MULTIPLE_OF:
            trial = args.replace(
                ffn_hidden_dim=None, multiple_of=multiple_of, ffn_dim_multiplier=multiplier
            )
            if trial.hidden_dim == args.hidden_dim:
                return multiple_of, multiplier
    # Any size is reachable with multiple_of 1 and the exact ratio (up to float rounding).
    h0 = int(2 * (4 * args.dim) / 3)
    for multiplier in (args.hidden_dim / h0, (args.hidden_dim + 0.5) / h0):
        trial = args.replace(ffn_hidden_dim=None, multiple_of=1, ffn_dim_multiplier=multiplier)
        if trial.hidden_dim == args.hidden_dim:
            return 1, multiplier
    raise InvalidRequestError(
        f"no multiple_of / ffn_dim_multiplier gives the feed-forward size {args.hidden_dim}",
        "convert this model to --to hf or --to gguf instead",
    )

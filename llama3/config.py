"""Model architecture configuration: one frozen dataclass with one constructor per source.

`ModelArgs` keeps Meta's `params.json` field names. Derived sizes (head_dim, the SwiGLU hidden size,
n_rep) are computed here and nowhere else. Runtime knobs (max_seq_len, batch size, device) are not
part of the architecture and live with the caller.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError


@dataclass(frozen=True)
class RopeScaling:
    """Llama 3.1 frequency scaling (`use_scaled_rope`, HF `rope_type: "llama3"`)."""

    factor: float = 8.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192


@dataclass(frozen=True)
class ModelArgs:
    dim: int = 4096
    n_layers: int = 32
    n_heads: int = 32
    n_kv_heads: int | None = None
    vocab_size: int = -1
    multiple_of: int = 256
    ffn_dim_multiplier: float | None = None
    norm_eps: float = 1e-5
    rope_theta: float = 500000.0
    use_scaled_rope: bool = False
    rope_scaling: RopeScaling | None = None
    # Explicit sizes from sources that state them (HF intermediate_size, GGUF feed_forward_length);
    # None means "derive by Meta's rule".
    ffn_hidden_dim: int | None = None
    head_dim_override: int | None = None
    tie_word_embeddings: bool = False
    # The context length the model was trained for (not a runtime allocation size).
    max_position_embeddings: int = 8192
    # Kept for Meta's `ModelArgs(max_seq_len=..., max_batch_size=..., **params)` call pattern.
    max_batch_size: int = 32
    max_seq_len: int = 2048

    def __post_init__(self) -> None:
        if self.use_scaled_rope and self.rope_scaling is None:
            object.__setattr__(self, "rope_scaling", RopeScaling())
        self.validate()

    # ---- derived sizes -------------------------------------------------------------------------
    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads if self.n_kv_heads is not None else self.n_heads

    @property
    def head_dim(self) -> int:
        return self.head_dim_override or self.dim // self.n_heads

    @property
    def n_rep(self) -> int:
        return self.n_heads // self.kv_heads

    @property
    def hidden_dim(self) -> int:
        """SwiGLU hidden size: Meta's rule from 4*dim, unless the source states it."""
        if self.ffn_hidden_dim is not None:
            return self.ffn_hidden_dim
        h = int(2 * (4 * self.dim) / 3)
        if self.ffn_dim_multiplier is not None:
            h = int(self.ffn_dim_multiplier * h)
        return self.multiple_of * ((h + self.multiple_of - 1) // self.multiple_of)

    def num_parameters(self) -> int:
        d, hd = self.dim, self.head_dim
        attn = d * self.n_heads * hd * 2 + d * self.kv_heads * hd * 2
        ffn = 3 * d * self.hidden_dim
        per_layer = attn + ffn + 2 * d
        emb = self.vocab_size * d
        return self.n_layers * per_layer + emb * (1 if self.tie_word_embeddings else 2) + d

    def kv_bytes_per_token(self, dtype_bytes: int) -> int:
        return 2 * self.n_layers * self.kv_heads * self.head_dim * dtype_bytes

    def validate(self) -> None:
        def bad(msg: str, hint: str) -> ConfigError:
            return ConfigError(msg, hint)

        for name in ("dim", "n_layers", "n_heads"):
            if getattr(self, name) <= 0:
                raise bad(f"{name} must be positive, got {getattr(self, name)}", "fix the config")
        if self.vocab_size <= 0:
            raise bad(
                f"vocab_size must be positive, got {self.vocab_size}",
                "set vocab_size in params.json (128256 for Llama 3)",
            )
        if self.head_dim_override is None and self.dim % self.n_heads:
            raise bad(
                f"dim {self.dim} is not divisible by n_heads {self.n_heads}", "fix the config"
            )
        if self.n_heads % self.kv_heads:
            raise bad(
                f"n_heads {self.n_heads} is not a multiple of n_kv_heads {self.kv_heads}",
                "grouped-query attention needs n_heads divisible by n_kv_heads",
            )
        if self.head_dim % 2:
            raise bad(f"head_dim {self.head_dim} must be even for RoPE", "fix the config")

    # ---- constructors ---------------------------------------------------------------------------
    @classmethod
    def from_meta_params(cls, params: Mapping[str, Any], **overrides: Any) -> ModelArgs:
        """From Meta's params.json. Unknown keys are ignored (newer releases add fields)."""
        known = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in params.items() if k in known and k != "rope_scaling"}
        if "vocab_size" not in params:
            raise ConfigError(
                "params.json has no vocab_size",
                'add "vocab_size": 128256 for Llama 3 checkpoints',
            )
        scaled = bool(params.get("use_scaled_rope", False))
        kw["use_scaled_rope"] = scaled
        if scaled:
            # 3.2 1B/3B ship rope_scaling_factor 32 in newer params; the default is 3.1's 8.
            factor = float(params.get("rope_scaling_factor", params.get("scale_factor", 8.0)))
            kw["rope_scaling"] = RopeScaling(factor=factor)
            kw.setdefault("max_position_embeddings", 131072)
        kw.update(overrides)
        return cls(**kw)

    @classmethod
    def from_hf_config(cls, cfg: Mapping[str, Any]) -> ModelArgs:
        """From a Hugging Face LlamaForCausalLM config.json."""
        archs = cfg.get("architectures") or []
        model_type = cfg.get("model_type")
        if model_type not in (None, "llama") and "LlamaForCausalLM" not in archs:
            raise ConfigError(
                f"config.json describes a '{model_type}' model ({', '.join(archs) or 'no architectures'})",
                "only Llama-architecture models (LlamaForCausalLM) are supported",
            )
        try:
            n_heads = int(cfg["num_attention_heads"])
            dim = int(cfg["hidden_size"])
            args: dict[str, Any] = dict(
                dim=dim,
                n_layers=int(cfg["num_hidden_layers"]),
                n_heads=n_heads,
                n_kv_heads=int(cfg.get("num_key_value_heads") or n_heads),
                vocab_size=int(cfg["vocab_size"]),
                ffn_hidden_dim=int(cfg["intermediate_size"]),
                norm_eps=float(cfg.get("rms_norm_eps", 1e-5)),
                tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
                max_position_embeddings=int(cfg.get("max_position_embeddings", 8192)),
            )
        except KeyError as e:
            raise ConfigError(
                f"config.json has no {e.args[0]}", "use a complete LlamaForCausalLM config"
            ) from None
        hd = cfg.get("head_dim")
        if hd is not None and int(hd) != dim // n_heads:
            args["head_dim_override"] = int(hd)
        if cfg.get("attention_bias") or cfg.get("mlp_bias"):
            raise ConfigError(
                "config.json enables attention or MLP biases",
                "Llama 3 has no biases; this model is not supported",
            )
        # Classic configs carry rope_theta + rope_scaling; transformers >= 5 writes rope_parameters.
        rp = cfg.get("rope_parameters") or {}
        args["rope_theta"] = float(rp.get("rope_theta", cfg.get("rope_theta", 10000.0)))
        rs = cfg.get("rope_scaling") or rp
        if rs:
            rtype = rs.get("rope_type", rs.get("type"))
            if rtype == "llama3":
                args["use_scaled_rope"] = True
                args["rope_scaling"] = RopeScaling(
                    factor=float(rs["factor"]),
                    low_freq_factor=float(rs.get("low_freq_factor", 1.0)),
                    high_freq_factor=float(rs.get("high_freq_factor", 4.0)),
                    original_max_position_embeddings=int(
                        rs.get("original_max_position_embeddings", 8192)
                    ),
                )
            elif rtype not in (None, "default"):
                raise ConfigError(
                    f"rope_scaling type '{rtype}' is not supported",
                    "supported: none or 'llama3' (Llama 3.1+ frequency scaling)",
                )
        return cls(**args)

    @classmethod
    def from_gguf_metadata(cls, md: Mapping[str, Any], n_vocab: int | None = None) -> ModelArgs:
        """From GGUF key/value metadata (`general.architecture == "llama"`)."""
        arch = md.get("general.architecture")
        if arch != "llama":
            raise ConfigError(
                f"the GGUF file holds a '{arch}' model",
                "only general.architecture 'llama' GGUF files are supported",
            )

        def get(key: str, default: Any = None) -> Any:
            v = md.get(f"llama.{key}", default)
            if v is None:
                raise ConfigError(
                    f"GGUF metadata has no llama.{key}",
                    "re-convert the model with a current llama.cpp",
                )
            return v

        n_heads = int(get("attention.head_count"))
        dim = int(get("embedding_length"))
        vocab = md.get("llama.vocab_size") or n_vocab
        if vocab is None:
            raise ConfigError(
                "GGUF metadata has no vocabulary size",
                "re-convert the model with a current llama.cpp",
            )
        args: dict[str, Any] = dict(
            dim=dim,
            n_layers=int(get("block_count")),
            n_heads=n_heads,
            n_kv_heads=int(md.get("llama.attention.head_count_kv") or n_heads),
            vocab_size=int(vocab),
            ffn_hidden_dim=int(get("feed_forward_length")),
            norm_eps=float(md.get("llama.attention.layer_norm_rms_epsilon", 1e-5)),
            rope_theta=float(md.get("llama.rope.freq_base", 10000.0)),
            max_position_embeddings=int(md.get("llama.context_length", 4096)),
        )
        rope_dim = md.get("llama.rope.dimension_count")
        if rope_dim is not None and int(rope_dim) != dim // n_heads:
            args["head_dim_override"] = int(rope_dim)
        return cls(**args)

    def replace(self, **changes: Any) -> ModelArgs:
        return dataclasses.replace(self, **changes)

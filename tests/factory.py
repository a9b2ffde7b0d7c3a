"""Writers for tiny random-weight Llama 3 checkpoints in every format, from one transformers model.

The transformers `LlamaForCausalLM` is the oracle: the HF directory is its own `save_pretrained`
output, the Meta directory and the GGUF file are derived from its weights here, written the way
Meta's and llama.cpp's tools write them (independently of the package's readers).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch
from conftest import (
    HF_TOKENIZER_CONFIG_30,
    HF_TOKENIZER_CONFIG_31,
    HF_TOKENIZER_JSON,
    TOKENIZER_MODEL,
)

DIM, N_LAYERS, N_HEADS, N_KV_HEADS, VOCAB = 64, 2, 4, 2, 128256
MULTIPLE_OF, FFN_MULT = 32, 1.3
HIDDEN = 224  # Meta's rule: int(1.3 * int(2 * 4 * 64 / 3)) = 221, rounded up to a multiple of 32

VARIANTS = {
    # name: (rope scaling factor or None, tied embeddings)
    "3.0": (None, False),
    "3.1": (8.0, False),
    "3.2": (32.0, True),
}


def hf_model(variant: str, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    factor, tied = VARIANTS[variant]
    cfg = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=DIM,
        intermediate_size=HIDDEN,
        num_hidden_layers=N_LAYERS,
        num_attention_heads=N_HEADS,
        num_key_value_heads=N_KV_HEADS,
        rms_norm_eps=1e-5,
        rope_theta=500000.0,
        max_position_embeddings=131072 if factor else 8192,
        tie_word_embeddings=tied,
        bos_token_id=128000,
        eos_token_id=[128001, 128008, 128009] if factor else [128001, 128009],
        rope_scaling=(
            {
                "rope_type": "llama3",
                "factor": factor,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192,
            }
            if factor
            else None
        ),
        torch_dtype="float32",
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # larger weights than the default init, so logits are far from uniform
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.08)
            else:
                p.uniform_(0.8, 1.2)
    return model


def write_hf(model, out: Path, variant: str) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    if variant != "3.2":
        # Real Meta-Llama-3/3.1 repos use the classic keys; transformers >= 5 writes rope_parameters.
        cfg_file = out / "config.json"
        cfg = json.loads(cfg_file.read_text())
        rp = cfg.pop("rope_parameters", None) or {}
        cfg["rope_theta"] = rp.pop("rope_theta", 500000.0)
        cfg["rope_scaling"] = rp if rp.get("rope_type") == "llama3" else None
        cfg_file.write_text(json.dumps(cfg, indent=2))
    shutil.copy(HF_TOKENIZER_JSON, out / "tokenizer.json")
    cfg = HF_TOKENIZER_CONFIG_30 if variant == "3.0" else HF_TOKENIZER_CONFIG_31
    shutil.copy(cfg, out / "tokenizer_config.json")
    return out


def _shapes(model) -> tuple[int, int, int, int, int, int]:
    """(dim, layers, heads, kv heads, vocab, hidden) from the transformers model's config."""
    c = model.config
    return (
        c.hidden_size,
        c.num_hidden_layers,
        c.num_attention_heads,
        c.num_key_value_heads,
        c.vocab_size,
        c.intermediate_size,
    )


def meta_state_dict(model) -> dict[str, torch.Tensor]:
    """HF names and rotate-half q/k rows -> Meta names and interleaved rows (Meta's convert, inverted)."""
    dim, n_layers, n_heads, n_kv_heads, _, _ = _shapes(model)
    head_dim = dim // n_heads

    def to_meta(w: torch.Tensor, heads: int) -> torch.Tensor:
        # HF wrote rows as (head, half, pair-index); Meta's order is (head, pair-index, half).
        return (
            w.reshape(heads, 2, head_dim // 2, dim)
            .permute(0, 2, 1, 3)
            .reshape(heads * head_dim, dim)
        )

    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    out = {
        "tok_embeddings.weight": sd["model.embed_tokens.weight"],
        "norm.weight": sd["model.norm.weight"],
    }
    if not model.config.tie_word_embeddings:
        out["output.weight"] = sd["lm_head.weight"]
    for i in range(n_layers):
        p = f"model.layers.{i}."
        out[f"layers.{i}.attention.wq.weight"] = to_meta(sd[p + "self_attn.q_proj.weight"], n_heads)
        out[f"layers.{i}.attention.wk.weight"] = to_meta(
            sd[p + "self_attn.k_proj.weight"], n_kv_heads
        )
        out[f"layers.{i}.attention.wv.weight"] = sd[p + "self_attn.v_proj.weight"]
        out[f"layers.{i}.attention.wo.weight"] = sd[p + "self_attn.o_proj.weight"]
        out[f"layers.{i}.feed_forward.w1.weight"] = sd[p + "mlp.gate_proj.weight"]
        out[f"layers.{i}.feed_forward.w2.weight"] = sd[p + "mlp.down_proj.weight"]
        out[f"layers.{i}.feed_forward.w3.weight"] = sd[p + "mlp.up_proj.weight"]
        out[f"layers.{i}.attention_norm.weight"] = sd[p + "input_layernorm.weight"]
        out[f"layers.{i}.ffn_norm.weight"] = sd[p + "post_attention_layernorm.weight"]
    return out


def write_meta(model, out: Path, variant: str, n_shards: int = 1) -> Path:
    """consolidated.NN.pth shards split by fairscale's rules (SEEDS §1.5) + params.json + tokenizer."""
    out.mkdir(parents=True, exist_ok=True)
    factor, _ = VARIANTS[variant]
    params = {
        "dim": DIM,
        "n_layers": N_LAYERS,
        "n_heads": N_HEADS,
        "n_kv_heads": N_KV_HEADS,
        "vocab_size": VOCAB,
        "multiple_of": MULTIPLE_OF,
        "ffn_dim_multiplier": FFN_MULT,
        "norm_eps": 1e-5,
        "rope_theta": 500000.0,
    }
    if factor:
        params["use_scaled_rope"] = True
        if factor != 8.0:
            params["rope_scaling_factor"] = factor
    (out / "params.json").write_text(json.dumps(params))
    sd = meta_state_dict(model)
    col = ("wq.weight", "wk.weight", "wv.weight", "w1.weight", "w3.weight")
    for r in range(n_shards):
        shard = {}
        for k, v in sd.items():
            if k in ("tok_embeddings.weight", "output.weight") or k.endswith(col):
                shard[k] = v.chunk(n_shards, dim=0)[r].clone()
            elif k.endswith(("wo.weight", "w2.weight")):
                shard[k] = v.chunk(n_shards, dim=1)[r].clone()
            else:
                shard[k] = v.clone()
        torch.save(shard, out / f"consolidated.{r:02d}.pth")
    shutil.copy(TOKENIZER_MODEL, out / "tokenizer.model")
    return out


_GGUF_NAMES = {
    "attention.wq": "attn_q",
    "attention.wk": "attn_k",
    "attention.wv": "attn_v",
    "attention.wo": "attn_output",
    "feed_forward.w1": "ffn_gate",
    "feed_forward.w2": "ffn_down",
    "feed_forward.w3": "ffn_up",
    "attention_norm": "attn_norm",
    "ffn_norm": "ffn_norm",
}


def _gguf_tensor_name(meta: str) -> str:
    top = {
        "tok_embeddings.weight": "token_embd.weight",
        "norm.weight": "output_norm.weight",
        "output.weight": "output.weight",
    }
    if meta in top:
        return top[meta]
    _, i, rest = meta.split(".", 2)
    return f"blk.{i}.{_GGUF_NAMES[rest.rsplit('.', 1)[0]]}.weight"


def write_gguf_tokenizer(writer, variant: str = "3.1") -> None:
    """Llama 3 vocabulary as llama.cpp's converter writes it (gpt2 BPE, pre-tokenizer llama-bpe)."""
    import gguf

    tj = json.loads(HF_TOKENIZER_JSON.read_text())
    vocab = tj["model"]["vocab"]
    added = {t["content"]: t["id"] for t in tj["added_tokens"]}
    tokens = [""] * (len(vocab) + len(added))
    types = [gguf.TokenType.NORMAL] * len(tokens)
    for piece, i in vocab.items():
        tokens[i] = piece
    for piece, i in added.items():
        tokens[i] = piece
        types[i] = gguf.TokenType.CONTROL
    merges = [m if isinstance(m, str) else " ".join(m) for m in tj["model"]["merges"]]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("llama-bpe")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(128000)
    writer.add_eos_token_id(128009)
    writer.add_eot_token_id(128009)
    writer.add_add_bos_token(True)
    cfg = HF_TOKENIZER_CONFIG_30 if variant == "3.0" else HF_TOKENIZER_CONFIG_31
    writer.add_chat_template(json.loads(cfg.read_text())["chat_template"])


def write_gguf(
    model, out: Path, variant: str, qtype: str = "F32", *, tokenizer: bool = True
) -> Path:
    """A GGUF file as llama.cpp's convert_hf_to_gguf.py writes it: Meta-layout q/k, reversed dims.
    Shapes come from the model's config; `qtype` F32, F16 or any type gguf can quantize to."""
    import gguf

    dim, n_layers, n_heads, n_kv_heads, vocab, hidden = _shapes(model)
    factor, tied = VARIANTS[variant]
    w = gguf.GGUFWriter(str(out), "llama")
    w.add_context_length(131072 if factor else 8192)
    w.add_embedding_length(dim)
    w.add_block_count(n_layers)
    w.add_feed_forward_length(hidden)
    w.add_head_count(n_heads)
    w.add_head_count_kv(n_kv_heads)
    w.add_rope_dimension_count(dim // n_heads)
    w.add_rope_freq_base(500000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(vocab)
    if tokenizer:
        write_gguf_tokenizer(w, variant)
    if factor:
        # llama.cpp stores Llama 3.1 scaling as per-frequency divisors (convert_hf_to_gguf.py).
        base = 1.0 / (
            500000.0 ** (np.arange(0, dim // n_heads, 2, dtype=np.float32) / (dim // n_heads))
        )
        lo, hi, old = 8192 / 1.0, 8192 / 4.0, 8192
        factors = []
        for f in base:
            wl = 2 * np.pi / f
            if wl < hi:
                factors.append(1.0)
            elif wl > lo:
                factors.append(factor)
            else:
                smooth = (old / wl - 1.0) / (4.0 - 1.0)
                factors.append(1.0 / ((1 - smooth) / factor + smooth))
        w.add_tensor("rope_freqs.weight", np.array(factors, dtype=np.float32))
    qt = getattr(gguf.GGMLQuantizationType, qtype)
    for name, t in meta_state_dict(model).items():
        arr = t.float().numpy()
        if arr.ndim == 2 and qtype == "F16":
            w.add_tensor(_gguf_tensor_name(name), arr.astype(np.float16))
        elif arr.ndim == 2 and qt != gguf.GGMLQuantizationType.F32:
            data = gguf.quants.quantize(arr, qt)
            w.add_tensor(_gguf_tensor_name(name), data, raw_dtype=qt)
        else:
            w.add_tensor(_gguf_tensor_name(name), arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out

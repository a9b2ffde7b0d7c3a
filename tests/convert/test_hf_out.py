"""`--to hf`: transformers loads the directory (LlamaForCausalLM.from_pretrained) with the source's
logits; the tensors are transformers' own (save_pretrained of the oracle model, bit for bit);
config.json, generation_config.json and the tokenizer files say what Meta's HF repos say."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import TOKENIZER_MODEL, tiktoken_oracle
from safetensors.torch import load_file

from .helpers import TRICKY_TEXT, converted, hf_logits

pytestmark = pytest.mark.filterwarnings("ignore")


def _transformers(path):
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def _state_dict(path) -> dict[str, torch.Tensor]:
    sd = {}
    for f in sorted(path.glob("*.safetensors")):
        sd.update(load_file(f))
    return sd


@pytest.mark.parametrize(
    "variant, src", [("3.0", "meta2"), ("3.1", "gguf"), ("3.2", "meta"), ("3.1", "hf")]
)
def test_transformers_loads_it_with_the_sources_logits(tiny, work, variant, src):
    out = converted(tiny, work, variant, src, "hf")
    oracle = tiny.hf_model(variant)
    model = _transformers(out)
    assert torch.equal(hf_logits(model), hf_logits(oracle))
    # the tensors are transformers' own, under its names (no lm_head for tied models)
    want = {k: v for k, v in oracle.state_dict().items() if not k.endswith("rotary_emb.inv_freq")}
    if oracle.config.tie_word_embeddings:
        want.pop("lm_head.weight", None)
    got = _state_dict(out)
    assert set(got) == set(want)
    for k, v in want.items():
        assert torch.equal(got[k], v), k
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["tie_word_embeddings"] is oracle.config.tie_word_embeddings
    assert cfg["torch_dtype"] == "float32"
    if variant == "3.0":
        assert cfg["rope_scaling"] is None
    else:
        assert cfg["rope_scaling"] == {
            "factor": 8.0 if variant == "3.1" else 32.0,
            "high_freq_factor": 4.0,
            "low_freq_factor": 1.0,
            "original_max_position_embeddings": 8192,
            "rope_type": "llama3",
        }


def test_generation_config_lists_every_stop_id(tiny, work):
    gen = json.loads(
        (converted(tiny, work, "3.1", "meta", "hf") / "generation_config.json").read_text()
    )
    assert gen["eos_token_id"] == [128001, 128008, 128009]
    assert gen["bos_token_id"] == 128000
    gen = json.loads(
        (converted(tiny, work, "3.0", "meta2", "hf") / "generation_config.json").read_text()
    )
    assert gen["eos_token_id"] == [128001, 128009]


@pytest.mark.parametrize("variant, src", [("3.0", "meta2"), ("3.1", "gguf")])
def test_tokenizer_encodes_like_tiktoken(tiny, work, variant, src):
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    out = converted(tiny, work, variant, src, "hf")
    want = tiktoken_oracle().encode(TRICKY_TEXT)
    tk = Tokenizer.from_file(str(out / "tokenizer.json"))
    assert tk.encode(TRICKY_TEXT, add_special_tokens=False).ids == want
    auto = AutoTokenizer.from_pretrained(out)
    assert auto(TRICKY_TEXT)["input_ids"] == [128000, *want]  # BOS, as the source adds it
    assert auto.convert_tokens_to_ids("<|eot_id|>") == 128009
    assert auto.decode(want) == TRICKY_TEXT


def test_chat_template_renders_metas_chat_format(tiny, work):
    """Meta ships no template; the one written renders ChatFormat's exact tokens."""
    from transformers import AutoTokenizer

    from llama3.tokenizer import ChatFormat, Tokenizer

    out = converted(tiny, work, "3.0", "meta2", "hf")
    dialog = [
        {"role": "system", "content": "Answer briefly. "},
        {"role": "user", "content": " What is a llama?"},
        {"role": "assistant", "content": "An animal."},
        {"role": "user", "content": "And an alpaca?"},
    ]
    auto = AutoTokenizer.from_pretrained(out)
    text = auto.apply_chat_template(dialog, tokenize=False, add_generation_prompt=True)
    ids = auto(text, add_special_tokens=False)["input_ids"]
    assert ids == ChatFormat(Tokenizer(str(TOKENIZER_MODEL))).encode_dialog_prompt(dialog)


def test_max_shard_size_splits_like_save_pretrained(tiny, work):
    out = converted(tiny, work, "3.0", "meta", "hf", max_shard_size="20MB")
    files = sorted(p.name for p in out.glob("*.safetensors"))
    n = len(files)
    assert n >= 3 and files == [f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]
    assert all((out / f).stat().st_size < 20e6 + 33e6 for f in files)  # one tensor may pass it
    index = json.loads((out / "model.safetensors.index.json").read_text())
    sd = _state_dict(out)
    assert set(index["weight_map"]) == set(sd)
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in sd.values())
    for name, f in index["weight_map"].items():
        assert name in load_file(out / f)
    assert torch.equal(hf_logits(_transformers(out)), hf_logits(tiny.hf_model("3.0")))

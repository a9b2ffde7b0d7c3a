"""`llama3 inspect` (the doctor) and `llama3 tokenize`, run as real subprocesses on real models.

Oracles: the tiny models' own transformers config and parameter count (tests/factory.py), the
files each stop id is written in, tiktoken and `tokenizers` on the real Llama 3 vocabulary, and the
real SmolLM2 GGUF. Every pitfall the doctor warns about is triggered by a deliberately broken copy.
The commands all start at once in a module fixture (each pays for importing torch, and reading a
GGUF with a 128K vocabulary takes seconds), and the tests collect their results.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import factory
import pytest
import torch
from conftest import (
    HF_TOKENIZER_CONFIG_30,
    HF_TOKENIZER_JSON,
    SPECIALS_31,
    tiktoken_oracle,
)

TEXT = "Hello, world! <|eot_id|> 12345 ünïcödé 🦙\n\ttabs  end"
# Meta's Llama 3 chat layout for doctor.EXAMPLE_DIALOG (the model card's prompt format)
LLAMA3_EXAMPLE = (
    "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are a helpful assistant."
    "<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nWhat is the capital of France?"
    "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
)
HEADER_IDS = (128006, 128007, 128009)  # <|start_header_id|> <|end_header_id|> <|eot_id|>

# Every format and variant through the command (slow GGUF reads first); the other cells of the
# grid go through `doctor.inspect_model` in-process, which is what the command prints.
CLI_MATRIX = [
    ("3.1", "gguf"),
    ("3.2", "gguf-q8"),
    ("3.0", "hf"),
    ("3.2", "hf"),
    ("3.0", "meta"),
    ("3.1", "meta2"),
]
LIBRARY_MATRIX = [("3.1", "hf"), ("3.2", "meta"), ("3.0", "meta2")]


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "llama3", *args], capture_output=True, text=True, timeout=300
    )


# ---- broken copies -------------------------------------------------------------------------------
def _copy_dir(src: Path, dst: Path) -> Path:
    """A copy whose weight files are links (cheap); edit the small files freely."""
    dst.mkdir()
    for f in src.iterdir():
        if f.suffix in (".safetensors", ".pth"):
            os.symlink(f, dst / f.name)
        else:
            shutil.copy(f, dst / f.name)
    return dst


def _hf_without_generation_config(tiny, root: Path) -> Path:
    d = _copy_dir(tiny.path("3.0", "hf"), root / "no-genconfig")  # 3.0: eos <|end_of_text|>
    (d / "generation_config.json").unlink()
    return d


def _hf_wrong_vocab(tiny, root: Path) -> Path:
    d = _copy_dir(tiny.path("3.1", "hf"), root / "wrong-vocab")
    cfg = json.loads((d / "config.json").read_text())
    cfg["vocab_size"] = 128000
    (d / "config.json").write_text(json.dumps(cfg))
    return d


def _hf_truncated(tiny, root: Path) -> Path:
    d = _copy_dir(tiny.path("3.0", "hf"), root / "truncated")
    (d / "model.safetensors").unlink()
    data = (tiny.path("3.0", "hf") / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(data[: len(data) // 3])
    return d


def _meta_without_params(tiny, root: Path) -> Path:
    d = _copy_dir(tiny.path("3.0", "meta"), root / "no-params")
    (d / "params.json").unlink()
    return d


def _broken_gguf(tiny, path: Path) -> Path:
    """A Llama 3 base-model GGUF as a careless conversion writes it: eos <|end_of_text|> and no
    eot, an unknown pre-tokenizer, and a chat template, while the header tokens are untrained."""
    import gguf

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(8192)
    w.add_embedding_length(factory.DIM)
    w.add_block_count(factory.N_LAYERS)
    w.add_feed_forward_length(factory.HIDDEN)
    w.add_head_count(factory.N_HEADS)
    w.add_head_count_kv(factory.N_KV_HEADS)
    w.add_rope_dimension_count(factory.DIM // factory.N_HEADS)
    w.add_rope_freq_base(500000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(factory.VOCAB)
    tj = json.loads(HF_TOKENIZER_JSON.read_text())
    tokens = [""] * factory.VOCAB
    types = [gguf.TokenType.NORMAL] * factory.VOCAB
    for piece, i in tj["model"]["vocab"].items():
        tokens[i] = piece
    for t in tj["added_tokens"]:
        tokens[t["id"]], types[t["id"]] = t["content"], gguf.TokenType.CONTROL
    # A few merges keep the file quick to read; the doctor does not tokenize much.
    merges = [m if isinstance(m, str) else " ".join(m) for m in tj["model"]["merges"][:2000]]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("mystery")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(128000)
    w.add_eos_token_id(128001)
    w.add_add_bos_token(True)
    w.add_chat_template(json.loads(HF_TOKENIZER_CONFIG_30.read_text())["chat_template"])
    sd = factory.meta_state_dict(tiny.hf_model("3.0"))
    sd["tok_embeddings.weight"][list(HEADER_IDS)] = 0.0  # never trained in a base model
    for name, t in sd.items():
        w.add_tensor(factory._gguf_tensor_name(name), t.float().numpy())
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module")
def runs(tiny, tmp_path_factory) -> dict[str, Future]:
    """Every command of this module, started as soon as its model exists (slowest first)."""
    root = tmp_path_factory.mktemp("doctor")
    pool = ThreadPoolExecutor(max_workers=3)
    futures: dict[str, Future] = {}

    def submit(key: str, *args: str) -> None:
        futures[key] = pool.submit(_run, *args)

    for variant, fmt in CLI_MATRIX:
        extra = ("--max-seq-len", "1000") if fmt == "meta" else ()
        submit(f"{variant}-{fmt}", "inspect", str(tiny.path(variant, fmt)), "--json", *extra)
    submit("smollm2", "inspect", "--json")  # the built-in default model
    submit("tok-gguf", "tokenize", str(tiny.path("3.2", "gguf-q8")), TEXT, "--json")
    submit("tok-default", "tokenize", TEXT, "--json")
    submit("broken-gguf", "inspect", str(_broken_gguf(tiny, root / "base.gguf")), "--json")
    no_gen = _hf_without_generation_config(tiny, root)
    submit("no-genconfig", "inspect", "--model", str(no_gen), "--json")
    submit("wrong-vocab", "inspect", str(_hf_wrong_vocab(tiny, root)), "--json")
    meta31 = str(tiny.path("3.1", "meta"))
    submit("context", "inspect", meta31, "--max-batch-size", "100000")  # the text report
    submit("truncated", "inspect", str(_hf_truncated(tiny, root)))
    submit("no-params", "inspect", str(_meta_without_params(tiny, root)))
    submit("tok-hf", "tokenize", str(tiny.path("3.0", "hf")), TEXT, "--json")
    submit("tok-meta", "tokenize", "--model", meta31, TEXT)  # the text output
    submit("tok-meta-special", "tokenize", meta31, TEXT, "--special", "--json")
    yield futures
    pool.shutdown(wait=True)


def _ok(runs, key: str) -> dict:
    r = runs[key].result()
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def _codes(report: dict) -> list[str]:
    return sorted(f["code"] for f in report["findings"])


def _error_line(runs, key: str, code: int) -> str:
    r = runs[key].result()
    assert r.returncode == code, (r.stdout, r.stderr)
    assert r.stderr.startswith("error: ") and r.stderr.count("\n") == 1, r.stderr
    assert "Traceback" not in r.stderr and r.stdout == ""
    return r.stderr


# ---- the tiny models, every format and variant ---------------------------------------------------
@pytest.mark.parametrize("variant,fmt", CLI_MATRIX)
def test_inspect_reports_the_tiny_config(runs, tiny, variant, fmt):
    _check_tiny_report(_ok(runs, f"{variant}-{fmt}"), tiny, variant, fmt)


@pytest.mark.parametrize("variant,fmt", LIBRARY_MATRIX)
def test_doctor_reports_the_tiny_config(tiny, variant, fmt):
    from llama3.doctor import inspect_model

    rep = json.loads(json.dumps(inspect_model(tiny.path(variant, fmt))))  # JSON-ready data
    _check_tiny_report(rep, tiny, variant, fmt)


def _check_tiny_report(rep: dict, tiny, variant: str, fmt: str) -> None:
    factor, tied = factory.VARIANTS[variant]
    hf = tiny.hf_model(variant)
    c = rep["config"]
    assert (c["dim"], c["n_layers"], c["n_heads"], c["n_kv_heads"]) == (
        factory.DIM,
        factory.N_LAYERS,
        factory.N_HEADS,
        factory.N_KV_HEADS,
    )
    assert (c["head_dim"], c["hidden_dim"], c["vocab_size"]) == (
        factory.DIM // factory.N_HEADS,
        factory.HIDDEN,
        factory.VOCAB,
    )
    assert c["rope_theta"] == 500000.0 and c["tie_word_embeddings"] is tied
    assert c["trained_context"] == hf.config.max_position_embeddings
    if factor is None:
        assert c["rope_scaling"] is None
    elif fmt.startswith("gguf"):  # stored as per-frequency divisors
        assert c["rope_scaling"] == {"type": "rope_freqs", "factor": factor}
    else:
        assert c["rope_scaling"]["type"] == "llama3" and c["rope_scaling"]["factor"] == factor
        assert c["rope_scaling"]["original_max_position_embeddings"] == 8192

    w = rep["weights"]
    assert w["parameters"] == sum(p.numel() for p in hf.parameters())  # transformers counts too
    assert w["dtype"] == "float32" and w["bytes"] == 4 * w["parameters"]
    n_tensors = 2 + 9 * factory.N_LAYERS + (0 if tied else 1)
    expected = {
        "gguf": {"F32": n_tensors},
        "gguf-q8": {"F32": 1 + 2 * factory.N_LAYERS, "Q8_0": n_tensors - 1 - 2 * factory.N_LAYERS},
    }.get(fmt, {"float32": n_tensors})
    assert w["stored_dtypes"] == expected
    assert rep["model"]["format"] == fmt.rstrip("2").removesuffix("-q8")
    assert rep["model"]["bytes"] == sum(os.path.getsize(f["path"]) for f in rep["model"]["files"])

    m = rep["memory"]
    head_dim = factory.DIM // factory.N_HEADS
    assert m["kv_bytes_per_token"] == 2 * factory.N_LAYERS * factory.N_KV_HEADS * head_dim * 4
    assert m["trained_context"] == c["trained_context"]
    assert m["trained_kv_cache_bytes"] == m["kv_bytes_per_token"] * c["trained_context"]
    if fmt == "meta" and variant == "3.0":  # run with --max-seq-len 1000
        assert (m["context"], m["context_source"]) == (1000, "--max-seq-len")
    else:  # at most 64 MiB of cache: fits anywhere
        assert m["context"] == c["trained_context"] and m["context_source"].startswith(
            "the default"
        )
    assert m["kv_cache_bytes"] == m["kv_bytes_per_token"] * m["context"]

    t = rep["tokenizer"]
    assert t["n_words"] == factory.VOCAB and t["llama3_vocab"] and t["add_bos"]
    assert t["bos"] == {"id": 128000, "text": "<|begin_of_text|>"}
    assert t["special_tokens"]["<|eot_id|>"] == 128009
    assert not any("reserved" in s for s in t["special_tokens"])
    assert len(t["special_tokens"]) + t["reserved_special_tokens"] == 256

    chat = rep["chat"]["example"]
    assert chat["text"] == LLAMA3_EXAMPLE
    assert chat["n_tokens"] == len(_tokenizers_ids(LLAMA3_EXAMPLE))
    assert [f for f in rep["findings"] if f["level"] == "error"] == []


def _tokenizers_ids(text: str) -> list[int]:
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(HF_TOKENIZER_JSON)).encode(text, add_special_tokens=False).ids


def _stops(rep: dict) -> dict[int, list[str]]:
    return {s["id"]: s["sources"] for s in rep["stop_tokens"]}


def test_stop_set_sources_name_the_files(runs):
    # HF: tokenizer_config.json eos (3.0: <|end_of_text|>, 3.1: <|eot_id|>) + generation_config.json
    assert _stops(_ok(runs, "3.0-hf")) == {
        128001: ["tokenizer_config.json", "generation_config.json"],
        128009: ["generation_config.json", "llama3 defaults"],
    }
    s31 = _stops(_ok(runs, "3.2-hf"))
    assert s31[128009] == ["tokenizer_config.json", "generation_config.json", "llama3 defaults"]
    assert s31[128008] == s31[128001] == ["generation_config.json"]
    # Meta: the tiktoken tokenizer's own stop tokens (3.0 names have no <|eom_id|>)
    assert _stops(_ok(runs, "3.0-meta")) == {128001: ["tokenizer"], 128009: ["tokenizer"]}
    assert _stops(_ok(runs, "3.1-meta2")) == {i: ["tokenizer"] for i in (128001, 128008, 128009)}
    # GGUF: eos and eot ids in the metadata
    assert _stops(_ok(runs, "3.1-gguf")) == {
        128009: ["gguf eos_token_id", "gguf eot_token_id", "llama3 defaults"]
    }


def test_chat_sources_and_double_bos(runs):
    hf, meta, gguf_ = _ok(runs, "3.2-hf"), _ok(runs, "3.1-meta2"), _ok(runs, "3.2-gguf-q8")
    assert hf["chat"]["source"] == "tokenizer_config.json"
    assert gguf_["chat"]["source"] == "GGUF tokenizer.chat_template"
    assert "{{ content }}" in hf["chat"]["template"]
    assert meta["chat"] == {
        "source": "Meta's Llama 3 chat format (built in)",
        "template": None,
        "example": meta["chat"]["example"],
    }
    # Meta's Llama 3 templates emit {{ bos_token }} and the tokenizer adds BOS too: pitfall 5.
    for rep in (hf, gguf_):
        assert _codes(rep) == ["double-bos"]
        assert "add_special_tokens=False" in rep["findings"][0]["fix"]
    assert _codes(meta) == []  # no template, Meta's layout


# ---- the real SmolLM2 GGUF -----------------------------------------------------------------------
def test_inspect_smollm2(runs, smollm2_path):
    rep = _ok(runs, "smollm2")
    assert rep["model"]["path"] == str(smollm2_path) and rep["model"]["format"] == "gguf"
    c = rep["config"]
    assert (c["dim"], c["n_layers"], c["n_heads"], c["n_kv_heads"], c["vocab_size"]) == (
        576,
        30,
        9,
        3,
        49152,
    )
    assert c["tie_word_embeddings"] is True and c["rope_scaling"] is None
    assert set(rep["weights"]["stored_dtypes"]) == {"F32", "Q4_1", "Q8_0"}
    t = rep["tokenizer"]
    assert t["n_words"] == 49152 and not t["llama3_vocab"] and not t["add_bos"]
    assert "'smollm'" in t["kind"] and t["special_tokens"]["<|im_end|>"] == 2
    assert rep["stop_tokens"] == [{"id": 2, "text": "<|im_end|>", "sources": ["gguf eos_token_id"]}]
    chat = rep["chat"]
    assert chat["source"] == "GGUF tokenizer.chat_template" and "<|im_start|>" in chat["template"]
    assert chat["example"]["text"] == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    )
    assert rep["findings"] == []


# ---- pitfalls, each from a broken copy -----------------------------------------------------------
def test_missing_generation_config_warns_about_eot(runs):
    rep = _ok(runs, "no-genconfig")
    (eot,) = [f for f in rep["findings"] if f["code"] == "eot"]
    assert "<|end_of_text|> as eos" in eot["message"]
    assert "there is no generation_config.json" in eot["message"]
    assert "other engines will run past the end" in eot["message"]
    assert "llama3 adds it to the stop set itself" in eot["message"]
    assert '"eos_token_id": [128001, 128009]' in eot["fix"]
    assert _stops(rep)[128009] == ["llama3 defaults"]


def test_broken_gguf_warnings(runs):
    rep = _ok(runs, "broken-gguf")
    assert _codes(rep) == ["base-model", "double-bos", "eot", "pre-tokenizer"]
    f = {x["code"]: x for x in rep["findings"]}
    assert "GGUF eos is <|end_of_text|> (128001) and it names no eot token" in f["eot"]["message"]
    assert '--special-token eot "<|eot_id|>"' in f["eot"]["fix"]
    assert "unknown GGUF pre-tokenizer 'mystery'" in f["pre-tokenizer"]["message"]
    assert "--pre-tokenizer llama-bpe" in f["pre-tokenizer"]["fix"]
    base = f["base-model"]["message"]
    assert base.startswith("a chat template ships with what looks like a base")
    assert "<|start_header_id|>, <|end_header_id|>, <|eot_id|>" in base
    assert "llama3 generate" in f["base-model"]["fix"]
    assert _stops(rep) == {128001: ["gguf eos_token_id"], 128009: ["llama3 defaults"]}


def test_vocab_mismatch_is_an_error_finding(runs):
    r = runs["wrong-vocab"].result()
    assert r.returncode == 1, r.stderr
    rep = json.loads(r.stdout)
    f = {x["code"]: x for x in rep["findings"]}
    assert f["vocab"]["level"] == "error"
    assert f["vocab"]["message"].startswith(
        "the tokenizer has 128256 tokens but the model's vocab_size is 128000"
    )
    assert f["weights"]["level"] == "error"
    assert "(128256, 64) but the config expects (128000, 64)" in f["weights"]["message"]


def test_context_that_does_not_fit_in_the_text_report(runs):
    r = runs["context"].result()
    assert r.returncode == 0, r.stderr
    out = r.stdout
    for needle in (
        "format          Meta native, 2 file(s), ",
        "heads           4 (kv heads 2, head_dim 16)",
        "rope scaling    llama3 (factor 8, low/high freq 1/4, original context 8192)",
        "tied embeddings no",
        "trained context 131072",
        "stored as       float32 x21 (tensors)",
        "memory (cpu, float32, batch size 100000):",
        "KV at trained   6.1 TiB for 131072 tokens",
        "BOS             <|begin_of_text|> (128000)",
        "(+247 reserved)",
        "128009 <|eot_id|>               from tokenizer",
        "chat format: Meta's Llama 3 chat format (built in)",
        "example (system + user, generation prompt): 28 tokens",
        "  > <|begin_of_text|><|start_header_id|>system<|end_header_id|>",
        "findings (1):",
        "warning [context]: the trained context of 131072 tokens needs 6.1 TiB of KV cache",
        "fix: pass --max-seq-len N to choose the context",
    ):
        assert needle in out, needle
    used = re.search(r"KV at context .* for (\d+) tokens, the default", out)
    assert used and int(used.group(1)) < 131072
    assert f"llama3 uses {used.group(1)} tokens instead" in " ".join(out.split())


def test_max_seq_len_beyond_the_trained_context(tiny):
    from llama3.doctor import inspect_model

    rep = inspect_model(tiny.path("3.0", "meta"), max_seq_len=10000)
    (f,) = [x for x in rep["findings"] if x["code"] == "context"]
    assert f["message"].startswith("--max-seq-len 10000 is beyond the 8192 tokens")
    assert f["fix"] == "use --max-seq-len 8192 or less"


def _with_template(tiny, d: Path, template: str) -> Path:
    _copy_dir(tiny.path("3.1", "hf"), d)
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    cfg["chat_template"] = template
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    return d


def test_templates_that_refuse_the_example(tiny, tmp_path):
    from llama3.doctor import inspect_model

    no_system = (
        "{% for m in messages %}{% if m['role'] == 'system' %}"
        "{{ raise_exception('no system role') }}{% endif %}"
        "<|start_header_id|>{{ m['role'] }}<|end_header_id|>{{ m['content'] }}<|eot_id|>"
        "{% endfor %}"
    )
    rep = inspect_model(_with_template(tiny, tmp_path / "no-system", no_system))
    example = rep["chat"]["example"]
    assert [m["role"] for m in example["dialog"]] == ["user"]  # retried without the system turn
    assert example["text"].startswith("<|begin_of_text|><|start_header_id|>user<|end_header_id|>")
    assert _codes(rep) == []  # the template emits no BOS: nothing doubles

    broken = "{{ raise_exception('this template is broken') }}"
    rep = inspect_model(_with_template(tiny, tmp_path / "broken", broken))
    assert rep["chat"]["example"] is None
    (f,) = rep["findings"]
    assert (f["code"], f["level"]) == ("template", "error")
    assert f["message"] == "the chat template refused the messages: this template is broken"


# ---- broken models and usage errors --------------------------------------------------------------
def test_truncated_model_is_one_line_error(runs):
    err = _error_line(runs, "truncated", 1)
    assert err.startswith("error: cannot read ") and "model.safetensors" in err
    assert "(hint: the file is truncated or corrupt; download it again)" in err


def test_missing_params_json_is_one_line_error(runs):
    err = _error_line(runs, "no-params", 1)
    assert "is not a checkpoint directory (found: consolidated.00.pth, tokenizer.model)" in err


@pytest.mark.parametrize(
    "argv,message",
    [
        (["inspect", "a", "--model", "b"], "error: two models given: a and --model b (hint:"),
        (["inspect", "x", "--max-batch-size", "0"], "error: --max-batch-size must be at least 1"),
        (["inspect", "x", "--max-seq-len", "1"], "error: --max-seq-len must be at least 2, got 1"),
        (["tokenize", "a", "b", "c"], "error: expected [MODEL] TEXT, got 3 arguments (hint:"),
        (
            ["tokenize", "a", "b", "--model", "m"],
            "error: expected [MODEL] TEXT, got 2 arguments and --model",
        ),
    ],
)
def test_usage_errors(argv, message, capsys):
    # Rejected before any model is touched, so the real entry point runs in-process.
    from llama3.cli import main

    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith(message) and err.count("\n") == 1, err


# ---- embedding rows are read without loading the matrix ------------------------------------------
@pytest.mark.parametrize("variant,fmt", [("3.0", "hf"), ("3.1", "meta2"), ("3.2", "meta")])
def test_embedding_rows_match_the_full_tensor(tiny, variant, fmt):
    from llama3.checkpoint import read_checkpoint
    from llama3.doctor import embedding_rows

    ckpt = read_checkpoint(tiny.path(variant, fmt))
    ids = [0, 5, 64127, 64128, 128006, 128255]  # both sides of the 2-shard split
    full = ckpt.tensors["tok_embeddings.weight"].load(torch.float32)
    torch.testing.assert_close(embedding_rows(ckpt, ids), full[ids], rtol=0, atol=0)


@pytest.mark.parametrize("qtype", ["F32", "F16", "Q8_0", "Q4_1", "Q5_0"])
def test_gguf_embedding_rows_match_the_gguf_package(qtype):
    import gguf
    import numpy as np

    from llama3.checkpoint import LoadedCheckpoint, TensorSource
    from llama3.config import ModelArgs
    from llama3.doctor import embedding_rows

    rows, cols = 40, 256
    arr = np.random.default_rng(0).standard_normal((rows, cols), dtype=np.float32)
    qt = getattr(gguf.GGMLQuantizationType, qtype)
    raw = {"F32": arr, "F16": arr.astype(np.float16)}.get(qtype)
    if raw is None:
        raw = gguf.quants.quantize(arr, qt)
    src = TensorSource((rows, cols), lambda dtype: None, "test", ggml_type=int(qt), raw=raw)
    args = ModelArgs(dim=cols, n_layers=1, n_heads=4, vocab_size=rows)
    ckpt = LoadedCheckpoint("gguf", Path("x.gguf"), args, {"tok_embeddings.weight": src}, None)
    ids = [0, 7, 39]
    want = torch.from_numpy(gguf.quants.dequantize(np.asarray(raw), qt).astype(np.float32))[ids]
    torch.testing.assert_close(embedding_rows(ckpt, ids), want, rtol=0, atol=0)


# ---- tokenize ------------------------------------------------------------------------------------
def _tiktoken(special: bool) -> list[int]:
    enc = tiktoken_oracle(SPECIALS_31)
    body = enc.encode(TEXT, allowed_special="all") if special else enc.encode_ordinary(TEXT)
    return [128000, *body]


def test_tokenize_llama3_matches_tiktoken(runs, tiny):
    from llama3.checkpoint import read_checkpoint
    from llama3.loader import load_tokenizer_for

    plain = _tiktoken(special=False)
    for key in ("tok-hf", "tok-gguf"):
        out = _ok(runs, key)
        assert out["ids"] == plain, key
        assert out["bos_added"] is True and out["count"] == len(plain)
    r = runs["tok-meta"].result()  # the text output: "id  piece" lines and a count
    assert r.returncode == 0, r.stderr
    *rows, last = r.stdout.splitlines()
    assert [int(row.split(maxsplit=1)[0]) for row in rows] == plain
    assert last == f"{len(plain)} tokens (BOS <|begin_of_text|> added)"
    assert rows[:2] == ['  128000  "<|begin_of_text|>"', '    9906  "Hello"']
    special = _ok(runs, "tok-meta-special")
    assert special["ids"] == _tiktoken(special=True) and 128009 in special["ids"]
    assert 128009 not in plain
    own = load_tokenizer_for(read_checkpoint(tiny.path("3.0", "hf")))
    out = _ok(runs, "tok-hf")
    assert out["ids"] == own.encode(TEXT, bos=True, eos=False)
    assert out["pieces"] == [own.id_to_piece(i) for i in out["ids"]]
    assert out["pieces"][:3] == ["<|begin_of_text|>", "Hello", ","]


def test_tokenize_default_model(runs, smollm2_path):
    from llama3.tokenizer import load_tokenizer

    tok = load_tokenizer(smollm2_path)
    out = _ok(runs, "tok-default")
    assert out["bos_added"] is False
    assert out["ids"] == tok.encode(TEXT, bos=False, eos=False)
    assert 2 not in out["ids"] and tok.decode(out["ids"]) == TEXT

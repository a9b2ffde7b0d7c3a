"""HFTokenizer on the real Llama 3 tokenizer.json against tiktoken (Meta's tokenizer.model), plus
config handling (stop set and its sources, BOS policy, chat template forms) and load_tokenizer."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest
import tiktoken
from conftest import (
    HF_TOKENIZER_CONFIG_30,
    HF_TOKENIZER_CONFIG_31,
    HF_TOKENIZER_JSON,
    NAMES_31,
    SPECIALS_31,
    TOKENIZER_MODEL,
    tiktoken_oracle,
)
from tokenizers import Tokenizer as HFLibTokenizer
from tokenizers import processors

from llama3.errors import InvalidRequestError, TokenizerError
from llama3.tokenizer import BaseTokenizer, load_tokenizer
from llama3.tokenizer.hf import HFTokenizer

TEXTS = [
    "This is a test sentence.",
    "Hello, world! How's it going? I'LL be there; we'd've known. THEY'RE here",
    "   leading spaces and trailing spaces   ",
    "tabs\tand\nnewlines\r\nand\n\n\nblank lines\n",
    "numbers: 1 12 123 1234 12345 3.14159 -42 1,000,000",
    "unicode: café déjà vu, naïve, Straße, 日本語のテキスト, 中文, 한국어, Ελληνικά, русский",
    "emoji 🦙🔥 👩‍👩‍👧 and symbols ∑∫√ ™ © §",
    "code: def f(x):\n    return {'a': [1, 2, 3]}  # comment\n",
    "special-looking text: <|eot_id|> <|begin_of_text|>x<|start_header_id|> <| |>",
    "punctuation!!! ??? ... ,,, ;;; ::: --- ___ ***",
    "",
    " ",
    "\n",
]


def _fuzz_texts(n: int = 150, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    pool = (
        list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
        + list(" \t\n\r  ")
        + list(".,;:!?'\"()[]{}<>|/\\-_=+*&^%$#@~`")
        + ["'s", "'T", "'ll", "'RE", "<|eot_id|>", "<|begin_of_text|>", "<|"]
        + list("éèüßñçøåæœ日本語中文한국어αβγдж")
        + ["🦙", "😀", "\u0301", "\u200d", "\u00a0", "\u3000"]
    )
    return ["".join(rng.choice(pool) for _ in range(rng.randint(1, 60))) for _ in range(n)]


ALL_TEXTS = TEXTS + _fuzz_texts()


@pytest.fixture(scope="module")
def tiktoken_enc(shared_llama3: Path) -> tiktoken.Encoding:
    return tiktoken_oracle(SPECIALS_31)


def _tokenizer_json_31() -> dict:
    """The shipped tokenizer.json (3.0 names) renamed to Llama 3.1's special-token names."""
    data = json.loads(HF_TOKENIZER_JSON.read_text(encoding="utf-8"))
    for tok in data["added_tokens"]:
        tok["content"] = NAMES_31[tok["id"] - 128000]
    return data


def make_hf_dir(
    d: Path,
    *,
    config: Path | dict | None,
    tokenizer_json: dict | None = None,
    generation_config: dict | None = None,
) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    if tokenizer_json is None:
        shutil.copy(HF_TOKENIZER_JSON, d / "tokenizer.json")
    else:
        (d / "tokenizer.json").write_text(json.dumps(tokenizer_json), encoding="utf-8")
    if isinstance(config, Path):
        shutil.copy(config, d / "tokenizer_config.json")
    elif config is not None:
        (d / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    if generation_config is not None:
        (d / "generation_config.json").write_text(json.dumps(generation_config), encoding="utf-8")
    return d


@pytest.fixture(scope="module")
def hf_dir_30(tmp_path_factory: pytest.TempPathFactory, shared_llama3: Path) -> Path:
    return make_hf_dir(tmp_path_factory.mktemp("hf30"), config=HF_TOKENIZER_CONFIG_30)


@pytest.fixture(scope="module")
def hf_dir_31(tmp_path_factory: pytest.TempPathFactory, shared_llama3: Path) -> Path:
    return make_hf_dir(
        tmp_path_factory.mktemp("hf31"),
        config=HF_TOKENIZER_CONFIG_31,
        tokenizer_json=_tokenizer_json_31(),
        generation_config={"bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009]},
    )


@pytest.fixture(scope="module")
def tok30(hf_dir_30: Path) -> HFTokenizer:
    return HFTokenizer.from_dir(hf_dir_30)


@pytest.fixture(scope="module")
def tok31(hf_dir_31: Path) -> HFTokenizer:
    return HFTokenizer.from_dir(hf_dir_31)


# ---- ids -----------------------------------------------------------------------------------------
def test_plain_ids_equal_tiktoken(tok31: HFTokenizer, tiktoken_enc: tiktoken.Encoding) -> None:
    for text in ALL_TEXTS:
        expected = tiktoken_enc.encode(text, allowed_special=set(), disallowed_special=())
        assert tok31.encode(text, bos=False, eos=False) == expected, repr(text)


def test_allowed_special_ids_equal_tiktoken(
    tok31: HFTokenizer, tiktoken_enc: tiktoken.Encoding
) -> None:
    some = {"<|eot_id|>"}
    for text in ALL_TEXTS:
        assert tok31.encode(
            text, bos=False, eos=False, allowed_special="all"
        ) == tiktoken_enc.encode(text, allowed_special="all"), repr(text)
        assert tok31.encode(
            text, bos=False, eos=False, allowed_special=some
        ) == tiktoken_enc.encode(text, allowed_special=some, disallowed_special=()), repr(text)


def test_special_text_is_plain_by_default(
    tok31: HFTokenizer, tiktoken_enc: tiktoken.Encoding
) -> None:
    ids = tok31.encode("<|eot_id|>", bos=False, eos=False)
    assert 128009 not in ids
    assert ids == tiktoken_enc.encode_ordinary("<|eot_id|>")
    assert tok31.encode("<|eot_id|>", bos=False, eos=False, allowed_special="all") == [128009]


def test_disallowed_special_raises(tok31: HFTokenizer) -> None:
    with pytest.raises(InvalidRequestError, match="eot_id"):
        tok31.encode("hi <|eot_id|>", bos=False, eos=False, disallowed_special="all")
    with pytest.raises(InvalidRequestError):
        tok31.encode("hi <|eot_id|>", bos=False, eos=False, disallowed_special={"<|eot_id|>"})
    # allowed wins over "all"
    assert tok31.encode(
        "<|eot_id|>", bos=False, eos=False, allowed_special={"<|eot_id|>"}, disallowed_special="all"
    ) == [128009]


def test_bos_eos_only_when_asked(tok31: HFTokenizer, tiktoken_enc: tiktoken.Encoding) -> None:
    body = tiktoken_enc.encode("This is a test sentence.")
    assert tok31.encode("This is a test sentence.", bos=False, eos=False) == body
    assert tok31.encode("This is a test sentence.", bos=True, eos=False) == [128000, *body]
    # tokenizer_config.json (3.1) names <|eot_id|> as eos
    assert tok31.encode("This is a test sentence.", bos=True, eos=True) == [128000, *body, 128009]
    assert tok31.encode_prompt("This is a test sentence.") == [128000, *body]
    # text that already starts with the BOS text: plain text unless allowed, so never a second BOS id
    ids = tok31.encode_prompt("<|begin_of_text|>hi")
    assert ids.count(128000) == 1


def test_decode_equals_tiktoken(tok31: HFTokenizer, tiktoken_enc: tiktoken.Encoding) -> None:
    for text in ALL_TEXTS:
        ids = tiktoken_enc.encode(text, allowed_special="all")
        assert tok31.decode(ids) == tiktoken_enc.decode(ids)
        assert tok31.decode_bytes(ids) == tiktoken_enc.decode_bytes(ids)
    # a multi-byte character split across tokens: lone pieces decode to U+FFFD like tiktoken's
    ids = tiktoken_enc.encode("🦙")
    assert len(ids) > 1
    for i in ids:
        assert tok31.decode([i]) == tiktoken_enc.decode([i])
        assert tok31.id_to_piece(i) == tiktoken_enc.decode_single_token_bytes(i).decode(
            "utf-8", errors="backslashreplace"
        )
    assert tok31.decode([128000, 9906, 128009]) == tiktoken_enc.decode([128000, 9906, 128009])
    assert tok31.id_to_piece(128009) == "<|eot_id|>"
    assert tok31.id_to_piece(9906) == tiktoken_enc.decode([9906])


def test_decode_rejects_unknown_ids(tok31: HFTokenizer) -> None:
    with pytest.raises(InvalidRequestError, match="not in the vocabulary"):
        tok31.decode([1, 128256])


# ---- configs -------------------------------------------------------------------------------------
def test_vocab_and_special_ids(tok31: HFTokenizer, tiktoken_enc: tiktoken.Encoding) -> None:
    assert isinstance(tok31, BaseTokenizer)
    assert tok31.n_words == tiktoken_enc.n_vocab == 128256
    assert tok31.bos_id == 128000
    assert tok31.eos_id == 128009
    assert tok31.special_tokens == {n: tiktoken_enc.encode_single_token(n) for n in NAMES_31}
    assert tok31.add_bos is True


def test_stop_set_31_sources(tok31: HFTokenizer) -> None:
    assert tok31.stop_tokens == [128001, 128008, 128009]
    assert tok31.stop_token_sources == {
        128001: ["generation_config.json"],
        128008: ["generation_config.json", "llama3 defaults"],
        128009: ["tokenizer_config.json", "generation_config.json", "llama3 defaults"],
    }


def test_stop_set_30_adds_eot(tok30: HFTokenizer) -> None:
    # The Llama 3.0 pitfall: tokenizer_config says <|end_of_text|>, the model says <|eot_id|>.
    assert tok30.eos_id == 128001
    assert tok30.stop_token_sources == {
        128001: ["tokenizer_config.json"],
        128009: ["llama3 defaults"],
    }
    # 3.0 names: 128008 is a reserved token, not <|eom_id|>
    assert "<|eom_id|>" not in tok30.special_tokens


def test_chat_template_read(tok30: HFTokenizer, tok31: HFTokenizer) -> None:
    assert tok30.chat_template == json.loads(HF_TOKENIZER_CONFIG_30.read_text())["chat_template"]
    assert tok31.chat_template == json.loads(HF_TOKENIZER_CONFIG_31.read_text())["chat_template"]


@pytest.fixture(scope="module")
def small_tokenizer_json(smollm2_path: Path) -> str:
    """A small real vocabulary (SmolLM2's 49K byte-level BPE) as tokenizer.json text."""
    from llama3.tokenizer.gguf_vocab import read_gguf_metadata, tokenizer_from_gguf

    return tokenizer_from_gguf(read_gguf_metadata(smollm2_path))._tk.to_str()


def _small_dir(d: Path, tokenizer_json: str, config: dict, post_bos: bool) -> Path:
    tk = HFLibTokenizer.from_str(tokenizer_json)
    if post_bos:
        tk.post_processor = processors.TemplateProcessing(
            single="<|im_start|> $A", special_tokens=[("<|im_start|>", 1)]
        )
    d.mkdir()
    tk.save(str(d / "tokenizer.json"))
    (d / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return d


def test_add_bos_default_from_post_processor(tmp_path: Path, small_tokenizer_json: str) -> None:
    cfg = {
        "bos_token": "<|im_start|>",
        "eos_token": {"__type": "AddedToken", "content": "<|im_end|>"},
    }
    with_bos = HFTokenizer.from_dir(_small_dir(tmp_path / "a", small_tokenizer_json, cfg, True))
    without = HFTokenizer.from_dir(_small_dir(tmp_path / "b", small_tokenizer_json, cfg, False))
    off = HFTokenizer.from_dir(
        _small_dir(tmp_path / "c", small_tokenizer_json, {**cfg, "add_bos_token": False}, True)
    )
    assert (with_bos.add_bos, without.add_bos, off.add_bos) == (True, False, False)
    assert with_bos.eos_id == 2  # AddedToken dict form
    assert with_bos.stop_token_sources == {2: ["tokenizer_config.json"]}
    # BOS is never added by the post-processor, only by the flag
    body = without.encode("hello", bos=False, eos=False)
    assert with_bos.encode("hello", bos=False, eos=False) == body
    assert with_bos.encode_prompt("hello") == [1, *body]
    assert without.encode_prompt("hello") == body
    assert off.encode_prompt("hello") == body


def test_chat_template_list_and_separate_file(tmp_path: Path, small_tokenizer_json: str) -> None:
    cfg = {
        "bos_token": "<|im_start|>",
        "chat_template": [
            {"name": "tool_use", "template": "TOOLS"},
            {"name": "default", "template": "DEFAULT"},
        ],
    }
    assert (
        HFTokenizer.from_dir(
            _small_dir(tmp_path / "a", small_tokenizer_json, cfg, False)
        ).chat_template
        == "DEFAULT"
    )
    d = _small_dir(tmp_path / "b", small_tokenizer_json, {"bos_token": "<|im_start|>"}, False)
    (d / "chat_template.jinja").write_text("FROM FILE", encoding="utf-8")
    assert HFTokenizer.from_dir(d).chat_template == "FROM FILE"


def test_generation_config_only(tmp_path: Path, small_tokenizer_json: str) -> None:
    d = _small_dir(tmp_path / "a", small_tokenizer_json, {}, False)
    (d / "generation_config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": 2}))
    tok = HFTokenizer.from_dir(d)
    assert (tok.bos_id, tok.eos_id) == (1, 2)
    assert tok.stop_token_sources == {2: ["generation_config.json"]}


def test_bad_directories(tmp_path: Path, small_tokenizer_json: str) -> None:
    with pytest.raises(TokenizerError, match="no tokenizer.json"):
        HFTokenizer.from_dir(tmp_path)
    d = _small_dir(tmp_path / "a", small_tokenizer_json, {}, False)
    (d / "tokenizer_config.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(TokenizerError, match="tokenizer_config.json") as e:
        HFTokenizer.from_dir(d)
    assert e.value.hint
    (d / "tokenizer_config.json").write_text("{}", encoding="utf-8")
    (d / "generation_config.json").write_text('{"eos_token_id": "x"}', encoding="utf-8")
    with pytest.raises(TokenizerError, match="generation_config.json"):
        HFTokenizer.from_dir(d)
    (d / "generation_config.json").unlink()
    (d / "tokenizer.json").write_text("{}", encoding="utf-8")
    with pytest.raises(TokenizerError, match="tokenizer.json"):
        HFTokenizer.from_dir(d)


# ---- load_tokenizer ------------------------------------------------------------------------------
def test_load_tokenizer_dispatch(tmp_path: Path, hf_dir_30: Path, smollm2_path: Path) -> None:
    from llama3.tokenizer.gguf_vocab import GGUFTokenizer
    from llama3.tokenizer.tiktoken_bpe import Tokenizer

    assert isinstance(load_tokenizer(hf_dir_30), HFTokenizer)
    assert isinstance(load_tokenizer(hf_dir_30 / "tokenizer.json"), HFTokenizer)
    assert isinstance(load_tokenizer(TOKENIZER_MODEL), Tokenizer)
    meta_dir = tmp_path / "meta"
    meta_dir.mkdir()
    shutil.copy(TOKENIZER_MODEL, meta_dir / "tokenizer.model")
    assert isinstance(load_tokenizer(meta_dir), Tokenizer)
    assert isinstance(load_tokenizer(smollm2_path), GGUFTokenizer)


def test_load_tokenizer_errors(tmp_path: Path) -> None:
    with pytest.raises(TokenizerError, match="not found") as e:
        load_tokenizer(tmp_path / "missing")
    assert e.value.hint
    with pytest.raises(TokenizerError, match="tokenizer.json") as e:
        load_tokenizer(tmp_path)
    assert str(tmp_path) in e.value.message
    spm = tmp_path / "tokenizer.model"
    spm.write_bytes(b"\n\x0e\n\x05<unk>\x15\x00\x00\x00\x00\x18\x02")  # protobuf, not tiktoken text
    with pytest.raises(TokenizerError, match="SentencePiece"):
        load_tokenizer(tmp_path)
    other = tmp_path / "weights.bin"
    other.write_bytes(b"\x00\x01\x02")
    with pytest.raises(TokenizerError, match="no tokenizer found"):
        load_tokenizer(other)

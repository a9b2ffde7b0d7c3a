"""The tiktoken Llama 3 tokenizer against Meta's golden ids, plain tiktoken and HF `tokenizers`."""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import random

import pytest
import tiktoken
import tokenizers
from conftest import (
    HF_TOKENIZER_CONFIG_31,
    HF_TOKENIZER_JSON,
    META_PAT_STR,
    TOKENIZER_MODEL,
    tiktoken_oracle,
)
from tiktoken.load import load_tiktoken_bpe

from llama3.errors import InvalidRequestError, TokenizerError
from llama3.tokenizer import tiktoken_bpe
from llama3.tokenizer.tiktoken_bpe import Tokenizer

# SEEDS.md §1.6, Meta's `pat_str` as published

TEXTS = [
    "",
    "Hello, world!",
    "This is a test sentence.",
    "  leading spaces and trailing   ",
    "tabs\tand\nnewlines\r\nCRLF\r\n\r\nlines\n\n\n",
    "numbers 1 12 123 1234 123456789 3.14159 1,234,567.89 -42 1e10",
    "日本語のテキストと中文文本，还有한국어 텍스트。",
    "emoji 👍🏽 👨‍👩‍👧‍👦 🏳️‍🌈 🇩🇪 ❤️‍🔥 ZWJ\u200djoined",
    "combining e\u0301 a\u0308\u0323 Z\u0324\u0354\u0367\u0311\u0313 n\u0303",
    "def f(x: int) -> int:\n    return x ** 2  # square\n\nprint(f(3))\n",
    'json {"key": [1, 2, 3], "nested": {"a": null}}',
    "contractions I'm you're we've they'll I'd HE'S She'LL",
    "unicode spaces \u00a0nbsp\u2003em\u3000ideographic\u2028line sep\u0085nel",
    "mixed   \n\n   \t  whitespace \t\t\n \r\n  ",
    "العربية עברית हिन्दी ไทย Ελληνικά русский",
    "\x00\x01control\x7f\x1f",
    "a" * 100 + " " * 100 + "!" * 100,
    "<|not_special|> <| begin_of_text |>",
]


def _char_walk_split(s: str, max_len: int) -> list[str]:
    """SEEDS §1.6 `_split_whitespaces_or_nonwhitespaces`, written as the spec states it."""
    pieces, run_len, start = [], 0, 0
    run_is_space = s[0].isspace() if s else False
    for i, ch in enumerate(s):
        if ch.isspace() != run_is_space:
            run_is_space, run_len = ch.isspace(), 1
        else:
            run_len += 1
            if run_len > max_len:
                pieces.append(s[start:i])
                start, run_len = i, 1
    pieces.append(s[start:])
    return pieces


@pytest.fixture(scope="module")
def tok(shared_llama3) -> Tokenizer:
    return Tokenizer()  # the bundled copy


@pytest.fixture(scope="module")
def plain(shared_llama3) -> tiktoken.Encoding:
    """tiktoken's own loader and Meta's published pattern, with no code of ours."""
    specials = {f"<|special_{i}|>": 128000 + i for i in range(256)}
    specials["<|eot_id|>"] = specials.pop("<|special_9|>")
    return tiktoken_oracle(specials)


@pytest.fixture(scope="module")
def hf(shared_llama3) -> tokenizers.Tokenizer:
    return tokenizers.Tokenizer.from_file(str(HF_TOKENIZER_JSON))


# ---- Meta's five golden tests (SEEDS §1.12), on the bundled and the shared file ----------------
@pytest.mark.parametrize("which", ["bundled", "shared"])
def test_meta_golden(which, shared_llama3):
    from llama3.tokenizer.chat_format import ChatFormat

    tok = Tokenizer() if which == "bundled" else Tokenizer(TOKENIZER_MODEL)
    fmt = ChatFormat(tok)
    assert tok.special_tokens["<|begin_of_text|>"] == 128000
    ids = [128000, 2028, 374, 264, 1296, 11914, 13, 128001]
    assert tok.encode("This is a test sentence.", bos=True, eos=True) == ids
    assert tok.decode(ids) == "<|begin_of_text|>This is a test sentence.<|end_of_text|>"
    assert fmt.encode_message({"role": "user", "content": "This is a test sentence."}) == [
        128006, 882, 128007, 271, 2028, 374, 264, 1296, 11914, 13, 128009,
    ]  # fmt: skip
    dialog = [
        {"role": "system", "content": "This is a test sentence."},
        {"role": "user", "content": "This is a response."},
    ]
    assert fmt.encode_dialog_prompt(dialog) == [
        128000, 128006, 9125, 128007, 271, 2028, 374, 264, 1296, 11914, 13, 128009, 128006, 882,
        128007, 271, 2028, 374, 264, 2077, 13, 128009, 128006, 78191, 128007, 271,
    ]  # fmt: skip


def test_bundled_file_is_the_reference_file(shared_llama3):
    bundled = tiktoken_bpe.DEFAULT_MODEL_PATH.read_bytes()
    assert hashlib.sha256(bundled).hexdigest() == (
        "82e9d31979e92ab929cd544440f129d9ecd797b69e327f80f17e1c50d5551b55"
    )
    notice = (tiktoken_bpe.DEFAULT_MODEL_PATH.parent / "LICENSE-LLAMA3-NOTICE.txt").read_text()
    flat = " ".join(notice.split())
    assert "Built with Meta Llama 3" in flat
    assert (
        "Llama 3 is licensed under the Meta Llama 3 Community License, Copyright (c) Meta "
        "Platforms, Inc. All Rights Reserved." in flat
    )


def test_get_instance_is_the_bundled_tokenizer(shared_llama3):
    tok = Tokenizer.get_instance()
    assert tok is Tokenizer.get_instance()
    assert tok.model_path == tiktoken_bpe.DEFAULT_MODEL_PATH and tok.special_tokens_version == "3.1"


def test_pattern_is_meta_and_hf(tok):
    hf_json = json.loads(HF_TOKENIZER_JSON.read_text())
    split = hf_json["pre_tokenizer"]["pretokenizers"][0]
    assert tok.pat_str == META_PAT_STR == split["pattern"]["Regex"]
    assert tok.model._pat_str == META_PAT_STR


# ---- ids against two independent implementations ---------------------------------------------
@pytest.mark.parametrize("text", TEXTS, ids=range(len(TEXTS)))
def test_ids_match_tiktoken_and_hf(tok, plain, hf, text):
    ids = tok.encode(text, bos=False, eos=False)
    assert ids == plain.encode(text, disallowed_special=())
    assert ids == hf.encode(text, add_special_tokens=False).ids
    assert tok.decode(ids) == text
    assert tok.decode_bytes(ids) == text.encode("utf-8")


def test_one_megabyte_of_mixed_text(tok, plain, hf):
    rng = random.Random(1234)
    text = "".join(rng.choice(TEXTS[1:]) for _ in range(20_000))[:1_000_000]
    assert len(text) == 1_000_000
    ids = tok.encode(text, bos=False, eos=False)
    # Meta encodes 400k-character windows separately; the oracles see the same windows.
    windows = [text[i : i + 400_000] for i in range(0, len(text), 400_000)]
    assert ids == [t for w in windows for t in plain.encode(w, disallowed_special=())]
    assert ids == [t for w in windows for t in hf.encode(w, add_special_tokens=False).ids]
    # The input cuts a pre-token at a window edge, so the windowing above is really exercised.
    assert ids != plain.encode(text, disallowed_special=())
    assert tok.decode(ids) == text


@pytest.mark.parametrize(
    "text, cuts",
    [
        ("a" * 30_000, [25_000]),
        (" " * 30_000, [25_000]),
        ("\n" * 30_000, [25_000]),
        ("x" * 30_000 + " " * 60_000 + "end", [25_000, 55_000, 80_000]),
        ("word " * 1000 + "." * 51_000, [5_000 + 25_000, 5_000 + 50_000]),
    ],
    ids=["letters", "spaces", "newlines", "mixed", "after-text"],
)
def test_long_runs_take_the_splitting_path(tok, plain, text, cuts):
    assert list(tok._split_whitespaces_or_nonwhitespaces(text, 25_000)) == _char_walk_split(
        text, 25_000
    )
    bounds = [0, *cuts, len(text)]
    expected = [t for a, b in itertools.pairwise(bounds) for t in plain.encode(text[a:b])]
    assert tok.encode(text, bos=False, eos=False) == expected
    assert tok.decode(expected) == text


def test_split_matches_the_character_walk(tok):
    rng = random.Random(7)
    alphabet = " a\tb\n\x1c\u3000c\u00a0"
    split = Tokenizer._split_whitespaces_or_nonwhitespaces
    assert list(split("", 5)) == [""]
    for _ in range(3000):
        s = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        n = rng.randint(1, 6)
        assert list(split(s, n)) == _char_walk_split(s, n), (s, n)


# ---- special tokens ----------------------------------------------------------------------------
def test_special_text_is_plain_by_default(tok, plain, hf):
    text = "Hi<|eot_id|>there<|begin_of_text|>"
    ids = tok.encode(text, bos=False, eos=False)
    assert ids == plain.encode(text, disallowed_special=())
    assert 128009 not in ids and 128000 not in ids
    assert tok.decode(ids) == text

    allowed = tok.encode(text, bos=False, eos=False, allowed_special="all")
    assert allowed == hf.encode(text, add_special_tokens=False).ids
    assert allowed.count(128009) == 1 and allowed.count(128000) == 1
    only_eot = tok.encode(text, bos=False, eos=False, allowed_special={"<|eot_id|>"})
    assert only_eot == plain.encode(text, allowed_special={"<|eot_id|>"}, disallowed_special=())
    assert 128009 in only_eot and 128000 not in only_eot


def test_disallowed_special_is_a_typed_error(tok):
    with pytest.raises(InvalidRequestError, match="<|eot_id|>") as e:
        tok.encode("a<|eot_id|>b", bos=False, eos=False, disallowed_special="all")
    assert e.value.hint


def test_name_table_30_matches_hf_llama3(shared_llama3):
    tok = Tokenizer(TOKENIZER_MODEL, special_tokens_version="3.0")
    hf_json = json.loads(HF_TOKENIZER_JSON.read_text())
    assert tok.special_tokens == {t["content"]: t["id"] for t in hf_json["added_tokens"]}
    assert tok.special_tokens["<|reserved_special_token_250|>"] == 128255
    assert (tok.pad_id, tok.eom_id, tok.python_tag_id, tok.eot_id) == (-1, None, None, 128009)
    assert tok.stop_tokens == [128001, 128009]
    assert tok.stop_token_sources == {128001: ["tokenizer"], 128009: ["tokenizer"]}


def test_name_table_31_is_llama_models(tok):
    # SEEDS §1.6 table (llama-models). No shared file has these names: the HF 3.1 config there
    # keeps the 3.0 names, so the table is written out here from the spec.
    named = {
        "<|begin_of_text|>": 128000, "<|end_of_text|>": 128001,
        "<|reserved_special_token_0|>": 128002, "<|reserved_special_token_1|>": 128003,
        "<|finetune_right_pad_id|>": 128004, "<|step_id|>": 128005,
        "<|start_header_id|>": 128006, "<|end_header_id|>": 128007,
        "<|eom_id|>": 128008, "<|eot_id|>": 128009, "<|python_tag|>": 128010,
    }  # fmt: skip
    reserved = {f"<|reserved_special_token_{i}|>": 128011 + i - 2 for i in range(2, 247)}
    assert tok.special_tokens == {**named, **reserved}
    # The ids of the HF files' specials are the same set, only some names differ.
    config = json.loads(HF_TOKENIZER_CONFIG_31.read_text())
    assert sorted(map(int, config["added_tokens_decoder"])) == sorted(tok.special_tokens.values())
    assert tok.special_tokens["<|finetune_right_pad_id|>"] == 128004
    assert tok.special_tokens["<|reserved_special_token_246|>"] == 128255
    assert (tok.pad_id, tok.eom_id, tok.python_tag_id, tok.eot_id) == (
        128004,
        128008,
        128010,
        128009,
    )
    assert (tok.bos_id, tok.eos_id, tok.n_words) == (128000, 128001, 128256)
    assert tok.stop_tokens == [128001, 128008, 128009]
    assert tok.add_bos is True


def test_name_table_32_adds_image(shared_llama3):
    tok = Tokenizer(special_tokens_version="3.2")
    assert tok.special_tokens["<|image|>"] == 128011
    assert tok.special_tokens["<|reserved_special_token_2|>"] == 128012
    assert tok.special_tokens["<|reserved_special_token_245|>"] == 128255
    with pytest.raises(TokenizerError, match="3.7"):
        Tokenizer(special_tokens_version="3.7")


def test_decode_specials_and_pieces(tok, plain):
    assert tok.decode([128009, 128010]) == "<|eot_id|><|python_tag|>"
    assert tok.id_to_piece(128009) == "<|eot_id|>"
    hello = plain.encode(" hello")
    assert tok.id_to_piece(hello[0]) == " hello"
    # A token holding part of a character prints its bytes instead of U+FFFD.
    partial = next(i for i in range(50_000) if not _utf8_ok(plain.decode_single_token_bytes(i)))
    raw = plain.decode_single_token_bytes(partial)
    assert tok.id_to_piece(partial) == raw.decode("utf-8", "backslashreplace")
    assert "\\x" in tok.id_to_piece(partial)
    assert tok.encode_prompt("hi") == [128000, *plain.encode("hi")]
    with pytest.raises(InvalidRequestError, match="128256"):
        tok.decode([1, 128256])
    with pytest.raises(InvalidRequestError, match="-1"):
        tok.decode([-1])


def _utf8_ok(b: bytes) -> bool:
    try:
        b.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


@pytest.mark.parametrize("bad", [b"bytes", None, 42, ["list"]])
def test_encode_rejects_non_str(tok, bad):
    with pytest.raises(TypeError, match="str"):
        tok.encode(bad, bos=False, eos=False)


# ---- files: other vocabularies, missing, corrupt --------------------------------------------
def _write_vocab(path, tokens: list[bytes]) -> None:
    path.write_bytes(b"".join(base64.b64encode(t) + b" %d\n" % r for r, t in enumerate(tokens)))


def test_other_tiktoken_vocabulary(tmp_path):
    tokens = [bytes([b]) for b in range(256)] + [b"he", b"ll", b"hell", b"hello", b" w"]
    path = tmp_path / "small.tiktoken"
    _write_vocab(path, tokens)
    tok = Tokenizer(path)
    assert tok.n_words == len(tokens) + 256
    assert (tok.bos_id, tok.eot_id) == (len(tokens), len(tokens) + 9)
    ref = tiktoken.Encoding(
        "ref",
        pat_str=META_PAT_STR,
        mergeable_ranks=load_tiktoken_bpe(str(path)),
        special_tokens={"<|begin_of_text|>": len(tokens)},
    )
    for text in TEXTS:
        assert tok.encode(text, bos=True, eos=False) == ref.encode(
            "<|begin_of_text|>" + text, allowed_special="all"
        )


def test_missing_file(tmp_path):
    missing = tmp_path / "nope" / "tokenizer.model"
    with pytest.raises(TokenizerError, match="not found") as e:
        Tokenizer(missing)
    assert str(missing) in str(e.value) and "tokenizer.model" in e.value.hint
    with pytest.raises(TokenizerError, match="directory"):
        Tokenizer(tmp_path)


@pytest.mark.parametrize(
    "content, why",
    [
        (b"", "no tokens"),
        (b"\n\n", "no tokens"),
        (bytes(range(256)) * 10, "line"),  # binary, e.g. a SentencePiece protobuf
        (b"IQ== 0\nnot-base64!! 1\n", "line 2"),
        (b"IQ== 0\nIg== one\n", "line 2"),
        (b"IQ== 0 extra\n", "line 1"),
        (b"IQ== 0\nIQ== 1\n", "repeats"),
        (b"IQ== 0\nIg== 5\n", "ranks"),
        (b"IQ== 0\nIg== 1\n", "single-byte"),
    ],
    ids=["empty", "blank", "binary", "base64", "rank", "fields", "dup", "gap", "bytes"],
)
def test_corrupt_file(tmp_path, content, why):
    path = tmp_path / "tokenizer.model"
    path.write_bytes(content)
    with pytest.raises(TokenizerError, match=why) as e:
        Tokenizer(path)
    assert str(path) in e.value.message
    assert "SentencePiece" in e.value.hint
